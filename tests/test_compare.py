"""tools/compare.py: IS-GAN, its E_R baseline, MGN and torchreid's pcb_p6 under one tiny setting and schedule."""
import contextlib
import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch
import torchreid
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from isgan_torchreid import cli, compare
from isgan_torchreid.config import load_config
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import mgn_r18

from conftest import CONFIGS, REPO, TINY

CONFIG = os.path.join(CONFIGS, "compare_synthetic.yaml")
METHODS = ["isgan", "baseline", "mgn", "pcb_p6"]
NUM_TRAIN_IDS = 8  # TINY's DATA.SYNTH.NUM_TRAIN_IDS


def count(module):
    return sum(p.numel() for p in module.parameters())


def run_compare(out, data_root, methods=()):
    """compare_main on the tiny config (``--methods`` last, after the overrides); returns (rows, printed text)."""
    argv = ["--config-file", CONFIG, *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)]
    argv += ["--methods", *methods] if methods else []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = compare.compare_main(argv)
    return rows, printed.getvalue()


@pytest.fixture(scope="module")
def compared(data_root, module_dir):
    """One comparison of the four default methods (1 epoch per stage)."""
    out = module_dir / "compare"
    rows, printed = run_compare(out, data_root, METHODS)
    return dict(out=out, rows=rows, printed=printed, by_method={r["method"]: r for r in rows})


def test_table_has_every_method(compared):
    assert [r["method"] for r in compared["rows"]] == METHODS  # one target: one row per method
    table = compared["printed"][compared["printed"].index("| method"):].splitlines()
    assert "params at test (M)" in table[0] and "train img/s" in table[0] and "test img/s" in table[0]
    assert [line.split("|")[1].strip() for line in table[2:6]] == METHODS
    for method in METHODS:  # every method ends with stage 3: IS-GAN's E_R schedule
        assert compared["by_method"][method]["run"] == f"{method}/stage3"


def test_metrics_and_speeds(compared):
    for r in compared["rows"]:
        assert 0.0 <= r["rank1"] <= r["rank5"] <= 1.0 and 0.0 <= r["mAP"] <= 1.0
        assert r["train_images_per_s"] > 0 and r["test_images_per_s"] > 0
        assert 0 < r["params_test"] < r["params_total"]


def test_baseline_follows_isgans_schedule(compared):
    """The baseline's stage 1 is IS-GAN's stage 1 exactly (same initial E_R, same batches); its stage 3 continues
    at the stage-3 learning rate with L_R alone, where IS-GAN adds its GAN losses."""
    out = compared["out"]
    results = {run: json.loads((out / run / "results.json").read_text()) for run in ("isgan", "baseline")}
    metrics = {run: {k: v for k, v in r["stage1"]["synthperson"].items() if k != "test_images_per_s"}
               for run, r in results.items()}
    assert metrics["baseline"] == metrics["isgan"]
    assert sorted(results["baseline"]) == ["stage1", "stage3"]
    isgan = torch.load(out / "isgan" / "stage1" / "latest.pth.tar", weights_only=True)["state_dict"]
    base = torch.load(out / "baseline" / "stage1" / "latest.pth.tar", weights_only=True)["state_dict"]
    assert base.keys() == {k for k in isgan if k.startswith(("backbone.", "encoder_r."))}
    assert all(torch.equal(base[k], isgan[k]) for k in base)
    lrs = {run: load_config(str(out / run / "config.yaml")).TRAIN.STAGE3.LR for run in ("isgan", "baseline")}
    assert lrs["baseline"] == lrs["isgan"]
    events = EventAccumulator(str(out / "baseline" / "stage3"))  # the optimiser's lr at every step
    events.Reload()
    logged = [e.value for e in events.Scalars("train/lr")]
    assert logged and logged == pytest.approx([lrs["isgan"]] * len(logged))  # float32 in the event file


