"""Per-stage, per-epoch and per-step actions of the staged engine (fast-reid's/detectron2's HookBase style).

The engine calls, for each stage it trains: ``before_stage``, then per epoch ``before_epoch``,
``after_step`` after every step and ``after_epoch``, then evaluates and calls ``after_stage``; at the end
of the run ``after_train``. A hook reads what it needs from ``self.engine`` (``cfg``, ``stage``,
``epoch``, ``max_epoch``, ``batch_idx``, ``num_batches``, ``summary``, ``results``).

Under torchrun, a hook runs on rank 0 alone unless it sets ``main_process_only = False``: hooks write files
and print, which one process does for all (the engine puts a barrier after each stage, before the next one
reads the checkpoint rank 0 wrote).
"""
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from .. import compat
from ..data.build import IMAGENET_MEAN, IMAGENET_STD
from ..visualize import denormalize, save_grid
from . import checkpoint as ckpt
from .objective import ISGANObjective

__all__ = ["HookBase", "Checkpointer", "SampleGrids", "ResultsWriter", "TensorBoardWriter", "ProgressPrinter",
           "EpochTimer", "default_hooks"]


class HookBase:
    """Does nothing; subclasses override the moments they act at. ``engine`` is set when registered."""

    engine = None
    main_process_only = True  # under torchrun: registered on rank 0 only

    def before_stage(self):
        pass

    def before_epoch(self):
        pass

    def after_step(self):
        pass

    def after_epoch(self):
        pass

    def after_stage(self):
        pass

    def after_train(self):
        pass


class Checkpointer(HookBase):
    """Resumable ``latest.pth.tar`` every ``resume_freq`` epochs and at a stage's end (then with its results);
    weights-only ``model.pth.tar-{epoch}`` every ``keep_freq`` epochs and at the end."""

    def __init__(self, resume_freq: int, keep_freq: int):
        self.resume_freq = resume_freq
        self.keep_freq = keep_freq

    def after_epoch(self):
        e = self.engine
        epoch = e.epoch + 1
        if epoch % self.resume_freq == 0 or epoch == e.max_epoch:
            ckpt.save_training_state(e, epoch)
        if epoch < e.max_epoch and epoch % self.keep_freq == 0:
            ckpt.save_weights(e, epoch)

    def after_stage(self):
        e = self.engine
        ckpt.save_training_state(e, e.max_epoch)  # now with the stage's results
        ckpt.save_weights(e, e.max_epoch)


class SampleGrids(HookBase):
    """In stages 2-3, a grid of real | auto-encoded | identity-shuffled | part-shuffled images every ``freq``
    epochs (0: only at the end) in ``stage{n}/samples/epoch{e}.png``; RNG-neutral, so resume stays exact."""

    def __init__(self, freq: int, num_ids: int = 4):
        self.freq = freq
        self.num_ids = num_ids

    def after_epoch(self):
        e = self.engine
        epoch = e.epoch + 1
        if e.stage == 1 or not isinstance(e.objective, ISGANObjective):
            return
        if epoch == e.max_epoch or (self.freq and epoch % self.freq == 0):
            path = os.path.join(ckpt.stage_dir(e.cfg.OUTPUT_DIR, e.stage), "samples", f"epoch{epoch:03d}.png")
            self.save(path)

    def _batch(self):
        """Two images of each of the first ``num_ids`` identities with two or more (normalised, (n, 3, H, W))."""
        e = self.engine
        train = e.train_loader.dataset.train
        by_pid = {}
        for index, item in enumerate(train):
            by_pid.setdefault(item[1], []).append(index)
        picks = [i for idx in list(by_pid.values())[:self.num_ids] if len(idx) > 1 for i in idx[:2]]
        read = compat.torchreid_base().utils.read_image
        imgs = torch.stack([e.datamanager.transform_te(read(train[i][0])) for i in picks]) if picks else None
        return imgs, torch.tensor([train[i][1] for i in picks])

    @torch.no_grad()
    def save(self, path):
        e = self.engine
        imgs, pids = self._batch()
        if imgs is None:
            return
        imgs, pids = imgs.to(e.device), pids.to(e.device)
        model = e.model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[e.device] if e.device.type == "cuda" else []):
            torch.manual_seed(e.cfg.SEED)
            gen = e.objective.generate(imgs, pids, e.stage, net=e.model)  # the plain model: rank 0 alone runs this
        model.train(was_training)
        if was_training:
            e.apply_stage_policy()
        columns = [denormalize(imgs, IMAGENET_MEAN, IMAGENET_STD)]
        columns += [e.objective.image_to_unit(f) for f in gen.fakes.chunk(len(gen.sets))]
        save_grid(path, [c.cpu() for c in columns], titles=["real"] + gen.sets)


