"""Training speed: per-stage step times and peak memory of IS-GAN, MGN and torchreid models; the same-run
comparison with the authors' code; torch.profiler tables of our stages."""
import torch
from tabulate import tabulate

from . import authors
from .common import NUM_CLASSES, in_fresh_process, interleaved_seconds, our_engine, spread, sync, timed
from .profiling import profile_step, profile_tables

__all__ = ["bench_training", "training_table", "compare_with_authors", "comparison_table", "profile_stages"]

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


def compare_with_authors(cfg, reference, batch, iters, warmup, device, stages=(1, 2, 3)):
    """Same-run seconds per training iteration of our engine and of the authors' code, stage by stage.

    The authors' code is imported from the checkout ``reference`` and patched in memory
    (:mod:`isgan_torchreid.authors`). Both get the same random P x K batch. Per stage, after ``warmup``
    untimed rounds, they alternate ours, authors', ours, ... for ``iters`` timed iterations each.
    Returns {stage: {"ours": [s, ...], "authors": [s, ...]}}.
    """
    device = torch.device(device)
    code = authors.load(reference, device, batch // cfg.SAMPLER.K, cfg.SAMPLER.K, NUM_CLASSES)
    engine, _, data = our_engine(cfg, "isgan", batch, device)
    seconds = {}
    for stage in stages:
        engine.enter_stage(stage)
        theirs = authors.AuthorsStage(code, stage)
        seconds[stage] = interleaved_seconds(
            {"ours": lambda: engine.forward_backward(data), "authors": lambda: theirs.step(data["img"], data["pid"])},
            iters, warmup, sync=lambda: sync(device))
        del theirs  # one of their models at a time
    return seconds


def comparison_table(seconds):
    """{stage: {"ours": [...], "authors": [...]}} as a table of spreads and speed-ups (authors' / ours)."""
    table = []
    for stage, times in seconds.items():
        ours, theirs = spread(times["ours"]), spread(times["authors"])
        pairs = [a / o for o, a in zip(times["ours"], times["authors"])]
        table.append([f"train stage {stage}", " / ".join(f"{1000 * s:.0f}" for s in ours),
                      " / ".join(f"{1000 * s:.0f}" for s in theirs), f"{theirs[1] / ours[1]:.2f}x",
                      f"{min(pairs):.2f}x - {max(pairs):.2f}x"])
    headers = ["phase", "ours ms/iter (min / median / max)", "authors' ms/iter (min / median / max)",
               "speed-up (authors' / ours, medians)", "speed-up per pair (min - max)"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def profile_stages(cfg, batch, device, stages=(1, 2, 3), limit=15):
    """torch.profiler tables of one iteration of each of our stages (after one warm-up), as text."""
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