def test_feature_dims_and_parameters(compared):
    by = compared["by_method"]
    assert by["isgan"]["feature_dim"] == by["baseline"]["feature_dim"] == by["mgn"]["feature_dim"] == 8 * 256
    assert by["pcb_p6"]["feature_dim"] == 6 * 2048  # torchreid's PCB: 6 stripes of ResNet-50 layer4 features
    # E_R at test time is the same network in IS-GAN, its baseline and MGN; E_U, G and D only count in total
    assert by["isgan"]["params_test"] == by["baseline"]["params_test"] == by["mgn"]["params_test"]
    assert by["baseline"]["params_total"] == by["mgn"]["params_total"] < by["isgan"]["params_total"]
    # what the descriptor does not depend on: MGN's classifiers; PCB's reduction layer and classifiers
    mgn = mgn_r18(NUM_TRAIN_IDS, pretrained=False)
    assert by["mgn"]["params_total"] - by["mgn"]["params_test"] == count(mgn.encoder_r.classifiers)
    pcb = torchreid.models.build_model("pcb_p6", NUM_TRAIN_IDS, pretrained=False)
    assert by["pcb_p6"]["params_total"] - by["pcb_p6"]["params_test"] == count(pcb.conv5) + count(pcb.classifier)


def test_csv_json_and_run_folders(compared):
    out, rows = compared["out"], compared["rows"]
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == METHODS
    assert [float(r["mAP"]) for r in table] == pytest.approx([r["mAP"] for r in rows])
    with open(out / "comparison.json") as f:
        data = json.load(f)
    assert data["rows"] == rows
    assert data["overrides"]["pcb_p6"] == ["MODEL.NAME", "pcb_p6", "TRAIN.STAGES", "[1, 3]"]
    for run, stages in (("isgan", (1, 2, 3)), ("baseline", (1, 3)), ("mgn", (1, 3)), ("pcb_p6", (1, 3))):
        for stage in stages:
            assert (out / run / f"stage{stage}" / "latest.pth.tar").is_file()
        assert (out / run / "results.json").is_file()
        assert f"NAME: {run}" in (out / run / "config.yaml").read_text()
        assert "Stage 1" in (out / run / "train.log").read_text()


def test_resumed_comparison_reuses_the_runs(compared, data_root):
    """A second call on the same OUTPUT_DIR trains nothing."""
    out = compared["out"]
    latest = out / "baseline" / "stage3" / "latest.pth.tar"
    mtime = latest.stat().st_mtime_ns
    rows, printed = run_compare(out, data_root, methods=["baseline", "mgn"])
    assert "finished (1 epoch), skipped" in printed and latest.stat().st_mtime_ns == mtime
    assert [r["method"] for r in rows] == ["baseline", "mgn"]
    for r in rows:
        assert r == compared["by_method"][r["method"]]


def test_default_methods_add_isgan_with_triplet():
    runs = compare.runs_for(list(compare.DEFAULT_METHODS))
    assert list(runs) == ["isgan", "isgan_tri", "baseline", "mgn", "pcb_p6"]
    assert runs["isgan_tri"] == ["MODEL.NAME", "isgan", "LOSS.ISGAN_TRIPLET", "True", "TRAIN.STAGES", "[1, 2, 3]"]


@pytest.mark.parametrize("methods, extra, message", [
    (["isgan", "gan"], [], "unknown method 'gan'"),
    (["mgn", "mgn"], [], "names mgn more than once"),
    (["pcb_p6"], ["DATA.HEIGHT", "64", "DATA.WIDTH", "32"], "pcb_p6 pools 6 horizontal stripes but DATA.HEIGHT = 64"),
])
def test_user_errors(tmp_path, data_root, methods, extra, message):
    with pytest.raises(ISGANError, match=message):
        compare.compare(CONFIG, TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "o"), *extra], methods)
    assert not (tmp_path / "o").exists()  # checked before anything is written or trained


def test_list_flags_stand_anywhere():
    def pop(argv):
        return cli.pop_list_flag(argv, "--methods", cli.is_name, "mgn")

    assert pop(["--methods", "mgn", "pcb_p6", "--config-file", "c", "SEED", "2"]) == \
        (["--config-file", "c", "SEED", "2"], ["mgn", "pcb_p6"])
    assert pop(["--config-file", "c", "SEED", "2", "--methods", "mgn"]) == \
        (["--config-file", "c", "SEED", "2"], ["mgn"])
    assert pop(["--config-file", "c"]) == (["--config-file", "c"], None)
    assert cli.pop_list_flag(["--stages", "2", "3", "SEED", "2"], "--stages", str.isdigit, "2 3") == \
        (["SEED", "2"], ["2", "3"])


def test_tool_prints_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "compare.py"), "--config-file", CONFIG,
                           "OUTPUT_DIR", str(tmp_path), "--methods"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --methods needs values, e.g. --methods")
