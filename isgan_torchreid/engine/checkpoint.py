"""Checkpoints: atomic save, safe (``weights_only``) load, partial weight loading, resume.

Layout under ``OUTPUT_DIR``::

    stage{n}/latest.pth.tar          every TRAIN.RESUME_FREQ epochs and at the end of the stage (atomic):
                                     everything needed to resume exactly
    stage{n}/model.pth.tar-{epoch}   every TRAIN.CHECKPOINT_FREQ epochs and at the end of the stage:
                                     weights only, written on their own (damage to ``latest`` spares them)

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``. The weights sit under ``state_dict``, where torchreid's
``load_pretrained_weights`` looks; ``stage``, ``epoch`` (epochs completed), ``config_hash``, ``num_classes``
and ``results`` describe them. ``latest`` adds ``optimizers`` (optimiser, scheduler and AMP scaler state per
optimiser). No RNG state is needed: the engine reseeds every epoch from SEED (and the rank), so a run resumed
at an epoch draws what the uninterrupted run drew, with any number of processes. Under torchrun, rank 0
writes the checkpoints; every process reads them.
"""
import json
import os

import torch

from .. import compat
from ..config import config_hash
from ..errors import ISGANError

FORMAT = "isgan-torchreid/1"


def stage_dir(output_dir, stage):
    """Folder of one stage's checkpoints."""
    return os.path.join(output_dir, f"stage{stage}")


def latest_path(output_dir, stage):
    """Path of the checkpoint written after every epoch of ``stage``."""
    return os.path.join(stage_dir(output_dir, stage), "latest.pth.tar")


def read_json(path):
    """The JSON value stored at ``path``."""
    with open(path) as f:
        return json.load(f)


def write_json(path, data):
    """Write ``data`` as JSON atomically (temp file in the same folder, then rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(state, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """Load a checkpoint safely (``weights_only=True``, onto the CPU); clear errors when unreadable."""
    if not os.path.isfile(path):
        raise ISGANError(f"checkpoint not found: {path}; check the path (checkpoints live in OUTPUT_DIR/stage<n>/)")
    try:
        with torch.serialization.safe_globals(compat.numpy_safe_globals()):  # torchreid's rank1: a numpy scalar
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, foreign object...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ISGANError(f"checkpoint {path} is corrupt or not a weights-only checkpoint ({reason}); "
                         f"to resume from an older epoch, copy a model.pth.tar-<epoch> of the same folder over "
                         f"it, or delete it to start the stage again") from None
    if not isinstance(state, dict):
        raise ISGANError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def model_state(state):
    """The model weights in a checkpoint: ours (``model``) or torchreid's (``state_dict``), or a bare state dict."""
    for key in ("state_dict", "model"):  # "model": files of version 0.1
        if isinstance(state.get(key), dict):
            return state[key]
    if all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise ISGANError("checkpoint holds no model weights (expected a 'state_dict' entry)")


def load_weights(model, weights, verbose=True):
    """Copy every tensor whose name and shape match; return the skipped names (e.g. other num_classes)."""
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
    own = model.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in weights if k not in matched)
    missing = sorted(k for k in own if k not in matched)
    model.load_state_dict(matched, strict=False)
    if verbose and (skipped or missing):
        print(f"=> loaded {len(matched)}/{len(own)} tensors; skipped {len(skipped)} "
              f"(shape/name mismatch, e.g. classifiers of another num_classes): {_short(skipped)}; "
              f"left at initialisation: {_short(missing)}")
    return skipped


def _short(names, n=6):
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n})" if len(names) > n else "") if names else "none"


# ------------------------------------------------------------------ the engine's state


def kept_path(output_dir, stage, epoch):
    """Path of the weights-only checkpoint kept at ``epoch`` of ``stage``."""
    return os.path.join(stage_dir(output_dir, stage), f"model.pth.tar-{epoch}")


def _weights_state(engine, epoch):
    stage = engine.stage
    finished = epoch >= engine.cfg.TRAIN[f"STAGE{stage}"].EPOCHS
    return {
        "stage": stage,
        "epoch": epoch,
        "state_dict": engine.model.state_dict(),
        "config_hash": config_hash(engine.cfg),
        "num_classes": engine.num_classes,
        "results": engine.results.get(stage, {}) if finished else {},
    }


def save_weights(engine, epoch):
    """Write the engine's weights alone as ``model.pth.tar-{epoch}`` of its stage."""
    save_checkpoint(_weights_state(engine, epoch), kept_path(engine.cfg.OUTPUT_DIR, engine.stage, epoch))


def save_training_state(engine, epoch):
    """Write everything needed to resume the engine's stage after ``epoch`` to its ``latest.pth.tar``."""
    state = _weights_state(engine, epoch)
    state["optimizers"] = {name: opt.state_dict() for name, opt in engine.optimizers.items()}
    save_checkpoint(state, latest_path(engine.cfg.OUTPUT_DIR, engine.stage))


def resume_or_initialize(engine, stage):
    """Resume ``stage`` from its ``latest``, or load the previous stage's weights; returns the epochs done.

    A later stage without a checkpoint starts from the previous stage of the objective's stages (2 for
    IS-GAN's stage 3, 1 for a baseline's) when finished, or, when OUTPUT_DIR has none, from
    TRAIN.INIT_WEIGHTS.
    """
    cfg = engine.cfg
    out = cfg.OUTPUT_DIR
    path = latest_path(out, stage)
    if os.path.isfile(path):
        state = load_checkpoint(path)
        if state.get("config_hash") != config_hash(cfg):
            raise ISGANError(f"{path} was written with a different config (hash {state.get('config_hash')} vs "
                             f"{config_hash(cfg)}); use a new OUTPUT_DIR, or delete {os.path.dirname(path)} "
                             f"to restart stage {stage}")
        engine.model.load_state_dict(model_state(state))
        if "optimizers" in state:
            for name, opt_state in state["optimizers"].items():
                engine.optimizers[name].load_state_dict(opt_state)
            print(f"=> resumed stage {stage} from {path} (epoch {state['epoch']})")
        else:  # a kept weights-only checkpoint copied over latest, as the corrupt-checkpoint error advises
            print(f"=> resumed stage {stage} from the weights in {path} (epoch {state['epoch']}); it holds no "
                  f"optimiser state, so that starts afresh")
        if state.get("results"):
            engine.results[stage] = state["results"]
        return state["epoch"]
    earlier = [s for s in engine.objective.stages if s < stage]
    if not earlier:
        return 0
    before = earlier[-1]
    prev = latest_path(out, before)
    source = prev if os.path.isfile(prev) else cfg.TRAIN.INIT_WEIGHTS
    if not source:
        raise ISGANError(f"stage {stage} starts from stage {before}'s weights, but {prev} does not exist; "
                         f"run stage {before} first (TRAIN.STAGES) or set TRAIN.INIT_WEIGHTS to a checkpoint")
    state = load_checkpoint(source)
    if source == prev and state["epoch"] < cfg.TRAIN[f"STAGE{before}"].EPOCHS:
        raise ISGANError(f"stage {before} is unfinished ({source} is at epoch {state['epoch']}); "
                         f"finish it first: add {before} to TRAIN.STAGES")
    load_weights(engine.model, model_state(state))
    print(f"=> stage {stage} initialised from {source}")
    return 0
