"""Cross-dataset evaluation: train on synthperson, evaluate on synthperson and synthperson_b."""
import json
import os

import pytest

from isgan_torchreid import cli
from isgan_torchreid import storage

from conftest import CONFIGS, TINY

CONFIG = os.path.join(CONFIGS, "isgan_synthetic.yaml")
TARGETS = ["synthperson", "synthperson_b"]


def table_rows(printed):
    """The data rows of the last github table printed: [[cell, ...], ...]."""
    lines = printed[printed.rindex("| stage"):].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|")]


@pytest.fixture(scope="module")
def trained(data_root, module_dir):
    """Stage 1 of IS-GAN on synthperson (1 epoch), evaluated on both styles."""
    out = module_dir / "cross"
    results = cli.train_main(["--config-file", CONFIG, *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(out),
                              "TRAIN.STAGES", "[1]", "DATA.TARGETS", str(TARGETS)])
    return out, results


def test_training_evaluates_every_target(trained):
    out, results = trained
    assert list(results) == [1] and sorted(results[1]) == TARGETS
    for metrics in results[1].values():
        assert 0.0 <= metrics["rank1"] <= 1.0 and 0.0 <= metrics["mAP"] <= 1.0
    with open(out / "results.json") as f:
        assert sorted(json.load(f)["stage1"]) == TARGETS
    assert storage.load_checkpoint(str(out / "stage1" / "latest.pth.tar"))["results"] == results[1]


def test_test_main_evaluates_a_checkpoint_on_another_dataset(trained, data_root, tmp_path, capsys):
    out, results = trained
    capsys.readouterr()
    train_config = (out / "config.yaml").read_text()
    # the training run's own OUTPUT_DIR; --targets may stand before or after the KEY VALUE overrides
    evaluated = cli.test_main(["--config-file", CONFIG, "--weights", str(out / "stage1" / "latest.pth.tar"), *TINY,
                               "DATA.ROOT", data_root, "OUTPUT_DIR", str(out), "--targets", *TARGETS])
    assert (out / "config.yaml").read_text() == train_config  # test settings go to OUTPUT_DIR/test
    assert "synthperson_b" in (out / "test" / "config.yaml").read_text()
    rows = table_rows(capsys.readouterr().out)
    assert [row[:2] for row in rows] == [["test", target] for target in TARGETS]
    for row, target in zip(rows, TARGETS):
        # same weights, same images, deterministic eval: the training run's numbers, recomputed
        for key in ("rank1", "rank5", "rank10", "mAP"):
            assert evaluated["test"][target][key] == results[1][target][key]
        assert float(row[-1]) == pytest.approx(100 * results[1][target]["mAP"], abs=0.051)
