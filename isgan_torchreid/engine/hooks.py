"""Per-stage, per-epoch and per-step actions of the staged engine (fast-reid's/detectron2's HookBase style).

The engine calls, for each stage it trains: ``before_stage``, then per epoch ``before_epoch``,
``after_step`` after every step and ``after_epoch``, then evaluates and calls ``after_stage``; at the end
of the run ``after_train``, and ``close`` however the run ends. A hook reads what it needs from
``self.engine`` (``plan``: the run's folder, schedule and settings, :class:`~.plan.RunPlan`; ``stage``,
``epoch``, ``max_epoch``, ``batch_idx``, ``num_batches``, ``summary``: the step's values on the device, to be
read at ``engine.at_logging_point()``, ``results``).

Under torchrun, a hook runs on rank 0 alone unless it sets ``main_process_only = False``: hooks write files
and print, which one process does for all (the engine puts a barrier after each stage, before the next one
reads the checkpoint rank 0 wrote).
"""
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from .. import storage
from . import checkpoint as ckpt
from .scalars import ScalarQueue

__all__ = ["HookBase", "Checkpointer", "ResultsWriter", "TensorBoardWriter", "ProgressPrinter", "EpochTimer",
           "default_hooks", "grouped"]


def grouped(summary, loss_groups):
    """A step's {term: value} -> {group: {term: value}} by ``loss_groups`` (the objective's); terms outside them
    fall in "other"."""
    groups = {}
    for name, value in summary.items():
        group = next((g for g, terms in loss_groups.items() if name in terms), "other")
        groups.setdefault(group, {})[name] = value
    return groups


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

    def close(self):
        """Once when the run ends, however it ends (an error, Ctrl-C): finish what is in flight."""


class Checkpointer(HookBase):
    """Resumable ``latest.pth.tar`` every ``resume_freq`` epochs, and at a stage's end its weights and results
    (:func:`~isgan_torchreid.engine.checkpoint.save_training_state`, which then keeps ``model.pth.tar-{epoch}`` as a
    hard link of it: one copy of the weights); weights-only ``model.pth.tar-{epoch}`` files of their own every
    ``keep_freq`` epochs before the end.

    The epochs' checkpoints are written by a :class:`~isgan_torchreid.engine.checkpoint.BackgroundWriter` from a
    host copy taken at the epoch's end, so the next epoch trains meanwhile; the stage's last one is written
    after the last write in flight has landed and before the stage ends, as the next stage starts from it. The
    stage's last epoch is thus written twice, on purpose: the first lets a run stopped during the stage's
    evaluation resume without training that epoch again."""

    def __init__(self, resume_freq: int, keep_freq: int):
        self.resume_freq = resume_freq
        self.keep_freq = keep_freq
        self.writer = ckpt.BackgroundWriter()

    def after_epoch(self):
        e = self.engine
        epoch, out = e.epoch + 1, e.plan.layout
        if epoch % self.resume_freq == 0 or epoch == e.max_epoch:
            self.writer.submit(ckpt.write_training_state, out, ckpt.host_copy(ckpt.training_state(e, epoch)))
        if epoch < e.max_epoch and epoch % self.keep_freq == 0:
            self.writer.submit(ckpt.write_weights, out, ckpt.host_copy(ckpt.weights_state(e, epoch)))

    def after_stage(self):
        e = self.engine
        self.writer.wait()
        ckpt.save_training_state(e, e.max_epoch)  # now with the stage's results, and kept as model.pth.tar-{epoch}

    def close(self):
        error = self.writer.join()  # a run that stopped in an epoch still gets the last epoch's checkpoint
        if error is not None:
            print(f"=> the checkpoint write in flight failed too: {error}")


class ResultsWriter(HookBase):
    """``OUTPUT_DIR/results.json`` (the layout's ``results``): {"stage<n>": {target: metrics}}, keeping stages of
    earlier invocations; with "skipped_images": {"count": n, "images": {"<dataset>/<split>": [paths]}} when this
    run left images out."""

    def after_train(self):
        e = self.engine
        path = e.plan.layout.results
        results = storage.read_json(path) if os.path.isfile(path) else {}
        results.update({f"stage{s}": r for s, r in e.results.items()})
        results.pop("skipped_images", None)  # an earlier invocation's, perhaps fixed since
        skipped = e.skipped_images
        if skipped:
            results["skipped_images"] = {"count": sum(map(len, skipped.values())), "images": skipped}
        storage.write_json(path, dict(sorted(results.items())))


