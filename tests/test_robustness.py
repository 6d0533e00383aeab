"""tools/benchmark.py --by-factor: re-identification per group of queries, checked against the evaluator."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from isgan_torchreid.benchmarks import benchmark_main
from isgan_torchreid.benchmarks.robustness import (by_factor, measure_by_factor, query_groups, read_test_split,
                                                   short_names, split_from_lists)
from isgan_torchreid.config import load_config
from isgan_torchreid.data.build import build_data
from isgan_torchreid.deploy import embed, load_encoder, save_encoder
from isgan_torchreid.engine.evaluation import evaluate
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model

from conftest import CONFIGS, TINY


@pytest.fixture(scope="module")
def setup(data_root, module_dir):
    """The tiny synthperson's folder and two encoder files of different random weights."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root])
    build_data(cfg)  # generates the dataset
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(save_encoder(build_model(cfg, 8), cfg, str(module_dir / f"seed{seed}" / "encoder.safetensors")))
    return {"root": os.path.join(data_root, "synthperson"), "weights": paths}


def test_groups_are_all_queries_each_camera_and_each_factor_value(setup):
    split = read_test_split(setup["root"])
    query = split["query"]
    groups = query_groups(query["paths"], query["camids"])
    with open(os.path.join(setup["root"], "factors.json")) as f:
        stored = {k: v for k, v in json.load(f).items() if k.startswith("query/")}
    assert groups["all queries"].all() and len(groups["all queries"]) == len(stored)
    cameras = [g for g in groups if g.startswith("camera ")]
    assert sum(groups[g] for g in cameras).tolist() == [1] * len(stored)  # a partition
    for k, path in enumerate(query["paths"]):
        factors = stored["query/" + os.path.basename(path)]
        assert groups[f"camera {factors['camera']}"][k]  # 1-based, as in the file name
        assert groups[f"view = {factors['view']}"][k]
        assert groups[f"occluded = {str(factors['occluded']).lower()}"][k]
    for factor in ("view", "occluded"):
        assert sum(m for g, m in groups.items() if g.startswith(factor + " = ")).tolist() == [1] * len(stored)


def test_all_queries_is_the_evaluators_result_and_groups_average_to_it(setup):
    weights = setup["weights"][0]
    result = by_factor([weights], setup["root"])
    rows, counts = result["results"][weights], result["groups"]
    split = read_test_split(setup["root"])
    q, g = split["query"], split["gallery"]
    encoder = load_encoder(weights)
    expected = evaluate(embed(encoder, q["paths"]), embed(encoder, g["paths"]), q["pids"], g["pids"], q["camids"],
                        g["camids"])
    assert rows["all queries"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert rows["all queries"]["rank1"] == pytest.approx(expected["rank1"], abs=1e-9)
    cameras = [k for k in rows if k.startswith("camera ")]
    assert sum(counts[k] for k in cameras) == counts["all queries"] == len(q["paths"])
    for metric in ("mAP", "rank1"):  # every query has a match: the groups of a partition average to the whole
        weighted = sum(rows[k][metric] * counts[k] for k in cameras) / len(q["paths"])
        assert weighted == pytest.approx(rows["all queries"][metric], abs=1e-9)


def test_torchreids_test_lists_give_the_folders_split(setup, data_root):
    """split_from_lists: a data manager's query and gallery lists (any torchreid dataset) give what read_test_split
    reads from the Market-layout folder, and the same measurement."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root])
    split = split_from_lists(*build_data(cfg).manager.fetch_test_loaders("synthperson"))
    folder = read_test_split(setup["root"])
    for name in ("query", "gallery"):
        order = np.argsort(split[name]["paths"])
        assert [split[name]["paths"][i] for i in order] == sorted(folder[name]["paths"])
        expected = np.argsort(folder[name]["paths"])
        for key in ("pids", "camids"):
            assert split[name][key][order].tolist() == folder[name][key][expected].tolist()
    weights = setup["weights"][1]
    from_lists, from_folder = measure_by_factor([weights], split), by_factor([weights], setup["root"])
    assert from_lists["groups"] == from_folder["groups"]
    rows = from_folder["results"][weights]
    assert from_lists["results"][weights].keys() == rows.keys()
    for group, metrics in from_lists["results"][weights].items():  # another image order: the float sums' rounding
        assert metrics == pytest.approx(rows[group], abs=1e-9)


def test_metric_is_the_evaluators(setup, data_root, tmp_path):
    """metric: with descriptors not L2-normalised (TEST.NORMALIZE False) cosine and Euclidean rank differently;
    each gives the evaluator's figures under the same metric."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root,
                                                                              "TEST.NORMALIZE", "False"])
    torch.manual_seed(2)
    weights = save_encoder(build_model(cfg, 8), cfg, str(tmp_path / "encoder.safetensors"))
    split = read_test_split(setup["root"])
    q, g = split["query"], split["gallery"]
    encoder = load_encoder(weights)
    qf, gf = embed(encoder, q["paths"]), embed(encoder, g["paths"])
    measured = {}
    for metric in ("euclidean", "cosine"):
        measured[metric] = measure_by_factor([weights], split, metric=metric)["results"][weights]["all queries"]
        expected = evaluate(qf, gf, q["pids"], g["pids"], q["camids"], g["camids"], metric=metric)
        assert measured[metric]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert measured["cosine"]["mAP"] != pytest.approx(measured["euclidean"]["mAP"], abs=1e-6)
    tool = benchmark_main(["--by-factor", weights, "--data-dir", setup["root"], "--metric", "cosine"])
    assert tool["metric"] == "cosine" and tool["results"][weights]["all queries"] == measured["cosine"]


