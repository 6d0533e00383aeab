"""What every benchmark shares: clocks that wait for the GPU, interleaved timing and its spread, peak memory,
fresh processes, and our engine driven batch by batch on random inputs."""
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import time

import torch

__all__ = ["NUM_CLASSES", "NoData", "sync", "timed", "peak_rss", "current_rss", "interleaved_seconds", "spread",
           "in_fresh_process", "our_engine"]

NUM_CLASSES = 751  # Market-1501's training identities


class NoData:
    """The minimum of a torchreid data manager that the engine reads when driven batch by batch."""

    def __init__(self, num_classes):
        self.train_loader = self.test_loader = None
        self.num_train_pids = num_classes
        self.sources = []


def sync(device):
    """Wait for queued CUDA work, so that the clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters, warmup, device):
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls; peak memory in bytes."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = interleaved_seconds({"fn": fn}, iters, warmup=0, sync=lambda: sync(device))["fn"]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    return statistics.median(times), peak


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss():
    """Resident memory now (Linux /proc; the peak so far where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def interleaved_seconds(steps, iters, warmup=1, sync=None, clock=time.perf_counter):
    """Seconds of each call of the ``steps`` ({name: fn}), called in turn (A B A B ...) after ``warmup`` rounds.

    Interleaving exposes every implementation to the same machine state (load, heat, memory), so ratios
    taken within one run stay fair when the machine drifts. ``sync()`` runs before each clock reading.
    Returns {name: [seconds of each of the ``iters`` timed calls]}.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    seconds = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            sync()
            start = clock()
            fn()
            sync()
            seconds[name].append(clock() - start)
    return seconds


def spread(seconds):
    """(min, median, max) of a list of timings."""
    return min(seconds), statistics.median(seconds), max(seconds)


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned) process: own peak memory, own imports; its exceptions re-raised here."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def our_engine(cfg, method, batch, device):
    """Our engine on a random P x K batch of the configured size: (engine, model, batch dict)."""
    import isgan_torchreid  # noqa: F401  (registration in a fresh process)
    from isgan_torchreid.engine.staged import ISGANEngine
    from isgan_torchreid.models import build_model

    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
    data = {"img": imgs, "pid": torch.arange(batch) // cfg.SAMPLER.K}  # P x K layout
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NAME, cfg.MODEL.PRETRAINED = method, False
    model = build_model(cfg, NUM_CLASSES)
    return ISGANEngine(cfg, NoData(NUM_CLASSES), model, device), model, data
