"""Entry points: user errors are one actionable line (exit 2), checked before any model is built."""
import os
import subprocess
import sys

import pytest

from isgan_torchreid import cli
from isgan_torchreid.errors import ISGANError

from conftest import CONFIGS, REPO

MARKET = "isgan_market"  # a packaged config, by name


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, **(env or {})), timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["--config-file", MARKET, "LOSS.LAMBDA_X", "1"], "unknown config key LOSS.LAMBDA_X"),
    (["--config-file", MARKET, "DATA.ROOT", "/nonexistent/reid-data"],
     "dataset market1501 not found: missing /nonexistent/reid-data/market1501"),
    (["--config-file", MARKET, "OUTPUT_DIR", "/dev/null/out"], "output directory /dev/null/out is not writable"),
])
def test_user_errors_are_one_line(args, expected):
    proc = run_tool(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(ISGANError, match="unknown config key"):
        cli.train_main(["--config-file", MARKET, "--debug", "SEEDS", "1"])


def test_missing_dataset_fails_before_any_model(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the datasets were checked")

    monkeypatch.setattr(cli, "build_model", no_model)
    with pytest.raises(SystemExit) as info:
        cli.train_main(["--config-file", MARKET, "DATA.ROOT", str(tmp_path), "OUTPUT_DIR", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Market-1501-v15.09.15" in err and str(tmp_path) in err


def test_stages_flag_and_resolved_config_written(tmp_path, data_root, monkeypatch):
    seen = {}

    def fake_run(engine):
        seen["stages"] = list(engine.cfg.TRAIN.STAGES)
        return {}

    monkeypatch.setattr(cli.ISGANEngine, "run_stages", fake_run)
    out = tmp_path / "o"
    from conftest import TINY
    cli.train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--stages", "2", "3",
                    *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)])
    assert seen["stages"] == [2, 3]
    assert "STAGES:\n  - 2\n  - 3" in (out / "config.yaml").read_text()


def test_device_selection(monkeypatch):
    from isgan_torchreid.config import load_config
    assert cli.select_device(load_config(None, ["DEVICE", "cpu"])).type == "cpu"
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    assert cli.select_device(load_config(None)).type == "cpu"
    with pytest.raises(ISGANError, match="no CUDA device"):
        cli.select_device(load_config(None, ["DEVICE", "cuda"]))


def test_results_table_lists_every_stage_and_target():
    metrics = {"rank1": 0.5, "rank5": 0.75, "rank10": 0.8, "mAP": 0.25}
    table = cli.results_table({1: {"a": metrics}, 3: {"a": metrics, "b": metrics}})
    lines = table.splitlines()
    assert "R-1" in lines[0] and "mAP" in lines[0] and len(lines) == 5
    assert "| 3       | b        | 50.0  | 75.0  | 80.0   | 25.0  |" in table


def test_ctrl_c_is_one_line_unless_debug(capsys):
    @cli.reports_errors
    def main(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        "interrupted: nothing half-written is left; run the same command again (training resumes from its last "
        "checkpoint)"]
    with pytest.raises(KeyboardInterrupt):
        main(["--debug"])
