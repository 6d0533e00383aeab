"""Checkpoints: atomic save, safe (``weights_only``) load, partial weight loading, resume, the config of a run's
checkpoint.

Each stage writes, in its folder of the run (:class:`~.plan.RunLayout`)::

    stage{n}/latest.pth.tar          every TRAIN.RESUME_FREQ epochs and at the end of the stage (atomic):
                                     everything needed to resume exactly; at the end, weights and results only
    stage{n}/model.pth.tar-{epoch}   every TRAIN.CHECKPOINT_FREQ epochs: weights only, a file of its own
                                     (damage to ``latest`` spares it); at the end of the stage: ``latest``
                                     itself, a hard link to the same file data (a copy where the file system
                                     has no hard links), so a finished stage stores its weights once

A finished stage's ``latest`` and its last ``model.pth.tar-{epoch}`` are two names of one file: the engine
replaces a checkpoint (temp file, rename) and never writes into one, so writing ``latest`` again (a finished
stage evaluated again with other test settings, or trained longer) leaves the other name as it was, and then,
while the stage is finished, links it to the new ``latest``. A file copied over ``latest`` by hand (``cp``)
would be written into both: delete ``latest`` first. A kept checkpoint from an earlier epoch, or one that
became mid-stage when the stage's epochs were raised, keeps its own file.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``. The weights sit under ``state_dict``, where torchreid's
``load_pretrained_weights`` looks; ``stage``, ``epoch`` (epochs completed), ``config_hash`` and ``config``
(the keys it hashes), ``num_classes`` and ``results`` describe them. ``latest`` of an unfinished stage adds
``optimizers`` (optimiser, scheduler and AMP scaler state per optimiser). A finished stage's ``latest`` drops
them: with AMSGrad, Adam keeps three tensors per weight it trains (stage 3 of the tests' ResNet-18: 1.2 GB with
them, 0.3 GB without), and such a stage trains again only when its epochs are raised while it is the run's last
(:func:`check_resumable`), with fresh optimisers then. No RNG state is needed: the engine reseeds every epoch
from SEED (and the rank), so a run resumed at an epoch draws what the uninterrupted run drew, with any number
of processes. Under torchrun, rank 0 writes the checkpoints; every process reads them.

Every file is written (or linked) atomically by :mod:`isgan_torchreid.storage`, which also reads them.
"""
import os
import threading

import torch

from .. import storage
from ..config import config_changes, config_hash, load_config, trained_by
from ..errors import ISGANError
from .plan import RunLayout


def model_state(state):
    """The model weights in a checkpoint: ours (``model``) or torchreid's (``state_dict``), or a bare state dict."""
    for key in ("state_dict", "model"):  # "model": files of version 0.1
        if isinstance(state.get(key), dict):
            return state[key]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise ISGANError("checkpoint holds no model weights (expected a 'state_dict' entry)")


