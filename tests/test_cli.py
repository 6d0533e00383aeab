"""Entry points: user errors are one actionable line (exit 2), checked before any model is built; torchreid's
dataset flags; tools/test.py with the config of the checkpoint's run, its results beside the run."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from isgan_torchreid import cli, storage
from isgan_torchreid.engine import distributed
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError

from conftest import CONFIGS, REPO, make_run

MARKET = "isgan_market"  # a packaged config, by name


def run_tool(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, **(env or {})), timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["--config-file", MARKET, "LOSS.LAMBDA_Z", "1"], "unknown config key LOSS.LAMBDA_Z"),
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

    monkeypatch.setattr(cli.run, "build_model", no_model)
    with pytest.raises(SystemExit) as info:
        cli.train_main(["--config-file", MARKET, "DATA.ROOT", str(tmp_path), "OUTPUT_DIR", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Market-1501-v15.09.15" in err and str(tmp_path) in err


def test_stages_flag_and_resolved_config_written(tmp_path, data_root, monkeypatch):
    seen = {}

    def fake_run(engine):
        seen["stages"] = list(engine.plan.stages)
        return {}

    monkeypatch.setattr(StagedEngine, "run_stages", fake_run)
    out = tmp_path / "o"
    from conftest import TINY
    cli.train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--stages", "2", "3",
                    *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)])
    assert seen["stages"] == [2, 3]
    assert "STAGES:\n  - 2\n  - 3" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("flush", [True, False])
def test_training_sets_denormals_and_the_allocator_from_the_config(tmp_path, data_root, monkeypatch, flush):
    calls, kept = [], []
    monkeypatch.setattr(torch, "set_flush_denormal", calls.append)
    monkeypatch.setattr(cli.run, "keep_freed_memory", lambda: kept.append(True))
    monkeypatch.setattr(StagedEngine, "run_stages", lambda engine: {})
    from conftest import TINY
    from isgan_torchreid.config import config_hash, load_config
    cli.train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--stages", "1", *TINY,
                    "DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "o"), "TRAIN.FLUSH_DENORMAL", str(flush),
                    "TRAIN.KEEP_FREED_MEMORY", str(flush)])
    assert calls == [flush] and kept == ([True] if flush else [])
    # run switches like DEVICE: a run resumes across them (and runs of earlier versions, without the keys)
    switched = ["TRAIN.FLUSH_DENORMAL", str(flush), "TRAIN.KEEP_FREED_MEMORY", str(flush)]
    assert config_hash(load_config(None, switched)) == config_hash(load_config(None))


def test_device_selection(monkeypatch):
    from isgan_torchreid.config import load_config
    assert distributed.select_device(load_config(None, ["DEVICE", "cpu"])).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.select_device(load_config(None)).type == "cpu"
    with pytest.raises(ISGANError, match="no CUDA device"):
        distributed.select_device(load_config(None, ["DEVICE", "cuda"]))


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


# ------------------------------------------------------------- tools/test.py: the run's own config, results beside it

@pytest.fixture(scope="module")
def run(data_root, module_dir):
    """A stage-1 checkpoint of random weights in a run folder with its config.yaml (conftest.make_run): its path."""
    return make_run(str(module_dir), data_root, "run", 1)


def copy_run(weights, dest, edit=lambda text: text):
    """The run of ``weights`` at ``dest`` (checkpoint hard-linked, config.yaml copied through ``edit``); its config
    still names the first folder as OUTPUT_DIR, as a moved run's does. Returns the copy's checkpoint."""
    src = os.path.dirname(os.path.dirname(weights))
    copy = os.path.join(dest, os.path.relpath(weights, src))
    os.makedirs(os.path.dirname(copy))
    os.link(weights, copy)
    with open(os.path.join(src, "config.yaml")) as f:
        (dest / "config.yaml").write_text(edit(f.read()))
    return copy


def metrics(results):
    return {target: {k: v for k, v in m.items() if k != "test_images_per_s"} for target, m in results["test"].items()}


def test_test_without_config_file_takes_the_runs_and_writes_beside_it(run, tmp_path, monkeypatch):
    moved = copy_run(run, tmp_path / "moved")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    results = cli.test_main(["--weights", moved])
    assert storage.read_json(str(tmp_path / "moved" / "test" / "results.json")) == {moved: results["test"]}
    assert os.listdir(tmp_path / "cwd") == []  # not the current folder,
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(run)), "test"))  # nor the config's
    explicit = cli.test_main(["--config-file", str(tmp_path / "moved" / "config.yaml"), "--weights", moved,
                              "OUTPUT_DIR", str(tmp_path / "explicit")])
    assert (tmp_path / "explicit" / "test" / "results.json").is_file()
    assert metrics(explicit) == metrics(results)


@pytest.mark.parametrize("where, expected", [
    ("edited", "{folder}/config.yaml did not train {weights} (config hash "),
    ("alone", "{weights} is not in a run folder with a config.yaml (OUTPUT_DIR/stage<n>/); pass the config that "
              "describes its architecture with --config-file"),
])
def test_test_without_the_runs_config_is_one_line(run, tmp_path, capsys, where, expected):
    folder = tmp_path / where
    if where == "edited":  # SEED changes what is trained: another config hash
        weights = copy_run(run, folder, lambda text: text.replace("\nSEED: 1\n", "\nSEED: 2\n"))
        assert "\nSEED: 2\n" in (folder / "config.yaml").read_text()
    else:
        folder.mkdir()
        weights = str(folder / "model.pth.tar-1")
        os.link(run, weights)
    with pytest.raises(SystemExit) as info:
        cli.test_main(["--weights", weights])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: " + expected.format(folder=folder, weights=weights)) and "--config-file" in err
    assert not (folder / "test").exists()


def test_dataset_flags_map_to_data_keys(run, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli.mains, "evaluate_weights", lambda cfg, weights, state=None: seen.append(cfg))
    cli.test_main(["--weights", run, "-t", "synthperson_b", "--root", str(tmp_path)])
    # list flags anywhere, commas or spaces; an OUTPUT_DIR override wins over the run's folder
    cli.test_main(["--weights", run, "--root=/r", "-s", "a,b", "OUTPUT_DIR", str(tmp_path), "--targets", "x", "y"])
    monkeypatch.setattr(cli.mains, "setup", lambda cfg: seen.append(cfg) or (None, None))
    monkeypatch.setattr(cli.mains, "build_engine", lambda *a: SimpleNamespace(run_stages=lambda: {}))
    cli.train_main(["--config-file", MARKET, "--sources", "dukemtmcreid", "-tmarket1501,cuhk03", "--root",
                    str(tmp_path), "OUTPUT_DIR", str(tmp_path / "train")])
    got = [(list(c.DATA.SOURCES), list(c.DATA.TARGETS), c.DATA.ROOT, c.OUTPUT_DIR) for c in seen]
    assert got == [(["synthperson"], ["synthperson_b"], str(tmp_path), os.path.dirname(os.path.dirname(run))),
                   (["a", "b"], ["x", "y"], "/r", str(tmp_path)),
                   (["dukemtmcreid"], ["market1501", "cuhk03"], str(tmp_path), str(tmp_path / "train"))]


@pytest.mark.parametrize("main, argv", [
    (cli.test_main, ["--weights", "RUN", "MODEL.WEIGHTS", "x.pth"]),  # fast-reid's spelling
    (cli.train_main, ["--config-file", MARKET, "model.load_weights", "x.pth"]),  # torchreid's
])
def test_weights_keys_of_other_toolboxes_name_ours(run, capsys, main, argv):
    with pytest.raises(SystemExit) as info:
        main([run if a == "RUN" else a for a in argv])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: command line: unknown config key {argv[-2]}; weights are not a config key here: pass the "
        f"checkpoint to evaluate as --weights FILE (test, extract, export, visualize), or the one to start "
        f"training from as TRAIN.INIT_WEIGHTS FILE\n")


@pytest.mark.parametrize("overrides, device, expected", [
    ([], "cuda", True), ([], "cpu", False), (["TRAIN.CUDNN_BENCHMARK", "False"], "cuda", False)])
def test_cudnn_benchmark_on_cuda_unless_switched_off(monkeypatch, overrides, device, expected):
    import torch
    from isgan_torchreid.config import load_config
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not expected)
    cli.configure_device(load_config(None, overrides), torch.device(device))
    assert torch.backends.cudnn.benchmark is expected
