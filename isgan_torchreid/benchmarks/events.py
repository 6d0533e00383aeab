"""What a run's diagnostics did: its TensorBoard scalars of one stage, summarised side by side for several runs.

``tools/benchmark.py --scalars RUN [RUN ...] [--stage N] [--tags PREFIX ...] [--last N]`` reads the event files of
``RUN/stage<N>/`` (default: the last stage every run has) and prints, per scalar tag and run, the mean of its last
``--last`` logged points and its range over the stage: e.g. the gradient norm of each loss term on E_R
(``grad_E_R/``), G's share of the gradient on the identity code (``gan/code_grad_ratio``), D's probabilities
(``gan/D_real``, ``gan/D_fake``), the losses (``loss_id/``, ``loss_gen/``, ``train/``); the engine's
:mod:`~isgan_torchreid.engine.diagnostics` computes them. A resumed stage writes one event file per start, and
may log a step again after resuming from an earlier epoch: the value written last counts.
"""
import glob
import os
import statistics
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

from .. import storage
from ..errors import ISGANError
from .robustness import short_names

__all__ = ["stage_scalars", "last_common_stage", "summarize_scalars", "scalars_table", "run_scalars"]


def _event_files(run: str, stage: int) -> List[str]:
    return sorted(glob.glob(os.path.join(run, f"stage{stage}", "events.out.tfevents.*")),
                  key=lambda path: (os.path.getmtime(path), path))


def stage_scalars(run: str, stage: int) -> Dict[str, List[float]]:
    """{tag: values in step order} of ``run``'s stage ``stage``, over all its event files (the last write of a
    step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = _event_files(run, stage)
    if not files:
        raise ISGANError(f"--scalars {run}: no TensorBoard events in {os.path.join(run, f'stage{stage}')}; pass a "
                         f"run's OUTPUT_DIR whose stage {stage} has trained (--stage N picks another)")
    by_step: Dict[str, Dict[int, float]] = {}
    for path in files:
        events = EventAccumulator(path, size_guidance={"scalars": 0})  # 0: every point, not a sample
        events.Reload()
        for tag in events.Tags()["scalars"]:
            by_step.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    return {tag: [points[s] for s in sorted(points)] for tag, points in by_step.items()}


def last_common_stage(runs: Sequence[str]) -> int:
    """The highest stage whose events every run has."""
    stages = [{int(os.path.basename(os.path.dirname(p))[5:]) for p in glob.glob(os.path.join(
        run, "stage[0-9]", "events.out.tfevents.*"))} for run in runs]
    common = set.intersection(*stages) if stages else set()
    if not common:
        raise ISGANError(f"--scalars: no stage has TensorBoard events in every run ({', '.join(runs)}); pass runs' "
                         f"OUTPUT_DIRs, or --stage N")
    return max(common)


def summarize_scalars(values: Dict[str, List[float]], prefixes: Sequence[str] = (), last: int = 10) -> dict:
    """{tag: {"points", "min", "max", "last_mean"}} of the tags starting with one of ``prefixes`` (all tags
    without prefixes); ``last_mean``: the mean of the last ``last`` points."""
    return {tag: {"points": len(v), "min": min(v), "max": max(v), "last_mean": statistics.fmean(v[-last:])}
            for tag, v in sorted(values.items()) if v and (not prefixes or tag.startswith(tuple(prefixes)))}


def scalars_table(summaries: Dict[str, dict], last: int) -> str:
    """{run: :func:`summarize_scalars`} -> one row per tag; per run the mean of its last ``last`` points and its
    range over the stage, 3 significant digits."""
    runs = list(summaries)
    tags = list(dict.fromkeys(t for s in summaries.values() for t in s))
    headers = ["tag"] + [f"{name}: last {last} [min, max]" for name in short_names(runs)]
    body = [[tag] + [f"{s[tag]['last_mean']:.3g} [{s[tag]['min']:.3g}, {s[tag]['max']:.3g}]" if tag in s else "-"
                     for s in (summaries[r] for r in runs)] for tag in tags]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def run_scalars(runs: Sequence[str], stage: Optional[int] = None, prefixes: Sequence[str] = (), last: int = 10,
                out: Optional[str] = None) -> dict:
    """Read, print the table, write the JSON when ``out`` is given; returns {"stage", "last", "runs": {run:
    summary}}."""
    if last < 1:
        raise ISGANError(f"--last must be at least 1, not {last}")
    stage = last_common_stage(runs) if stage is None else stage
    summaries = {run: summarize_scalars(stage_scalars(run, stage), prefixes, last) for run in runs}
    if not any(summaries.values()):
        raise ISGANError(f"--scalars: no tag of stage {stage} starts with {' or '.join(prefixes)}; drop --tags to "
                         f"list them all")
    print(f"TensorBoard scalars of stage {stage}: the mean of the last {last} logged points [min, max over the "
          f"stage]")
    print(scalars_table(summaries, last))
    result = {"stage": stage, "last": last, "runs": summaries}
    if out:
        storage.write_json(out, result)
        print(f"=> wrote {out}")
    return result
