"""tools/compare.py: IS-GAN, its E_R baseline, MGN and a torchreid model under one tiny setting and schedule; seeds,
the chart, the CPU default."""
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchreid
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from isgan_torchreid import cli, compare
from isgan_torchreid.benchmarks.robustness import by_factor
from isgan_torchreid.config import load_config
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import mgn_r18

from conftest import CONFIGS, REPO, TINY

CONFIG = os.path.join(CONFIGS, "compare_synthetic.yaml")
METHODS = ["isgan", "baseline", "mgn", "resnet18"]  # resnet18: torchreid's, a cheap stand-in for its pcb_p6
NUM_TRAIN_IDS = 8  # TINY's DATA.SYNTH.NUM_TRAIN_IDS


def count(module):
    return sum(p.numel() for p in module.parameters())


def run_compare(out, data_root, methods=(), seeds=(), extra=()):
    """compare_main on the tiny config (``--methods`` and ``--seeds`` last, after the overrides); returns (rows,
    printed text)."""
    argv = ["--config-file", CONFIG, *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(out), *extra]
    argv += ["--methods", *methods] if methods else []
    argv += ["--seeds", *map(str, seeds)] if seeds else []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = compare.compare_main(argv)
    return rows, printed.getvalue()


@pytest.fixture(scope="module")
def compared(data_root, module_dir):
    """One comparison of three of the default methods and torchreid's resnet18 (1 epoch per stage), one seed."""
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
    assert by["resnet18"]["feature_dim"] == 512  # torchreid's ResNet-18: pooled layer4 features
    # E_R at test time is the same network in IS-GAN, its baseline and MGN; E_U, G and D only count in total
    assert by["isgan"]["params_test"] == by["baseline"]["params_test"] == by["mgn"]["params_test"]
    assert by["baseline"]["params_total"] == by["mgn"]["params_total"] < by["isgan"]["params_total"]
    # what the descriptor does not depend on: MGN's classifiers; the torchreid model's classifier
    mgn = mgn_r18(NUM_TRAIN_IDS, pretrained=False)
    assert by["mgn"]["params_total"] - by["mgn"]["params_test"] == count(mgn.encoder_r.classifiers)
    resnet = torchreid.models.build_model("resnet18", NUM_TRAIN_IDS, pretrained=False)
    assert by["resnet18"]["params_total"] - by["resnet18"]["params_test"] == count(resnet.classifier)


def test_csv_json_and_run_folders(compared):
    out, rows = compared["out"], compared["rows"]
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == METHODS
    assert [float(r["mAP"]) for r in table] == pytest.approx([r["mAP"] for r in rows])
    with open(out / "comparison.json") as f:
        data = json.load(f)
    assert data["rows"] == rows and data["seeds"] == [1] and "std" not in data  # compare_synthetic's SEED 1
    assert {r["seed"] for r in rows} == {1} and {r["seeds"] for r in table} == {""}  # one seed: no mean/std rows
    assert data["overrides"]["resnet18"] == ["MODEL.NAME", "resnet18", "TRAIN.STAGES", "[1, 3]"]
    for run, stages in (("isgan", (1, 2, 3)), ("baseline", (1, 3)), ("mgn", (1, 3)), ("resnet18", (1, 3))):
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