def test_queries_without_a_match_are_left_out_and_chunks_change_nothing(setup, tmp_path):
    """An identity with no gallery image left: its queries are not counted, as torchreid skips them; ranking one
    query per chunk (max_bytes 1) gives the evaluator's result on what remains."""
    root = tmp_path / "data"
    for folder in ("query", "bounding_box_test"):
        shutil.copytree(os.path.join(setup["root"], folder), root / folder)
    pid = sorted(os.listdir(root / "query"))[0][:4]
    for name in os.listdir(root / "bounding_box_test"):
        if name.startswith(pid + "_"):
            os.remove(root / "bounding_box_test" / name)
    weights = setup["weights"][0]
    result = by_factor([weights], str(root), max_bytes=1)
    split = read_test_split(str(root))
    q, g = split["query"], split["gallery"]
    left_out = int((q["pids"] == int(pid)).sum())
    assert left_out > 0 and result["groups"]["all queries"] == len(q["paths"]) - left_out
    assert sum(n for k, n in result["groups"].items() if k.startswith("camera ")) == len(q["paths"]) - left_out
    encoder = load_encoder(weights)
    expected = evaluate(embed(encoder, q["paths"]), embed(encoder, g["paths"]), q["pids"], g["pids"], q["camids"],
                        g["camids"])
    row = result["results"][weights]["all queries"]
    assert row["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert row["rank1"] == pytest.approx(expected["rank1"], abs=1e-9)


def test_junk_images_leave_the_gallery(setup, tmp_path):
    root = tmp_path / "data"
    for folder in ("query", "bounding_box_test"):
        shutil.copytree(os.path.join(setup["root"], folder), root / folder)
    gallery = root / "bounding_box_test"
    person = next(name for name in sorted(os.listdir(gallery)) if not name.startswith("-1_"))
    shutil.copy(gallery / person, gallery / ("-1" + person[4:]))  # 0049_c1s1_... -> -1_c1s1_...
    split = read_test_split(str(root))
    assert (split["gallery"]["pids"] != -1).all()
    assert len(split["gallery"]["paths"]) == sum(not name.startswith("-1_") for name in os.listdir(gallery))
    assert query_groups(split["query"]["paths"], split["query"]["camids"]).keys() >= {"all queries"}


def test_short_names_drop_the_shared_folders():
    assert short_names(["/r/base/s3/e.st", "/r/isgan/s3/e.st"]) == ["base/s3/e.st", "isgan/s3/e.st"]
    assert short_names(["/r/run/e.st"]) == ["run/e.st"]


def test_tool_prints_each_encoder_and_the_difference_and_writes_json(setup, tmp_path, capsys):
    out = str(tmp_path / "f.json")
    result = benchmark_main(["--by-factor", *setup["weights"], "--data-dir", setup["root"], "--out", out])
    printed = capsys.readouterr().out
    assert "seed1/encoder.safetensors - seed0/encoder.safetensors" in printed
    assert "occluded = true" in printed or "occluded = false" in printed
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    a, b = (result["results"][w]["all queries"] for w in setup["weights"])
    assert a != b  # two encoders, two results
    assert result["metric"] == "euclidean" and "euclidean distance" in printed  # TEST.METRIC's default
    diff = f"{100 * (b['rank1'] - a['rank1']):+.1f} / {100 * (b['mAP'] - a['mAP']):+.1f}"
    assert diff in printed
    assert os.listdir(tmp_path) == ["f.json"]


@pytest.mark.parametrize("argv, message", [
    (["--by-factor", "W0"], "--by-factor needs --data-dir DIR"),
    (["--by-factor", "W0", "--data-dir", "EMPTY"], "no query/ folder; pass a dataset in Market-1501 layout"),
    (["--by-factor", "W0", "W0", "--data-dir", "ROOT"], "more than once; list each encoder once"),
    (["--by-factor", "W0", "--data-dir", "ROOT", "--out", "x.txt"], "name it FILE.json"),
])
def test_tool_errors_are_one_line(setup, tmp_path, argv, message):
    names = {"W0": setup["weights"][0], "EMPTY": str(tmp_path), "ROOT": setup["root"]}
    with pytest.raises(ISGANError, match=message):
        benchmark_main([names.get(a, a) for a in argv] + ["--debug"])
    assert not np.any([name.endswith(".json") for name in os.listdir(tmp_path)])