def unwrapped(weights):
    """A state dict without the ``module.`` prefixes of DataParallel/DDP checkpoints (torchreid's among them)."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}


def load_weights(model, weights, verbose=True):
    """Copy every tensor whose name and shape match; return the skipped names (e.g. other num_classes). The
    model's ``stage_start_state`` (name prefixes of what it sets as a stage starts, not from a file) is not
    reported as left at initialisation."""
    weights = unwrapped(weights)
    own = model.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in weights if k not in matched)
    set_at_start = tuple(getattr(model, "stage_start_state", ()))
    missing = sorted(k for k in own if k not in matched and not k.startswith(set_at_start))
    model.load_state_dict(matched, strict=False)
    if verbose and (skipped or missing):
        print(f"=> loaded {len(matched)}/{len(own)} tensors; skipped {len(skipped)} "
              f"(shape/name mismatch, e.g. classifiers of another num_classes): {_short(skipped)}; "
              f"left at initialisation: {_short(missing)}")
    return skipped


def _short(names, n=6):
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n})" if len(names) > n else "") if names else "none"


def run_config_path(weights):
    """``config.yaml`` of the run that wrote ``weights`` (its folder or the folder above), or None."""
    folder = os.path.dirname(os.path.abspath(weights))
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, "config.yaml")
        if os.path.isfile(path):
            return path
    return None


def checkpoint_config(weights, config_file=None, opts=()):
    """(config that built ``weights`` + ``opts``, the loaded checkpoint).

    The config is the run's ``config.yaml`` (beside the ``stage<n>/`` folders) when its hash is the
    checkpoint's, with OUTPUT_DIR the run's folder as it is now (the file names the folder it was trained in,
    which may since have moved) unless ``opts`` set it; else ``config_file`` (for a checkpoint outside its run
    folder, e.g. torchreid's). Otherwise one ISGANError saying to pass --config-file.
    """
    state = storage.load_checkpoint(weights)
    run = run_config_path(weights)
    trained = load_config(run) if run else None
    if run and (state.get("config_hash") is None or trained_by(state, trained)):
        return load_config(run, ["OUTPUT_DIR", os.path.dirname(run)] + list(opts)), state
    if config_file:
        return load_config(config_file, list(opts)), state
    if run:
        raise ISGANError(f"{run} did not train {weights} (config hash {config_hash(trained)} vs "
                         f"{state.get('config_hash')}); pass the config that trained it with --config-file")
    raise ISGANError(f"{weights} is not in a run folder with a config.yaml (OUTPUT_DIR/stage<n>/); pass the config "
                     f"that describes its architecture with --config-file")


# ------------------------------------------------------------------ the engine's state


def epoch_count(n):
    """'1 epoch', '3 epochs'."""
    return f"{n} epoch{'' if n == 1 else 's'}"


def weights_state(engine, epoch):
    stage, plan = engine.stage, engine.plan
    finished = plan.finished(stage, epoch)
    state = {
        "stage": stage,
        "epoch": epoch,
        "state_dict": engine.model.state_dict(),
        "config_hash": plan.config_hash,
        "config": plan.config,
        "num_classes": engine.num_classes,
        "results": engine.results.get(stage, {}) if finished else {},
    }
    if finished:
        state["evaluated_with"] = plan.evaluation.record
    state.update(engine.extra_state)
    return state


def write_weights(layout: RunLayout, state):
    """Write a weights-only ``state`` (:func:`weights_state`) as ``model.pth.tar-{epoch}`` of its stage, a file of
    its own: the snapshots every TRAIN.CHECKPOINT_FREQ epochs. A finished stage's is kept by
    :func:`write_training_state`."""
    storage.save_checkpoint(state, layout.kept(state["stage"], state["epoch"]))


def training_state(engine, epoch):
    """Everything needed to resume the engine's stage after ``epoch``: the weights, and the optimisers' state
    while the stage has epochs left (the live tensors: :func:`host_copy` before another thread writes it)."""
    state = weights_state(engine, epoch)
    if not engine.plan.finished(engine.stage, epoch):
        state["optimizers"] = {name: opt.state_dict() for name, opt in engine.optimizers.items()}
    return state


def write_training_state(layout: RunLayout, state):
    """Write ``state`` (:func:`training_state`) to its stage's ``latest.pth.tar``; a finished stage's (it holds no
    optimisers) also becomes ``model.pth.tar-{epoch}``, a hard link of it
    (:func:`~isgan_torchreid.storage.link_checkpoint`): a finished stage stores its weights once."""
    latest = layout.latest(state["stage"])
    storage.save_checkpoint(state, latest)
    if "optimizers" not in state:
        storage.link_checkpoint(latest, layout.kept(state["stage"], state["epoch"]))


def save_training_state(engine, epoch):
    """:func:`training_state` written now, on this thread."""
    write_training_state(engine.plan.layout, training_state(engine, epoch))


def host_copy(obj):
    """``obj`` (dicts, lists, tuples of tensors and plain values) with every tensor copied to host memory: a
    snapshot that training may run on from while another thread writes it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes checkpoints on one background thread, one at a time, while training goes on (issue 26: an fsync'd
    GB-sized write per epoch stalls a GPU that trains an epoch in seconds). Each write is still atomic
    (:func:`~isgan_torchreid.storage.save_checkpoint`). :meth:`submit` and :meth:`wait` first wait for the write
    in flight and raise its error (an ISGANError naming the file), so a failed write stops the run at the next
    checkpoint at the latest.
    The thread is not a daemon: a run that ends (or fails) meanwhile still finishes the write in flight."""

    def __init__(self):
        self._thread = None
        self._error = None

    def submit(self, write, *args) -> None:
        """Run ``write(*args)`` on the writer thread once the previous write has landed."""
        self.wait()

        def run():
            try:
                write(*args)
            except BaseException as e:  # noqa: B036 - handed to the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        """Return once no write is in flight; raise the error of the last one, if it failed."""
        error = self.join()
        if error is not None:
            raise error

    def join(self):
        """Return once no write is in flight, with the error of the last one (None if it landed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        return error


def resume_or_initialize(engine, stage):
    """Resume ``stage`` from its ``latest``, or load the previous stage's weights; returns the epochs done.

    A later stage without a checkpoint starts from the previous stage of the objective's stages (2 for
    IS-GAN's stage 3, 1 for a baseline's) when finished, or, when OUTPUT_DIR has none, from
    TRAIN.INIT_WEIGHTS.
    """
    plan = engine.plan
    path = plan.layout.latest(stage)
    if os.path.isfile(path):
        state = storage.load_checkpoint(path)
        check_resumable(plan, stage, state, path)
        _apply_resume_state(engine, state, path, stage)
        epoch = state["epoch"]
        finished = plan.finished(stage, epoch)
        if "optimizers" in state:
            print(f"=> resumed stage {stage} from {path} (epoch {epoch})")
        elif finished:
            print(f"=> stage {stage} finished in {path}")
        else:  # a finished stage's epochs raised, or a kept weights-only checkpoint copied over latest
            for opt in engine.optimizers.values():
                opt.skip_epochs(epoch)
            print(f"=> resumed stage {stage} from the weights in {path} (epoch {epoch}); it holds no optimiser "
                  f"state (a finished stage keeps none), so the optimisers start afresh, at the learning rate of "
                  f"epoch {epoch + 1} of the schedule")
        if finished and state.get("results") and state.get("evaluated_with") == plan.evaluation.record:
            engine.results[stage] = state["results"]  # else a finished stage is evaluated again
        return epoch
    before = _previous_stage(engine.objective.stages, stage)
    if before is None:
        return 0
    source = _start_source(plan, stage, before)
    state = storage.load_checkpoint(source)
    _check_finished(plan, state, source, before)
    load_weights(engine.model, model_state(state))
    print(f"=> stage {stage} initialised from {source}")
    return 0


def check_resume(plan):
    """Before a training run writes anything (its config.yaml first): :func:`check_resumable` for the
    ``latest.pth.tar`` of each stage the run trains (a :class:`~.plan.RunPlan`) in its folder."""
    for stage in plan.stages:
        path = plan.layout.latest(stage)
        if os.path.isfile(path):
            check_resumable(plan, stage, storage.load_checkpoint(path), path)


def check_resumable(plan, stage, state, path):
    """One ISGANError unless ``state`` (``stage``'s ``latest`` at ``path``) may go on under ``plan``.

    Every key of the config hash must be the checkpoint's (keys it lacks, from a later version, at their
    defaults: :func:`~isgan_torchreid.config.config_changes`); the error lists those that differ. The stage's
    TRAIN.STAGE<n>.EPOCHS may change but not below the epochs it has trained, and may exceed them (a finished
    stage trained longer) only while no later stage has a checkpoint: a later stage started from its weights as
    they are. Its learning-rate schedule (MultiStepLR milestones) does not depend on the epoch count, so a stage
    trained longer follows the schedule of a run configured so from the start.
    """
    if state.get("config_hash") != plan.config_hash:
        restart = f"train in a new OUTPUT_DIR (or delete {os.path.dirname(path)} to restart stage {stage})"
        recorded = state.get("config")
        if not isinstance(recorded, dict):
            raise ISGANError(f"{path} was trained with another config (config hash {state.get('config_hash')} vs "
                             f"{plan.config_hash}), by an earlier version of isgan-torchreid that does not record "
                             f"its keys; resume it with that version, or {restart}")
        changes = config_changes(recorded, plan.config)
        if changes:  # none: only keys a later version added, at their defaults
            shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
            raise ISGANError(f"{path} was trained with another config ({shown}); set these keys back to resume, "
                             f"or {restart}")
    trained = state.get("epoch")
    if not isinstance(trained, int):  # reported as it is loaded (_apply_resume_state)
        return
    key, epochs = f"TRAIN.STAGE{stage}.EPOCHS", plan.epochs[stage]
    if epochs < trained:
        raise ISGANError(f"{key} {epochs}: stage {stage} has already trained {epoch_count(trained)} ({path}); set "
                         f"{key} {trained} or more, or train in a new OUTPUT_DIR")
    later = [p for p in (plan.layout.latest(s) for s in (1, 2, 3) if s > stage) if os.path.isfile(p)]
    if epochs > trained and later:
        raise ISGANError(f"{key} {epochs}: stage {stage} finished after {epoch_count(trained)} and a later stage "
                         f"has started from it ({later[0]}); set {key} {trained}, or train stage {stage} longer in "
                         f"a new OUTPUT_DIR")


def _apply_resume_state(engine, state, path, stage):
    """Load a stage's ``latest`` into the engine's model and optimisers; one ISGANError (what does not fit, and
    advice that works) for a checkpoint of another version or an edited one."""
    own = engine.model.state_dict()
    try:
        weights = model_state(state)
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        reshaped = [k for k in own if k in weights and getattr(weights[k], "shape", None) != own[k].shape]
        problem = None
        if missing or unexpected or reshaped:
            problem = (f"{len(missing)} model tensors missing, {len(unexpected)} unexpected, {len(reshaped)} of "
                       f"another shape (e.g. {', '.join((missing + unexpected + reshaped)[:2])})")
        elif not isinstance(state.get("epoch"), int):
            problem = "no epoch count"
        elif set(state.get("optimizers", {})) - set(engine.optimizers):
            problem = f"optimisers {sorted(state['optimizers'])}, this stage has {sorted(engine.optimizers)}"
        if problem is None:
            engine.model.load_state_dict(weights)
            for name, opt_state in state.get("optimizers", {}).items():
                engine.optimizers[name].load_state_dict(opt_state)
    except (ISGANError, KeyError, ValueError, TypeError, RuntimeError) as e:
        problem = " ".join(str(e).split())[:200] or type(e).__name__
    if problem is not None:
        raise ISGANError(f"{path} cannot resume stage {stage} of this model ({problem}): it was written by another "
                         f"version of isgan-torchreid or changed since; delete it (or move it aside) to restart "
                         f"stage {stage}, or delete it and copy a model.pth.tar-<epoch> of the same folder in its "
                         f"place if one fits")


def _previous_stage(stages, stage):
    """The stage of ``stages`` whose weights ``stage`` starts from (2 for IS-GAN's stage 3, 1 for a baseline's),
    or None for the first."""
    earlier = [s for s in stages if s < stage]
    return earlier[-1] if earlier else None


def _start_source(plan, stage, before):
    """The checkpoint ``stage`` starts from without a checkpoint of its own: ``before``'s latest, else
    TRAIN.INIT_WEIGHTS."""
    prev = plan.layout.latest(before)
    source = prev if os.path.isfile(prev) else plan.init_weights
    if not source:
        raise ISGANError(f"stage {stage} starts from stage {before}'s weights, but {prev} does not exist; "
                         f"run stage {before} first (TRAIN.STAGES) or set TRAIN.INIT_WEIGHTS to a checkpoint")
    if not os.path.isfile(source):
        raise ISGANError(f"TRAIN.INIT_WEIGHTS {source} does not exist (stage {stage} would start from it); set it "
                         f"to a checkpoint file")
    return source


def _check_finished(plan, state, source, before):
    if source == plan.layout.latest(before) and not plan.finished(before, state["epoch"]):
        raise ISGANError(f"stage {before} is unfinished ({source} is at epoch {state['epoch']}); "
                         f"finish it first: add {before} to TRAIN.STAGES")


def check_stages(engine, stages):
    """Before any training: each of ``stages`` (in order) can start, from its own ``latest``, from the previous
    stage trained earlier in this run or finished in OUTPUT_DIR, or from TRAIN.INIT_WEIGHTS, so that a run does
    not stop with this error after training its first stages."""
    plan = engine.plan
    for i, stage in enumerate(stages):
        before = _previous_stage(engine.objective.stages, stage)
        if os.path.isfile(plan.layout.latest(stage)) or before is None or before in stages[:i]:
            continue
        source = _start_source(plan, stage, before)
        if i > 0 and source == plan.layout.latest(before):  # the first stage checks it as it starts
            _check_finished(plan, storage.load_checkpoint(source), source, before)