def test_by_factor_measures_each_runs_encoder(compared, data_root):
    """--by-factor on the finished comparison trains nothing and measures each run's final encoder per group of
    queries as tools/benchmark.py --by-factor does; torchreid's resnet18 has no encoder file and is named."""
    out = compared["out"]
    rows, printed = run_compare(out, data_root, methods=["baseline", "isgan", "resnet18"], extra=["--by-factor"])
    assert "finished (1 epoch), skipped" in printed
    result = json.loads((out / "comparison.json").read_text())["by_factor"]
    assert result["skipped"] == ["resnet18"] and list(result["targets"]) == ["synthperson"]
    measured = result["targets"]["synthperson"]
    files = [str(out / m / "stage3" / "encoder.safetensors") for m in ("baseline", "isgan")]
    direct = by_factor(files, os.path.join(data_root, "synthperson"))
    assert measured["groups"] == direct["groups"] and {"camera 1", "view = side", "occluded = true"} <= set(direct[
        "groups"])
    for method, path in zip(("baseline", "isgan"), files):
        assert list(measured["runs"][method]) == ["1"]  # compare_synthetic's SEED 1
        for group, metrics in measured["runs"][method]["1"].items():
            assert metrics == pytest.approx(direct["results"][path][group], abs=1e-9)
        assert measured["runs"][method]["1"]["all queries"]["mAP"] == pytest.approx(
            compared["by_method"][method]["mAP"], abs=1e-6)  # the evaluator's figure, from the data manager's lists
    by_group = {d["group"]: d for d in measured["differences"]}
    assert list(by_group) == list(measured["runs"]["isgan"]["1"])
    camera = by_group["camera 1"]
    expected = [measured["runs"][m]["1"]["camera 1"]["mAP"] for m in ("isgan", "baseline")]
    assert (camera["method"], camera["reference"], camera["seeds"], camera["mAP_std"]) == ("isgan", "baseline", 1,
                                                                                           None)
    assert camera["mAP_per_seed"] == [camera["mAP"]] == [pytest.approx(expected[0] - expected[1])]
    table = printed[printed.index("By query group on synthperson"):]
    assert "resnet18 left out (no identity encoder file" in printed
    assert "| mAP: isgan - baseline" in table and f"{100 * camera['mAP']:+.1f} (" in table


def test_paired_group_differences_and_their_table():
    runs = {"baseline": {"0": {"all": {"rank1": 0.5, "mAP": 0.4}, "cam": {"rank1": 0.2, "mAP": 0.1}},
                         "1": {"all": {"rank1": 0.6, "mAP": 0.5}}},
            "isgan": {"0": {"all": {"rank1": 0.6, "mAP": 0.5}, "cam": {"rank1": 0.4, "mAP": 0.3}},
                      "1": {"all": {"rank1": 0.6, "mAP": 0.45}}}}
    everything, camera = compare.paired_group_differences(runs)
    assert everything["mAP_per_seed"] == pytest.approx([0.1, -0.05]) and everything["mAP_ahead"] == 1
    assert everything["mAP"] == pytest.approx(0.025) and everything["mAP_std"] == pytest.approx(0.15 / 2 ** 0.5)
    assert everything["rank1"] == pytest.approx(0.05) and everything["seeds"] == 2
    assert everything["mAP_ci95"] == pytest.approx([0.025 - 12.7062 * 0.075, 0.025 + 12.7062 * 0.075], rel=1e-5)
    assert (camera["seeds"], camera["mAP_std"], camera["mAP"]) == (1, None, pytest.approx(0.2))  # seed 1 lacks it
    assert compare.paired_group_differences(runs, reference="mgn") == []
    table = compare.by_factor_table({"groups": {"all": 30, "cam": 4}, "runs": runs,
                                     "differences": [everything, camera]}).splitlines()
    assert [c.strip() for c in table[2].split("|")[1:-1]] == ["all", "30", "55.0 / 45.0", "60.0 / 47.5",
                                                              "+2.5 ± 10.6 (1 of 2)"]
    assert [c.strip() for c in table[3].split("|")[1:-1]] == ["cam", "4", "20.0 / 10.0", "40.0 / 30.0",
                                                              "+20.0 (1 of 1)"]


