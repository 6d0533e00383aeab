"""tools/benchmark.py --scalars: a stage's TensorBoard scalars of several runs, summarised side by side."""
import json
import os

import pytest
from torch.utils.tensorboard import SummaryWriter

from isgan_torchreid.benchmarks import benchmark_main
from isgan_torchreid.benchmarks.events import last_common_stage, run_scalars, stage_scalars, summarize_scalars
from isgan_torchreid.errors import ISGANError


def write_events(folder, points, age=0):
    """One event file in ``folder`` of {tag: [(step, value)]}, its mtime ``age`` seconds in the past."""
    with SummaryWriter(str(folder)) as writer:
        for tag, values in points.items():
            for step, value in values:
                writer.add_scalar(tag, value, step)
        path = writer.file_writer.event_writer._file_name
    if age:
        os.utime(path, (os.path.getmtime(path) - age, os.path.getmtime(path) - age))
    return path


@pytest.fixture
def runs(tmp_path):
    """Run a: stage 2, and stage 3 resumed (the second start logs steps 2-3 again); run b: stage 2 alone."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_events(a / "stage2", {"loss/x": [(0, 5.0)]})
    write_events(a / "stage3", {"grad_E_R/L_R": [(0, 1.0), (1, 2.0), (2, 9.0), (3, 9.0)], "gan/D_real": [(0, 0.5)]},
                 age=100)
    write_events(a / "stage3", {"grad_E_R/L_R": [(2, 3.0), (3, 4.0), (4, 5.0)]})
    write_events(b / "stage2", {"loss/x": [(0, 1.0), (1, 3.0)]})
    return str(a), str(b)


def test_a_resumed_stage_keeps_the_last_write_of_each_step(runs):
    values = stage_scalars(runs[0], 3)
    assert values == {"grad_E_R/L_R": [1.0, 2.0, 3.0, 4.0, 5.0], "gan/D_real": [0.5]}


def test_summary_of_the_tags_asked_for():
    values = {"grad_E_R/L_R": [1.0, 2.0, 3.0, 4.0, 5.0], "gan/D_real": [0.5], "grad_G/L_S": [7.0]}
    summary = summarize_scalars(values, prefixes=("grad_E_R/", "gan/"), last=2)
    assert summary == {"gan/D_real": {"points": 1, "min": 0.5, "max": 0.5, "last_mean": 0.5},
                       "grad_E_R/L_R": {"points": 5, "min": 1.0, "max": 5.0, "last_mean": 4.5}}
    assert set(summarize_scalars(values)) == set(values)


def test_default_stage_is_the_last_every_run_has(runs):
    assert last_common_stage(runs[:1]) == 3
    assert last_common_stage(runs) == 2


def test_tool_prints_and_writes_the_table(runs, tmp_path, capsys):
    out = tmp_path / "scalars.json"
    result = benchmark_main(["--scalars", *runs, "--last", "1", "--out", str(out)])
    assert result["stage"] == 2 and json.loads(out.read_text()) == result
    assert result["runs"][runs[1]]["loss/x"] == {"points": 2, "min": 1.0, "max": 3.0, "last_mean": 3.0}
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| loss/x"))
    assert [c.strip() for c in row.split("|")[1:-1]] == ["loss/x", "5 [5, 5]", "3 [1, 3]"]
    assert "a: last 1 [min, max]" in printed and "b: last 1 [min, max]" in printed


@pytest.mark.parametrize("kwargs, message", [
    (dict(stage=3), r"no TensorBoard events in .*b/stage3; pass a run's OUTPUT_DIR whose stage 3 has trained"),
    (dict(stage=2, prefixes=("grad_G/",)), "no tag of stage 2 starts with grad_G/; drop --tags"),
    (dict(last=0), "--last must be at least 1, not 0"),
])
def test_errors(runs, kwargs, message):
    with pytest.raises(ISGANError, match=message):
        run_scalars(runs, **kwargs)


def test_no_common_stage(runs, tmp_path):
    with pytest.raises(ISGANError, match="no stage has TensorBoard events in every run"):
        run_scalars([runs[0], str(tmp_path / "empty")])
