"""Checkpoints: atomic save, safe (``weights_only``) load, partial weight loading, RNG state.

Layout under ``OUTPUT_DIR``::

    stage{n}/latest.pth.tar          after every epoch (overwritten atomically), and after evaluation
    stage{n}/model.pth.tar-{epoch}   every TRAIN.CHECKPOINT_FREQ epochs and at the end of the stage
                                     (hard links of ``latest`` at that time: no second write)

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``: the model's weights under ``state_dict`` (the key torchreid's
``load_pretrained_weights`` and ``FeatureExtractor`` read), optimizer/scheduler state dicts,
``stage``, ``epoch`` (epochs completed), ``config_hash``, ``num_classes``, ``results`` and ``rng``.

Every file is written to ``{path}.tmp.{pid}`` and renamed; :func:`remove_stale_temp_files` deletes
the temp files of writers that died (kill -9) before the rename.
"""
import contextlib
import json
import os
import random
import re
import shutil

import numpy as np
import torch

from .. import compat
from ..errors import ISGANError

FORMAT = "isgan-torchreid/1"
_TEMP_NAME = re.compile(r".+\.tmp\.(\d+)$")  # {path}.tmp.{pid}: the temp file of an atomic write


def stage_dir(output_dir, stage):
    """Folder of one stage's checkpoints."""
    return os.path.join(output_dir, f"stage{stage}")


def latest_path(output_dir, stage):
    """Path of the checkpoint written after every epoch of ``stage``."""
    return os.path.join(stage_dir(output_dir, stage), "latest.pth.tar")


def keep_epoch(output_dir, stage, epoch):
    """Keep the current ``latest`` of ``stage`` as ``model.pth.tar-{epoch}`` (a hard link, no second write)."""
    kept = os.path.join(stage_dir(output_dir, stage), f"model.pth.tar-{epoch}")
    link_checkpoint(latest_path(output_dir, stage), kept)


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


def link_checkpoint(src, dst):
    """Make ``dst`` hold what ``src`` holds now, atomically, without writing it again (hard link, else copy).

    ``src`` is later replaced by a rename, which leaves the linked ``dst`` unchanged.
    """
    tmp = f"{dst}.tmp.{os.getpid()}"
    try:
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside ``path`` to write to; then fsync it and rename it to ``path``.

    On any error (or interruption) the temp file is removed and ``path`` keeps its previous content.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temp_files(folder):
    """Delete ``*.tmp.<pid>`` files under ``folder`` whose writer process is gone; return their paths.

    A writer killed between creating its temp file and the rename (kill -9, power loss) leaves the
    previous file intact and this temp file behind. Temp files of live processes (a concurrent writer,
    this process) are kept.
    """
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            match = _TEMP_NAME.match(name)
            if match and not _process_alive(int(match.group(1))):
                path = os.path.join(root, name)
                try:
                    os.remove(path)
                except FileNotFoundError:  # removed meanwhile by another cleaner
                    continue
                removed.append(path)
    return sorted(removed)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_safetensors(path):
    """True when ``path`` starts like a safetensors file: an 8-byte little-endian header length, then '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        return {"state_dict": load_file(path), "metadata": metadata}
    except (SafetensorError, OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ISGANError(f"weights file {path} is a corrupt safetensors file ({reason}); write it again, or load "
                         f"the stage's latest.pth.tar / model.pth.tar-<epoch> instead") from None


def load_checkpoint(path):
    """Load a checkpoint safely (``weights_only=True``, onto the CPU); clear errors when unreadable.

    A safetensors file (an encoder file, see :mod:`isgan_torchreid.deploy`) loads as
    ``{'state_dict': tensors, 'metadata': its string metadata}``.
    """
    if not os.path.isfile(path):
        raise ISGANError(f"checkpoint not found: {path}; check the path (checkpoints live in OUTPUT_DIR/stage<n>/)")
    if is_safetensors(path):
        return _load_safetensors(path)
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
    """The model weights in a checkpoint: ``state_dict`` (ours and torchreid's), ``model`` (ours before
    the torchreid-compatible format), or a bare state dict; ``module.`` prefixes are kept (see load_weights)."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise ISGANError("checkpoint holds no model weights (expected a 'state_dict' or 'model' entry)")


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


def rng_state():
    """Python, numpy and torch RNG states as weights-only-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