class TensorBoardWriter(HookBase):
    """Each step's loss terms (not averaged) and learning rates, each stage's test metrics and the sample
    grids, in ``stage{n}/`` event files.

    The global step counts iterations over all stages of the objective ([1, 2, 3] for IS-GAN), whether or not
    this invocation runs them (``--stages 2 3`` after stage 1 continues its curve). A resumed stage opens its
    writer with ``purge_step`` at the first step it repeats, so TensorBoard drops the steps the interrupted
    session logged after its last checkpoint: every step appears once. Tags: ``loss_<group>/<term>`` and
    ``loss_<group>/total`` for the objective's loss groups; the diagnostics of :mod:`.diagnostics` under
    their own names (``gan/D_real``, ``eu/kl``, ``grad_G/L_S``...); ``train/<term>`` for the others (accuracy,
    the unweighted L1 of each fake set); ``train/lr``, ``train/lr_D``, ``test/<target>/<metric>``; at each
    sample grid, ``eval_L1/<set>`` (:class:`~isgan_torchreid.visualize.samples.SampleGrids`).
    """

    def before_stage(self):
        e = self.engine
        self.writer = SummaryWriter(log_dir=e.plan.layout.stage_dir(e.stage), purge_step=self.step())
        self.queue = ScalarQueue()  # the steps since the last logging point

    def step(self):
        """The global step of the engine's current iteration."""
        e = self.engine
        earlier = sum(e.plan.epochs[s] for s in e.objective.stages if s < e.stage)
        return (earlier + e.epoch) * e.num_batches + e.batch_idx

    def after_step(self):
        e = self.engine
        lrs = {f"train/{e.objective.lr_tags.get(name, f'lr_{name}')}": opt.optimizer.param_groups[0]["lr"]
               for name, opt in e.optimizers.items()}
        self.queue.add((self.step(), lrs), e.summary)
        if e.at_logging_point():
            self.flush()

    def flush(self):
        """Write the steps queued since the last logging point."""
        loss_groups = self.engine.objective.loss_groups
        for (step, lrs), summary in self.queue.drain():
            for group, terms in grouped(summary, loss_groups).items():
                prefix = f"loss_{group}" if group in loss_groups else "train"
                for name, value in terms.items():
                    self.writer.add_scalar(name if "/" in name else f"{prefix}/{name}", value, step)
                if group in loss_groups:
                    self.writer.add_scalar(f"{prefix}/total", sum(terms.values()), step)
            for tag, lr in lrs.items():
                self.writer.add_scalar(tag, lr, step)

    def add_scalar(self, tag, value):
        """A scalar at the current step."""
        self.writer.add_scalar(tag, value, self.step())

    def add_image(self, tag, pixels):
        """A picture, (H, W, 3) uint8 pixels, at the current step."""
        self.writer.add_image(tag, pixels, self.step(), dataformats="HWC")

    def after_stage(self):
        e = self.engine
        self.flush()
        for target, metrics in e.results.get(e.stage, {}).items():
            for name in ("rank1", "mAP"):
                self.writer.add_scalar(f"test/{target}/{name}", metrics[name], self.step())
        self.writer.close()