class ResultsWriter(HookBase):
    """``OUTPUT_DIR/results.json``: {"stage<n>": {target: metrics}}, keeping stages of earlier invocations."""

    def after_train(self):
        e = self.engine
        path = os.path.join(e.cfg.OUTPUT_DIR, "results.json")
        results = ckpt.read_json(path) if os.path.isfile(path) else {}
        results.update({f"stage{s}": r for s, r in e.results.items()})
        ckpt.write_json(path, dict(sorted(results.items())))


class TensorBoardWriter(HookBase):
    """Each step's loss terms and learning rate, and each stage's test metrics, in ``stage{n}/`` event files.

    The step counts iterations over the whole run (stages in order), so curves of consecutive stages join;
    a resumed stage purges the steps it will repeat.
    """

    def before_stage(self):
        e = self.engine
        self.writer = SummaryWriter(log_dir=ckpt.stage_dir(e.cfg.OUTPUT_DIR, e.stage), purge_step=self._step())

    def _step(self):
        e = self.engine
        earlier = sum(e.cfg.TRAIN[f"STAGE{s}"].EPOCHS for s in e.cfg.TRAIN.STAGES if s < e.stage)
        return (earlier + e.epoch) * e.num_batches + e.batch_idx

    def after_step(self):
        e = self.engine
        step = self._step()
        for name, value in e.summary.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", e.optimizers["model"].optimizer.param_groups[0]["lr"], step)

    def after_stage(self):
        e = self.engine
        for target, metrics in e.results.get(e.stage, {}).items():
            for name in ("rank1", "mAP"):
                self.writer.add_scalar(f"test/{target}/{name}", metrics[name], self._step())
        self.writer.close()


class ProgressPrinter(HookBase):
    """A line every ``freq`` steps: stage, epoch, step, seconds per step, ETA of the stage, losses, lr."""

    def __init__(self, freq: int):
        self.freq = freq

    def before_epoch(self):
        self.start = time.perf_counter()

    def after_step(self):
        e = self.engine
        step = e.batch_idx + 1
        if step % self.freq and step != e.num_batches:
            return
        per_step = (time.perf_counter() - self.start) / step
        left = (e.max_epoch - e.epoch - 1) * e.num_batches + e.num_batches - step
        losses = " ".join(f"{k} {v:.3f}" for k, v in e.summary.items())
        lr = e.optimizers["model"].optimizer.param_groups[0]["lr"]
        print(f"stage {e.stage} epoch [{e.epoch + 1}/{e.max_epoch}][{step}/{e.num_batches}] {per_step:.2f}s/it "
              f"eta {time.strftime('%H:%M:%S', time.gmtime(per_step * left))} | {losses} | lr {lr:.2e}")


class EpochTimer(HookBase):
    """Training images and seconds per stage (data loading included), accumulated across resumed sessions
    in ``path`` (JSON); stages without a checkpoint start their count afresh."""

    def __init__(self, path: str):
        self.path = path
        self.speed = ckpt.read_json(path) if os.path.isfile(path) else {}

    def before_stage(self):
        e = self.engine
        if not os.path.isfile(ckpt.latest_path(e.cfg.OUTPUT_DIR, e.stage)):
            self.speed.pop(str(e.stage), None)

    def before_epoch(self):
        self.images = 0
        self.start = time.perf_counter()

    def after_step(self):
        self.images += self.engine.batch_size

    def after_epoch(self):
        e = self.engine
        if e.device.type == "cuda":
            torch.cuda.synchronize(e.device)
        entry = self.speed.setdefault(str(e.stage), {"images": 0, "seconds": 0.0})
        entry["images"] += self.images
        entry["seconds"] += time.perf_counter() - self.start
        ckpt.write_json(self.path, self.speed)


def default_hooks(cfg):
    """The hooks of a training run: checkpoints, sample grids, progress, TensorBoard, results.json."""
    t = cfg.TRAIN
    return [Checkpointer(t.RESUME_FREQ, t.CHECKPOINT_FREQ), SampleGrids(t.SAMPLE_FREQ), ProgressPrinter(t.PRINT_FREQ),
            TensorBoardWriter(), ResultsWriter()]