def test_start_from_trains_the_last_stage_alone(compared, data_root, tmp_path):
    """--start-from: each run trains its last stage alone, from the stage before it as the fixture's run of the same
    method finished it; stage 3's batches are seeded per epoch, so under the same settings its results are the
    fixture's. A changed key is named."""
    source = compared["out"]
    out = tmp_path / "again"
    rows, printed = run_compare(out, data_root, ["isgan", "baseline"], extra=["--start-from", str(source)])
    for method, before in (("isgan", 2), ("baseline", 1)):
        assert sorted(p.name for p in (out / method).glob("stage*")) == ["stage3"]
        assert f"{method}: stage 3 starts from {source / method / f'stage{before}' / 'latest.pth.tar'}; the trained " \
               f"keys that differ from that run's: none" in printed
        assert load_config(str(out / method / "config.yaml")).TRAIN.STAGES == [3]
    for r in rows:
        expected = compared["by_method"][r["method"]]
        assert (r["run"], r["rank1"], r["mAP"]) == (expected["run"], expected["rank1"], expected["mAP"])
    assert "Started from" in printed and "train img/s is that stage's" in printed
    assert json.loads((out / "comparison.json").read_text())["start_from"] == str(source)

    _, printed = run_compare(tmp_path / "smoothed", data_root, ["baseline"],
                             extra=["LOSS.LABEL_SMOOTH", "0.2", "--start-from", str(source)])
    assert "the trained keys that differ from that run's: LOSS.LABEL_SMOOTH: 0.0 -> 0.2" in printed


@pytest.mark.parametrize("start, extra, message", [
    ("missing", [], "--start-from .*missing/mgn/stage1/latest.pth.tar does not exist; give the OUTPUT_DIR of a "
                    "comparison of the same methods and seeds"),
    ("source", ["TRAIN.STAGE1.EPOCHS", "2"], "is at epoch 1 of stage 1, TRAIN.STAGE1.EPOCHS is 2 here; set "
                                             "TRAIN.STAGE1.EPOCHS 1"),
    ("itself", [], "is OUTPUT_DIR itself"),
])
def test_start_from_errors(compared, data_root, tmp_path, start, extra, message):
    out = tmp_path / "o"
    folder = {"missing": tmp_path / "missing", "source": compared["out"], "itself": out}[start]
    with pytest.raises(ISGANError, match=message):
        compare.compare(CONFIG, TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(out), *extra], ["mgn"], None,
                        str(folder))
    assert not out.exists()  # checked before anything is written or trained


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_chart_of_one_seed(compared):
    out = compared["out"]
    assert is_png(out / "comparison.png")
    assert not [f for f in os.listdir(out) if ".tmp." in f]  # written through a temp file, renamed


def test_two_seeds_give_mean_and_sample_std(compared, data_root, tmp_path):
    """Each seed is a run of its own in OUTPUT_DIR/<method>/seed<k>/, and a finished one is skipped: seed 1 is the
    fixture's run of torchreid's resnet18 (the cheapest; compare_synthetic's SEED 1) moved there, so only seed 2
    trains."""
    out = tmp_path / "seeds"
    shutil.copytree(compared["out"] / "resnet18", out / "resnet18" / "seed1")
    latest = out / "resnet18" / "seed1" / "stage3" / "latest.pth.tar"
    mtime = latest.stat().st_mtime_ns
    rows, printed = run_compare(out, data_root, methods=["resnet18"], seeds=[1, 2])
    assert "finished (1 epoch), skipped" in printed and latest.stat().st_mtime_ns == mtime
    for stage in (1, 3):
        assert (out / "resnet18" / "seed2" / f"stage{stage}" / "latest.pth.tar").is_file()
    assert load_config(str(out / "resnet18" / "seed2" / "config.yaml")).SEED == 2
    assert sorted(os.listdir(out / "resnet18")) == ["seed1", "seed2"]

    assert [(r["seed"], r["seeds"], r["run"]) for r in rows] == [
        (1, None, "resnet18/seed1/stage3"), (2, None, "resnet18/seed2/stage3"), ("mean", 2, None), ("std", 2, None)]
    one, two, mean, std = rows
    assert one == dict(compared["by_method"]["resnet18"], run="resnet18/seed1/stage3")
    for key in ("rank1", "rank5", "mAP", "train_images_per_s", "test_images_per_s"):
        assert mean[key] == pytest.approx((one[key] + two[key]) / 2)
        assert std[key] == pytest.approx(abs(one[key] - two[key]) / 2 ** 0.5)  # sample std of two values
    assert mean["feature_dim"] == one["feature_dim"] and std["feature_dim"] is None

    assert "sample standard deviation (n - 1) over the seeds (2 seeds)" in printed
    header, _, cells = [[c.strip() for c in line.split("|")[1:-1]]
                        for line in printed[printed.index("(2 seeds)"):].splitlines()[1:4]]
    assert header[:3] == ["method", "target", "seeds"] and header[6:9] == ["R-1", "R-5", "mAP"]
    assert cells[:3] == ["resnet18", "synthperson", "2"]
    assert cells[6] == f"{100 * mean['rank1']:.1f} ± {100 * std['rank1']:.1f}"
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["seed"], r["seeds"]) for r in table] == [("1", ""), ("2", ""), ("mean", "2"), ("std", "2")]
    assert float(table[3]["mAP"]) == pytest.approx(std["mAP"])
    data = json.loads((out / "comparison.json").read_text())
    assert data["rows"] == rows and data["seeds"] == [1, 2] and "n - 1" in data["std"]
    assert is_png(out / "comparison.png")