class ProgressPrinter(HookBase):
    """Every ``freq`` steps and at each epoch's end, one line of at most 120 columns::

        [s2 e3/8 20/24] 0.41s/it eta 0:00:12 run ~0:12:31 | gen 12.35 disc 1.234 D 0.62/0.31 KL 65.2 | lr 2.0e-04

    stage, epoch and step; seconds per step of this stage so far (data loading and checkpoints included);
    time left in the stage, and in the run: this stage plus the later stages the run trains, training steps
    only ('~': includes stages not run yet, see :meth:`estimate`); the objective's loss groups
    (each the sum of its terms), the accuracy of identity steps, and in stages 2-3 D's mean probability of
    "real" on real images / on fakes (D) and E_U's KL per image (:mod:`.diagnostics`), averaged over the steps
    since the last line. At each stage's end: its steps and training time.
    """

    SHOWN = {"acc": "acc", "gan/D_real": "Dr", "gan/D_fake": "Df", "eu/kl": "KL"}  # summary key -> label

    def __init__(self):
        self.per_step = {}  # stage -> measured seconds per step, in this process

    def before_stage(self):
        self.start = time.perf_counter()
        self.steps = 0
        self.loss_groups = self.engine.objective.loss_groups
        self.window = {name: (0.0, 0) for name in (*self.loss_groups, *self.SHOWN.values())}  # the line's order
        self.queue = ScalarQueue()  # the steps since the last line

    def after_step(self):
        e = self.engine
        self.steps += 1
        self.queue.add(None, e.summary)
        if not e.at_logging_point():
            return
        for _, summary in self.queue.drain():  # waits for the device: the time per step is then measured
            shown = {g: sum(terms.values()) for g, terms in grouped(summary, self.loss_groups).items()
                     if g in self.loss_groups}
            shown.update({label: summary[key] for key, label in self.SHOWN.items() if key in summary})
            for name, value in shown.items():
                total, n = self.window[name]
                self.window[name] = (total + value, n + 1)
        self.last = time.perf_counter()
        self.per_step[e.stage] = (self.last - self.start) / self.steps
        print(self.line())
        self.window = {name: (0.0, 0) for name in self.window}

    def estimate(self, stage):
        """Seconds per step of a stage not run yet: the sum of the measured steps of the stages its step is made
        of (the objective's ``summed_stages``: IS-GAN's stage 3 trains what stages 1 and 2 train); else the
        current stage's, scaled by the objective's ``stage_cost``."""
        e = self.engine
        parts = e.objective.summed_stages.get(stage, ())
        if parts and set(parts) <= set(self.per_step):
            return sum(self.per_step[s] for s in parts)
        cost = e.objective.stage_cost
        return self.per_step[e.stage] * cost.get(stage, 1.0) / cost.get(e.stage, 1.0)

    def seconds_left(self):
        """(seconds left in the stage, in the run, whether the run's includes estimated stages)."""
        e = self.engine
        stage_left = self.per_step[e.stage] * ((e.max_epoch - e.epoch) * e.num_batches - e.batch_idx - 1)
        later = [s for s in e.plan.stages if s > e.stage]
        run_left = stage_left + sum(self.estimate(s) * e.plan.epochs[s] * e.num_batches
                                    for s in later)
        return stage_left, run_left, bool(later)

    def line(self):
        e = self.engine
        per_step = self.per_step[e.stage]
        stage_left, run_left, estimated = self.seconds_left()
        mean = {g: t / n for g, (t, n) in self.window.items() if n}
        shown = [f"{g} {mean.pop(g):.4g}" for g in (*self.loss_groups, "acc") if g in mean]
        if "Dr" in mean and "Df" in mean:
            shown.append(f"D {mean['Dr']:.2f}/{mean['Df']:.2f}")
        if "KL" in mean:
            shown.append(f"KL {mean['KL']:.3g}")
        groups = " ".join(shown)
        lr = e.optimizers["model"].optimizer.param_groups[0]["lr"]
        return (f"[s{e.stage} e{e.epoch + 1}/{e.max_epoch} {e.batch_idx + 1}/{e.num_batches}] {per_step:.2f}s/it "
                f"eta {_clock(stage_left)} run {'~' if estimated else ''}{_clock(run_left)} | {groups} | "
                f"lr {lr:.1e}")

    def after_stage(self):
        if self.steps:  # a stage that trained in this process
            seconds = self.last - self.start
            print(f"=> stage {self.engine.stage}: {self.steps} steps in {_clock(seconds)} "
                  f"({seconds / self.steps:.2f}s/it, evaluation excluded)")


def _clock(seconds):
    """h:mm:ss, hours unbounded."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochTimer(HookBase):
    """Training images and seconds per stage (data loading included), accumulated across resumed sessions
    in ``path`` (JSON); stages without a checkpoint start their count afresh."""

    def __init__(self, path: str):
        self.path = path
        self.speed = storage.read_json(path) if os.path.isfile(path) else {}

    def before_stage(self):
        e = self.engine
        if not os.path.isfile(e.plan.layout.latest(e.stage)):
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
        storage.write_json(self.path, self.speed)


def default_hooks(cfg):
    """The engine's hooks of a training run: checkpoints, progress, TensorBoard, results.json (the tool layer adds
    its own, e.g. encoder files and sample grids: :func:`isgan_torchreid.cli.training_hooks`)."""
    t = cfg.TRAIN
    return [Checkpointer(t.RESUME_FREQ, t.CHECKPOINT_FREQ), ProgressPrinter(), TensorBoardWriter(), ResultsWriter()]
