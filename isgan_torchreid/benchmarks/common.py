"""What every benchmark shares: clocks that wait for the GPU, interleaved timing and its spread, a step's CPU
time and page faults, peak memory, fresh and persistent worker processes, and our engine driven batch by batch
on random inputs."""
import collections
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import time

import torch

__all__ = ["NUM_CLASSES", "NoData", "Sample", "sync", "timed", "measured", "peak_rss", "current_rss", "interleaved",
           "interleaved_seconds", "spread", "in_fresh_process", "Worker", "random_batch", "our_engine"]

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
    """This process's peak resident memory in bytes: Linux's VmHWM, the high-water mark of its own address
    space (``ru_maxrss`` where /proc cannot be read; on Linux it also carries the peak of the process that
    forked this one, since exec keeps it)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss():
    """Resident memory now (Linux /proc; the peak so far where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


# one call of a step: wall seconds; user and system CPU seconds and minor page faults of its process (all its
# threads); the process's peak resident memory in bytes so far
Sample = collections.namedtuple("Sample", "wall user sys faults peak_rss")


def measured(fn, device):
    """Call ``fn()`` once and return its :class:`Sample` (``getrusage`` of this process around the call)."""
    sync(device)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    sync(device)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return Sample(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                  after.ru_minflt - before.ru_minflt, peak_rss())


def interleaved(steps, iters, warmup=1, measure=None):
    """``measure(fn)`` of each of the ``steps`` ({name: fn}), called in turn (A B A B ...) after ``warmup``
    rounds of plain calls; by default each step measures itself (its return value is kept).

    Interleaving exposes every implementation to the same machine state (load, heat, memory), so ratios
    taken within one run stay fair when the machine drifts. Returns {name: [one value per timed round]}.
    """
    measure = measure or (lambda fn: fn())
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    values = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            values[name].append(measure(fn))
    return values


def interleaved_seconds(steps, iters, warmup=1, sync=None, clock=time.perf_counter):
    """:func:`interleaved` wall seconds of each call; ``sync()`` runs before each clock reading."""
    sync = sync or (lambda: None)

    def seconds(fn):
        sync()
        start = clock()
        fn()
        sync()
        return clock() - start

    return interleaved(steps, iters, warmup, seconds)


def spread(seconds):
    """(min, median, max) of a list of timings."""
    return min(seconds), statistics.median(seconds), max(seconds)


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned) process: own peak memory, own imports; its exceptions re-raised here."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


_state = None  # what a Worker's init returned, in the worker's process


def _init_worker(init, args):
    global _state
    _state = init(*args)


def _call_worker(fn, args):
    return fn(_state, *args)


class Worker:
    """A spawned process that keeps state between calls, so that steps of two implementations can alternate
    while each keeps its own process: its own C allocator settings, heap and peak memory.

    ``Worker(init, *args)`` runs ``init(*args)`` in the process and keeps the result there as the state;
    ``worker(fn, *args)`` returns ``fn(state, *args)`` run there. The functions must be importable
    (module-level); their exceptions are re-raised here. Use as a context manager to end the process.
    """

    def __init__(self, init, *args):
        context = multiprocessing.get_context("spawn")
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
        try:
            self._pool.submit(_init_worker, init, args).result()
        except BaseException:
            self.close()
            raise

    def __call__(self, fn, *args):
        return self._pool.submit(_call_worker, fn, args).result()

    def close(self):
        self._pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def random_batch(cfg, batch):
    """The benchmarks' input: ``batch`` random images of the configured size in P x K layout (seeded)."""
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
    return {"img": imgs, "pid": torch.arange(batch) // cfg.SAMPLER.K}


def our_engine(cfg, method, batch, device):
    """Our engine on a random P x K batch of the configured size: (engine, model, batch dict)."""
    import isgan_torchreid  # noqa: F401  (registration in a fresh process)
    from isgan_torchreid.engine.staged import StagedEngine
    from isgan_torchreid.models import build_model

    data = random_batch(cfg, batch)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NAME, cfg.MODEL.PRETRAINED = method, False
    model = build_model(cfg, NUM_CLASSES)
    return StagedEngine(cfg, NoData(NUM_CLASSES), model, device), model, data
