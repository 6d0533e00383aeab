"""A run's plan, resolved once from its config: the run folder's layout, the stage schedule, the evaluation
settings and the config's record. The loop, its hooks and the checkpoints read these objects, never the config
(detectron2 resolves its config into the trainer's parts the same way, once, in ``build_*``).

Layout under ``OUTPUT_DIR`` (:class:`RunLayout`; what each checkpoint holds: :mod:`.checkpoint`)::

    config.yaml                      the resolved config of the last invocation
    train.log                        the console of every invocation, appended
    results.json                     {"stage<n>": {target: metrics}} (:class:`~.hooks.ResultsWriter`)
    stage{n}/latest.pth.tar          what an interrupted stage resumes from; a finished stage's weights and results
    stage{n}/model.pth.tar-{epoch}   weights kept every TRAIN.CHECKPOINT_FREQ epochs and at the stage's end
    stage{n}/events.out.tfevents.*   TensorBoard (:class:`~.hooks.TensorBoardWriter`)
    test/                            tools/test.py's results of the run's last checkpoint
"""
import dataclasses
import os
from typing import Dict, Optional, Tuple, Union

from ..config import config_hash, hashed_config
from ..data.build import train_augmentations

__all__ = ["RunLayout", "Evaluation", "RunPlan"]


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Where a run's files are, under its folder ``root`` (OUTPUT_DIR)."""

    root: str

    def stage_dir(self, stage: Union[int, str]) -> str:
        """Folder of one stage's checkpoints and event files (``stage`` "test": tools/test.py's results)."""
        return os.path.join(self.root, f"stage{stage}" if isinstance(stage, int) else stage)

    def latest(self, stage: int) -> str:
        """The checkpoint written every TRAIN.RESUME_FREQ epochs of ``stage`` and at its end."""
        return os.path.join(self.stage_dir(stage), "latest.pth.tar")

    def last_latest(self, stages) -> Optional[str]:
        """The ``latest`` checkpoint of the last of ``stages`` that has one on disk; None when none has."""
        return next((path for path in map(self.latest, reversed(list(stages))) if os.path.isfile(path)), None)

    def kept(self, stage: int, epoch: int) -> str:
        """The weights-only checkpoint kept at ``epoch`` of ``stage`` (at its last epoch, a hard link of its
        ``latest``)."""
        return os.path.join(self.stage_dir(stage), f"model.pth.tar-{epoch}")

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def train_log(self) -> str:
        return os.path.join(self.root, "train.log")

    @property
    def results(self) -> str:
        return os.path.join(self.root, "results.json")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How each target is evaluated: the TEST keys (torchreid's ``Engine.test`` arguments), and what a stage's
    results depend on beside its weights (DATA.TARGETS and those keys)."""

    flip: bool
    normalize: bool
    metric: str
    rerank: bool
    cuhk03_metric: bool
    ranks: Tuple[int, ...]
    visrank: bool
    visrank_topk: int
    record: dict  # what a stage's results depend on beside its weights: recorded as the checkpoint's evaluated_with

    @classmethod
    def from_config(cls, cfg) -> "Evaluation":
        t = cfg.TEST
        # every TEST key but BATCH_SIZE: none is in the config hash, so they may change on a finished run, which is
        # then evaluated again
        test = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in t.items() if k != "BATCH_SIZE"}
        return cls(t.FLIP, t.NORMALIZE, t.METRIC, t.RERANK, t.CUHK03_METRIC, tuple(t.RANKS),
                   t.VISRANK, t.VISRANK_TOPK, {"TARGETS": list(cfg.DATA.TARGETS), "TEST": test})


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a training run does and where: resolved once from the config (:meth:`from_config`)."""

    layout: RunLayout
    stages: Tuple[int, ...]  # TRAIN.STAGES: the stages this invocation trains, in order
    epochs: Dict[int, int]  # stage (1-3) -> TRAIN.STAGE<n>.EPOCHS, run or not (the ETA and the global step read them)
    augmentations: Dict[int, Tuple[str, ...]]  # stage -> torchreid's names of its train augmentations
    init_weights: str  # TRAIN.INIT_WEIGHTS: the first later stage starts from it when the run folder has none
    seed: int
    print_freq: int  # steps between logging points (and the epoch's last step)
    nonfinite: str  # error | skip
    evaluation: Evaluation
    config_hash: str  # of the keys that change what is trained (config.hashed_config)
    config: dict  # those keys, recorded in every checkpoint

    @classmethod
    def from_config(cls, cfg) -> "RunPlan":
        t = cfg.TRAIN
        return cls(
            layout=RunLayout(cfg.OUTPUT_DIR),
            stages=tuple(t.STAGES),
            epochs={s: t[f"STAGE{s}"].EPOCHS for s in (1, 2, 3)},
            augmentations={s: tuple(train_augmentations(cfg, s)) for s in (1, 2, 3)},
            init_weights=t.INIT_WEIGHTS,
            seed=cfg.SEED,
            print_freq=t.PRINT_FREQ,
            nonfinite=t.NONFINITE,
            evaluation=Evaluation.from_config(cfg),
            config_hash=config_hash(cfg),
            config=hashed_config(cfg),
        )

    def finished(self, stage: int, epoch: int) -> bool:
        """True when ``epoch`` completed epochs finish ``stage``."""
        return epoch >= self.epochs[stage]
