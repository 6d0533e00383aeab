"""docs/architecture.md's worked example: a method registered from this file, with its own stage table, loss
group and optimiser, trains stages 1 and 3 through tools/train.py's entry point with no edit to the engine."""
import dataclasses
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

from isgan_torchreid import storage
from isgan_torchreid.cli import train_main
from isgan_torchreid.config import METHODS
from isgan_torchreid.engine.objective import IdentityObjective, logged, register_method
from isgan_torchreid.engine.plan import RunLayout

from conftest import CONFIGS, TINY


@register_method("toy_head_tuning")
class HeadTuning(IdentityObjective):
    """Stage 1 trains the whole model on cross-entropy plus a small penalty on the logits' size; stage 3 tunes
    E_R's branches and heads alone with SGD, the trunk frozen (its BatchNorm statistics too)."""

    stages = (1, 3)
    loss_groups = {"id": ("L_R",), "toy": ("L_size",)}

    def trainable_modules(self, stage):
        return [self.model] if stage == 1 else [self.model.encoder_r]

    def optimizers(self, stage):
        if stage == 1:
            return {"model": self.optim.adam(stage, self.trainable_modules(stage))}
        adam = self.optim.adam(stage, self.trainable_modules(stage))  # its rate and schedule, another rule
        return {"model": dataclasses.replace(adam, kind="sgd", weight_decay=0.0, momentum=0.9)}

    def step(self, imgs, pids, stage, updates):
        with self.precision.autocast():
            logits = self.net(imgs)  # K x (B, C): the baseline's training forward
            terms = {"L_R": sum(F.cross_entropy(x.float(), pids) for x in logits) / len(logits),
                     "L_size": 1e-3 * sum(x.float().pow(2).mean() for x in logits)}
        updates["model"](terms)
        return logged(terms)


@pytest.fixture(scope="module")
def toy_run(data_root, module_dir):
    out = module_dir / "toy"
    argv = ["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml")] + TINY + [
        "MODEL.NAME", "baseline", "MODEL.PARTS", "[2]", "MODEL.METHOD", "toy_head_tuning", "TRAIN.STAGES", "[1, 3]",
        "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)]
    return out, train_main(argv)


def test_a_registered_method_trains_its_stages_with_no_edit_to_the_engine(toy_run):
    out, results = toy_run
    assert METHODS["toy_head_tuning"] is HeadTuning
    assert sorted(results) == [1, 3] and all(0 <= r["synthperson"]["mAP"] <= 1 for r in results.values())
    first = storage.load_checkpoint(RunLayout(str(out)).latest(1))
    third = storage.load_checkpoint(RunLayout(str(out)).latest(3))
    weights = {s: state["state_dict"] for s, state in ((1, first), (3, third))}
    trunk = [k for k in weights[1] if k.startswith("backbone.")]
    assert trunk and all(torch.equal(weights[1][k], weights[3][k]) for k in trunk)  # frozen, statistics too
    assert any(not torch.equal(weights[1][k], weights[3][k]) for k in weights[1] if k.startswith("encoder_r."))
    log = open(out / "train.log").read()
    assert "[s1 e1/1" in log and "| id " in log and " toy " in log  # its own loss group in the progress line
    events = EventAccumulator(str(out / "stage3"))
    events.Reload()
    assert {"loss_toy/L_size", "loss_toy/total", "loss_id/L_R", "train/lr"} <= set(events.Tags()["scalars"])


def test_an_unknown_method_is_one_line(data_root, tmp_path, capsys):
    argv = ["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml")] + TINY + [
        "MODEL.NAME", "baseline", "MODEL.METHOD", "no_such_method", "TRAIN.STAGES", "[1]",
        "DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0
    assert err.startswith("error: MODEL.METHOD 'no_such_method' is not a registered method; use auto or one of ")
    assert "toy_head_tuning" in err