def row(method, seed, target, rank1, mAP, speed=10.0):
    return {"method": method, "seed": seed, "seeds": None, "run": f"{method}/seed{seed}/stage3", "target": target,
            "feature_dim": 2048, "params_test": 7, "params_total": 9, "rank1": rank1, "rank5": 1.0, "mAP": mAP,
            "train_images_per_s": speed, "test_images_per_s": 100.0}


def test_summary_rows_hold_mean_and_sample_std():
    rows = [row("isgan", 0, "a", 0.2, 0.1), row("isgan", 0, "b", 0.5, 0.5),
            row("isgan", 1, "a", 0.4, 0.1, speed=None), row("isgan", 1, "b", 0.5, 0.5),
            row("isgan", 2, "a", 0.6, 0.4), row("isgan", 2, "b", 0.5, 0.5)]
    summary = compare.summarize(rows)
    assert [(r["method"], r["target"], r["seed"], r["seeds"]) for r in summary] == [
        ("isgan", "a", "mean", 3), ("isgan", "a", "std", 3), ("isgan", "b", "mean", 3), ("isgan", "b", "std", 3)]
    mean_a, std_a, mean_b, std_b = summary
    assert (mean_a["rank1"], mean_a["mAP"]) == pytest.approx((0.4, 0.2))
    # n - 1: sqrt((0.2^2 + 0 + 0.2^2) / 2) = 0.2 and sqrt((0.1^2 + 0.1^2 + 0.2^2) / 2) = sqrt(0.03)
    assert (std_a["rank1"], std_a["mAP"]) == pytest.approx((0.2, 0.03 ** 0.5))  # not n: 0.163, 0.141
    assert (mean_b["rank1"], std_b["rank1"], mean_b["rank5"], std_b["rank5"]) == (0.5, 0.0, 1.0, 0.0)
    assert mean_a["train_images_per_s"] is None and std_a["train_images_per_s"] is None  # one run untimed
    assert mean_b["train_images_per_s"] == 10.0 and mean_a["test_images_per_s"] == 100.0
    assert (mean_a["feature_dim"], mean_a["params_test"], mean_a["params_total"]) == (2048, 7, 9)
    assert std_a["feature_dim"] is None and mean_a["run"] is None
    assert list(mean_a) == list(compare.COLUMNS)  # every row has the CSV's columns


