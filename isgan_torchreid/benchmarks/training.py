"""Training speed: per-stage step times and peak memory of IS-GAN, MGN and torchreid models; the same-run
comparison with the authors' code; torch.profiler tables of our stages."""
import statistics

import torch
from tabulate import tabulate

from . import authors
from .common import (NUM_CLASSES, Worker, in_fresh_process, interleaved, measured, our_engine, random_batch, spread,
                     timed)
from .profiling import profile_step, profile_tables

__all__ = ["bench_training", "training_table", "compare_with_authors", "comparison_table", "cpu_table",
           "profile_stages"]

def bench_training(cfg, methods=("isgan", "mgn", "pcb_p6"), batch=16, iters=2, warmup=1, device=None):
    """ms/iteration and images/s of each IS-GAN stage, inference, MGN and torchreid's pcb_p6.

    Random inputs of the configured size; ``cfg`` provides the model, loss and optimiser settings.
    Each method runs in a fresh process, so the CPU peak (max RSS) is per method.
    Returns rows [method, phase, ms/iter, images/s, peak memory MiB].
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for method in methods:
        rows += in_fresh_process(_bench_method, cfg, method, batch, iters, warmup, str(device))
    return rows


def _bench_method(cfg, method, batch, iters, warmup, device):
    from ..cli import configure_cpu

    configure_cpu(cfg)  # as the trainer runs
    device = torch.device(device)
    engine, model, data = our_engine(cfg, method, batch, device)
    rows = []
    for stage in (1, 2, 3) if method == "isgan" else (1,):
        engine.enter_stage(stage)
        sec, peak = timed(lambda: engine.forward_backward(data), iters, warmup, device)
        rows.append([method, f"train stage {stage}" if method == "isgan" else "train", 1000 * sec, batch / sec,
                     peak / 2**20])
    model.eval()
    with torch.no_grad():
        x = data["img"].to(device)
        sec, peak = timed(lambda: model(x), iters, warmup, device)
    rows.append([method, "inference", 1000 * sec, batch / sec, peak / 2**20])
    return rows


def training_table(rows, device):
    """Rows of :func:`bench_training` as a table."""
    table = [[method, phase, f"{ms:.0f}", f"{ips:.2f}", f"{mib:.0f}"] for method, phase, ms, ips, mib in rows]
    headers = ["method", "phase", "ms/iter", "images/s",
               "peak MiB" + (" (GPU)" if device.type == "cuda" else " (max RSS)")]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _our_side(cfg, batch, device):
    """Worker state of our side: the engine under the trainer's CPU settings (denormals, allocator)."""
    from ..cli import configure_cpu

    configure_cpu(cfg)
    device = torch.device(device)
    engine, _, data = our_engine(cfg, "isgan", batch, device)
    return {"engine": engine, "data": data, "device": device, "stage": None}


def _our_step(state, stage):
    engine = state["engine"]
    if state["stage"] != stage:
        engine.enter_stage(stage)
        state["stage"] = stage
    return measured(lambda: engine.forward_backward(state["data"]), state["device"])


def _authors_side(cfg, reference, batch, device):
    """Worker state of the authors' side: their code, patched, at glibc's and torch's default settings."""
    code = authors.load(reference, device, batch // cfg.SAMPLER.K, cfg.SAMPLER.K, NUM_CLASSES)
    return {"code": code, "data": random_batch(cfg, batch), "stage": None, "run": None}


def _authors_step(state, stage):
    if state["stage"] != stage:
        state["run"] = None  # one of their models at a time
        state["run"], state["stage"] = authors.AuthorsStage(state["code"], stage), stage
    data = state["data"]
    return measured(lambda: state["run"].step(data["img"], data["pid"]), state["code"].device)


def compare_with_authors(cfg, reference, batch, iters, warmup, device, stages=(1, 2, 3)):
    """Same-run :class:`~.common.Sample` of each training iteration of our engine and of the authors' code,
    stage by stage.

    Each side lives in a process of its own (:class:`~.common.Worker`): ours under the settings the trainer
    sets up (:func:`isgan_torchreid.cli.configure_cpu`: denormals flushed, freed memory kept in the heap),
    theirs (imported from the checkout ``reference`` and patched in memory, :mod:`.authors`) at glibc's and
    torch's defaults, as their ``main.py`` runs. Both get the same random P x K batch. Per stage, after
    ``warmup`` untimed rounds, they alternate ours, authors', ours, ... for ``iters`` timed iterations each;
    each side measures its own step (wall, user and system CPU time, minor page faults, peak RSS).
    Returns {stage: {"ours": [Sample, ...], "authors": [Sample, ...]}}.
    """
    with Worker(_our_side, cfg, batch, device) as ours, \
            Worker(_authors_side, cfg, reference, batch, device) as theirs:
        return {stage: interleaved({"ours": lambda: ours(_our_step, stage),
                                    "authors": lambda: theirs(_authors_step, stage)}, iters, warmup)
                for stage in stages}


def comparison_table(samples):
    """Wall times of :func:`compare_with_authors` as a table of spreads and speed-ups (authors' / ours)."""
    table = []
    for stage, runs in samples.items():
        ours, theirs = ([s.wall for s in runs[side]] for side in ("ours", "authors"))
        pairs = [a / o for o, a in zip(ours, theirs)]
        (_, our_median, _), (_, their_median, _) = spread(ours), spread(theirs)
        table.append([f"train stage {stage}", " / ".join(f"{1000 * s:.0f}" for s in spread(ours)),
                      " / ".join(f"{1000 * s:.0f}" for s in spread(theirs)), f"{their_median / our_median:.2f}x",
                      f"{min(pairs):.2f}x - {max(pairs):.2f}x"])
    headers = ["phase", "ours ms/iter (min / median / max)", "authors' ms/iter (min / median / max)",
               "speed-up (authors' / ours, medians)", "speed-up per pair (min - max)"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def cpu_table(samples):
    """Where the CPU time of :func:`compare_with_authors`'s steps went: medians per step of user and system
    time and minor page faults, system time as a share of the step's wall time, each side's peak RSS."""
    table = []
    for stage, runs in samples.items():
        for side in ("ours", "authors"):
            median = lambda field: statistics.median(getattr(s, field) for s in runs[side])  # noqa: E731
            table.append([f"train stage {stage}", side, f"{median('wall'):.2f}", f"{median('user'):.2f}",
                          f"{median('sys'):.2f}", f"{100 * median('sys') / median('wall'):.1f}%",
                          f"{median('faults') / 1000:.1f}k", f"{max(s.peak_rss for s in runs[side]) / 2**20:.0f}"])
    headers = ["phase", "code", "wall s", "user s", "system s", "system / wall", "minor page faults",
               "peak RSS MiB (process)"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def profile_stages(cfg, batch, device, stages=(1, 2, 3), limit=15):
    """torch.profiler tables of one iteration of each of our stages (after one warm-up), as text."""
    from ..cli import configure_cpu

    configure_cpu(cfg)  # as the trainer runs
    device = torch.device(device)
    engine, model, data = our_engine(cfg, "isgan", batch, device)
    parts = []
    for stage in stages:
        engine.enter_stage(stage)
        step = lambda: engine.forward_backward(data)  # noqa: E731
        step()
        events = profile_step(step, model, device)
        parts.append(f"profile of one stage-{stage} iteration (after one warm-up)\n\n"
                     + profile_tables(events, device, limit))
    return "\n\n".join(parts)