def test_differences_pair_each_method_with_the_baseline_seed_by_seed():
    rows = [row("isgan", 0, "a", 0.50, 0.40), row("isgan", 1, "a", 0.60, 0.45), row("isgan", 2, "a", 0.55, 0.41),
            row("isgan", 0, "b", 0.50, 0.40), row("isgan", 3, "b", 0.50, 0.40),  # no seed pairs on b
            row("baseline", 0, "a", 0.45, 0.41), row("baseline", 1, "a", 0.58, 0.43),
            row("baseline", 2, "a", 0.50, 0.40), row("baseline", 0, "b", 0.50, 0.40)]
    rows += compare.summarize(rows)  # mean and std rows are not seeds
    [isgan_a] = compare.paired_differences(rows)
    assert {k: isgan_a[k] for k in ("method", "reference", "target", "seeds", "mAP_ahead")} == {
        "method": "isgan", "reference": "baseline", "target": "a", "seeds": 3, "mAP_ahead": 2}
    # mAP differences -0.01, 0.02, 0.01: their mean and sample std; the means alone would not give the std
    # sqrt(((-0.01 - m)^2 + (0.02 - m)^2 + (0.01 - m)^2) / 2) with m = 0.02 / 3: sqrt(7) / 100 / sqrt(3)
    assert (isgan_a["mAP"], isgan_a["mAP_std"]) == pytest.approx((0.02 / 3, 7 ** 0.5 / 100 / 3 ** 0.5))
    assert (isgan_a["rank1"], isgan_a["rank1_std"]) == pytest.approx((0.04, 0.017320508))  # 0.05, 0.02, 0.05
    assert (isgan_a["rank5"], isgan_a["rank5_std"]) == (0.0, 0.0)
    table = compare.differences_table([isgan_a]).splitlines()
    # 95% CI: mean ± t(0.975, 2 dof) x std / sqrt(3), t = 4.303 (a table's value)
    half = 4.302653 * 7 ** 0.5 / 100 / 3 ** 0.5 / 3 ** 0.5
    assert isgan_a["mAP_ci95"] == pytest.approx([0.02 / 3 - half, 0.02 / 3 + half])
    assert [c.strip() for c in table[2].split("|")[1:-1]] == [
        "isgan - baseline", "a", "3", "+4.0 ± 1.7", "+0.0 ± 0.0", "+0.7 ± 1.5", "[-3.1, +4.5]", "2 of 3"]
    assert compare.t_interval([0.01, 0.01]) == [0.01, 0.01] and compare.t_interval([0.01]) is None
    assert compare.paired_differences(rows, reference="mgn") == []  # no such method
    assert compare.paired_differences([r for r in rows if r["seed"] in (0, "mean", "std")]) == []  # one seed


def bar_sets(ax):
    from matplotlib.container import BarContainer
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_chart_bars_are_rank1_and_map_with_std_error_bars(tmp_path):
    rows = [row(m, s, t, 0.5 + 0.1 * s, 0.3) for m in ("isgan", "mgn") for s in (0, 1) for t in ("a", "b")]
    rows += compare.summarize(rows[:4]) + compare.summarize(rows[4:])
    path = tmp_path / "comparison.png"
    ax = compare.plot_comparison(rows, str(path), "title").axes[0]
    assert len(ax.patches) == 2 * 4  # rank-1 and mAP for each method and target
    assert [p.get_height() for p in ax.patches[:4]] == pytest.approx([55.0] * 4)  # rank-1 means, in percent
    assert [p.get_height() for p in ax.patches[4:]] == pytest.approx([30.0] * 4)  # then the mAP means
    rank1, _ = bar_sets(ax)
    spans = [seg[1][1] - seg[0][1] for seg in rank1.errorbar.lines[2][0].get_segments()]
    assert spans == pytest.approx([2 * 100 * 0.1 / 2 ** 0.5] * 4)  # +- the sample std of 0.5 and 0.6, in percent
    assert [t.get_text() for t in ax.get_xticklabels()] == ["isgan\na", "isgan\nb", "mgn\na", "mgn\nb"]
    assert is_png(path) and os.listdir(tmp_path) == ["comparison.png"]
    one_seed = compare.plot_comparison([rows[0], rows[4]], str(path), "title").axes[0]  # seed 0, target a
    assert len(one_seed.patches) == 4 and all(bars.errorbar is None for bars in bar_sets(one_seed))
    assert [t.get_text() for t in one_seed.get_xticklabels()] == ["isgan", "mgn"]  # one target: methods alone


def fake_train_run(trained):
    """train_run without training: records (run folder, SEED) and reports fixed metrics."""
    def train_run(cfg):
        trained.append((os.path.basename(cfg.OUTPUT_DIR), cfg.SEED))
        metrics = {"rank1": 0.5, "rank5": 0.75, "mAP": 0.25 + cfg.SEED / 100, "test_images_per_s": 9.0}
        return {"results": {cfg.TRAIN.STAGES[-1]: {"synthperson": metrics}}, "speed": {}, "size": (4, 1, 2)}
    return train_run


def test_cpu_default_leaves_out_resnet50_models(tmp_path, data_root, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(compare, "train_run", fake_train_run(trained))
    rows, printed = run_compare(tmp_path / "o", data_root, extra=["DEVICE", "cpu"])  # no --methods
    assert "=> on the CPU the default methods leave out pcb_p6 (ResNet-50 trunk); to train it anyway, name every " \
           "method: --methods isgan isgan_tri baseline mgn pcb_p6" in printed
    assert [m for m, _ in trained] == [r["method"] for r in rows] == ["isgan", "isgan_tri", "baseline", "mgn"]
    assert is_png(tmp_path / "o" / "comparison.png")

    cfgs = {m: load_config(CONFIG, TINY + overrides + ["DEVICE", "auto"])
            for m, overrides in compare.runs_for(list(compare.DEFAULT_METHODS)).items()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # DEVICE auto -> cuda: every default method
    capsys.readouterr()
    assert compare.cpu_default(cfgs) == list(compare.DEFAULT_METHODS)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("name, backbone, expected", [
    ("pcb_p6", "resnet18", True), ("resnet50", "resnet18", True), ("se_resnet50", "resnet18", True),
    ("resnet18", "resnet50", False), ("osnet_x0_25", "resnet50", False),  # torchreid's: by the model's layout
    ("isgan", "resnet50", True), ("mgn", "resnet50", True), ("baseline", "resnet18", False),  # ours: MODEL.BACKBONE
    ("isgan_r50", "resnet50", True), ("mgn_r18", "resnet18", False),
])
def test_resnet50_trunks(name, backbone, expected):
    cfg = load_config(CONFIG, ["MODEL.NAME", name, "MODEL.BACKBONE", backbone, "TRAIN.STAGES", "[1, 3]"])
    assert compare.resnet50_trunk(cfg) is expected


@pytest.mark.parametrize("seeds, folders", [
    (None, ["baseline", "mgn"]),  # the config's SEED 1, today's layout
    (["7"], ["baseline", "mgn"]),
    (["3", "4"], ["baseline/seed3", "mgn/seed3", "baseline/seed4", "mgn/seed4"]),  # seed by seed
])
def test_seed_layout(tmp_path, data_root, monkeypatch, seeds, folders):
    trained = []
    monkeypatch.setattr(compare, "train_run", lambda cfg: trained.append(cfg) or fake_train_run([])(cfg))
    rows = compare.compare(CONFIG, TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path)], ["baseline", "mgn"],
                           seeds).rows
    assert [os.path.relpath(cfg.OUTPUT_DIR, tmp_path) for cfg in trained] == folders
    expected = [int(s) for s in seeds] if seeds else [1]
    assert [cfg.SEED for cfg in trained] == [s for s in expected for _ in ("baseline", "mgn")]
    assert [r["seed"] for r in rows] == (expected + ["mean", "std"] if len(expected) > 1 else expected) * 2


def test_seeds_print_and_save_the_differences_to_the_baseline(tmp_path, data_root, monkeypatch):
    monkeypatch.setattr(compare, "train_run", fake_train_run([]))  # mAP 0.25 + SEED / 100 for every method
    rows, printed = run_compare(tmp_path, data_root, methods=["mgn", "baseline"], seeds=[3, 5])
    assert "Paired by seed" in printed
    line = printed[printed.index("mgn - baseline"):].splitlines()[0]
    assert [c.strip() for c in line.split("|")[:-1]] == [
        "mgn - baseline", "synthperson", "2", "+0.0 ± 0.0", "+0.0 ± 0.0", "+0.0 ± 0.0", "[+0.0, +0.0]", "0 of 2"]
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["differences"] == compare.paired_differences(rows)
    assert [(d["method"], d["seeds"]) for d in data["differences"]] == [("mgn", 2)]
    _, one_seed = run_compare(tmp_path / "one", data_root, methods=["mgn", "baseline"], seeds=[3])
    assert "Paired by seed" not in one_seed
    assert json.loads((tmp_path / "one" / "comparison.json").read_text())["differences"] == []


def test_default_methods_add_isgan_with_triplet():
    runs = compare.runs_for(list(compare.DEFAULT_METHODS))
    assert list(runs) == ["isgan", "isgan_tri", "baseline", "mgn", "pcb_p6"]
    assert runs["isgan_tri"] == ["MODEL.NAME", "isgan", "LOSS.ISGAN_TRIPLET", "True", "TRAIN.STAGES", "[1, 2, 3]"]


@pytest.mark.parametrize("methods, seeds, extra, message", [
    (["isgan", "gan"], None, [], "unknown method 'gan'"),
    (["mgn", "mgn"], None, [], "names mgn more than once"),
    (["mgn"], ["0", "1", "0"], [], "--seeds names 0 more than once"),
    (["mgn"], ["0", "4294967296"], [], "SEED"),  # numpy's seed range
    # named, a ResNet-50 model runs on the CPU too: here it gets as far as its own check
    (["pcb_p6"], None, ["DATA.HEIGHT", "64", "DATA.WIDTH", "32"],
     "pcb_p6 pools 6 horizontal stripes but DATA.HEIGHT = 64"),
    (None, None, ["MODEL.BACKBONE", "resnet50", "DEVICE", "cpu"],
     "here every one has one \\(isgan, isgan_tri, baseline, mgn, pcb_p6\\); name those to train on the CPU anyway "
     "with --methods"),
])
def test_user_errors(tmp_path, data_root, methods, seeds, extra, message):
    with pytest.raises(ISGANError, match=message):
        compare.compare(CONFIG, TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "o"), *extra], methods,
                        seeds)
    assert not (tmp_path / "o").exists()  # checked before anything is written or trained


def test_list_flags_stand_anywhere():
    def pop(argv):
        return cli.pop_list_flag(argv, "--methods", cli.is_name, "mgn")

    assert pop(["--methods", "mgn", "pcb_p6", "--config-file", "c", "SEED", "2"]) == \
        (["--config-file", "c", "SEED", "2"], ["mgn", "pcb_p6"])
    assert pop(["--config-file", "c", "SEED", "2", "--methods", "mgn"]) == \
        (["--config-file", "c", "SEED", "2"], ["mgn"])
    assert pop(["--config-file", "c"]) == (["--config-file", "c"], None)
    with pytest.raises(ISGANError, match="--start-from takes one folder, got 2"):
        compare.compare_main(["--debug", "--config-file", "c", "--start-from", "a", "b"])
    assert cli.pop_list_flag(["--stages", "2", "3", "SEED", "2"], "--stages", str.isdigit, "2 3") == \
        (["SEED", "2"], ["2", "3"])


def test_tool_prints_one_line_errors(tmp_path):
    # -X importtime: every module imported, on stderr; the chart's matplotlib is not one until a chart is drawn
    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(REPO, "tools", "compare.py"),
                           "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), "--methods"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --methods needs values, e.g. --methods")
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "isgan_torchreid.compare" in imported and "matplotlib" not in imported
