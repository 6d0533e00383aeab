"""Files on disk, written atomically and read safely: JSON, checkpoints and their temp files.

Part of the bottom layer (with :mod:`.comm` and :mod:`.image_files`): it imports nothing of the package but its
errors.

Every file is written (or linked) to ``{path}.tmp.{pid}`` and renamed (:func:`atomic_path`), so a reader never
sees half a file and a failed write leaves the previous one; :func:`remove_stale_temp_files` deletes the temp
files of writers that died (kill -9) before the rename. A write that fails is one
:class:`~isgan_torchreid.errors.ISGANError` naming the file, the cause and what to do. Checkpoints load with
``torch.load(weights_only=True)`` (:func:`load_checkpoint`), safetensors files as well.
"""
import contextlib
import json
import math
import os
import re
import shutil

import numpy as np
import torch

from .errors import ISGANError

__all__ = ["FORMAT", "read_json", "write_json", "write_failure", "output_file", "atomic_path", "save_checkpoint",
           "link_checkpoint", "last_good_checkpoint", "remove_stale_temp_files", "numpy_safe_globals",
           "is_safetensors", "load_checkpoint"]

FORMAT = "isgan-torchreid/1"  # the tag save_checkpoint writes into every checkpoint
_TEMP_NAME = re.compile(r".+\.tmp\.(\d+)$")  # {path}.tmp.{pid}: the temp file of an atomic write


def read_json(path):
    """The JSON value stored at ``path``."""
    with open(path) as f:
        return json.load(f)


def _json_safe(value):
    """``value`` with non-finite floats (e.g. NaN ranks beyond a small gallery) as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path, data):
    """Write ``data`` as strict JSON (non-finite floats as null) atomically (temp file, then rename); a failed
    write is one ISGANError."""
    with output_file(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(_json_safe(data), f, indent=2, allow_nan=False)


def write_failure(path, error):
    """One line for a tool output that could not be written."""
    return (f"cannot write {path}: {error.strerror or error} (errno {error.errno}); nothing was written: choose a "
            f"writable location with free space (or fix the cause) and run again")


@contextlib.contextmanager
def output_file(path):
    """:func:`atomic_path` for a tool's output: an OSError while writing (a read-only or full file system, a
    missing permission) is one ISGANError, and nothing is left behind."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        raise ISGANError(write_failure(path, e)) from None


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A write that fails (a full disk, a quota, an I/O error) leaves the file already at ``path`` as it was, removes
    its temp file and raises one ISGANError naming the file, the space the state needs and the last good
    checkpoint of the folder.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(dict(state, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # torch's zip writer reports a failed write of the file as a RuntimeError ("unexpected pos ...") raised
        # while handling the OSError
        error = e if isinstance(e, OSError) else e.__context__
        if not isinstance(error, OSError):
            raise
        raise ISGANError(_write_failure(path, _nbytes(state), error)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def link_checkpoint(source, path):
    """Make ``path`` a second name of the checkpoint at ``source`` atomically (:func:`atomic_path`): a hard link
    made at the temp name, then renamed over ``path``, so the file data is stored once; where the file system has
    no hard links (or the file has too many), a copy in its place.

    ``path`` keeps its previous content until the rename; a failure (a full disk, a read-only folder) removes the
    temp file and raises one ISGANError as :func:`save_checkpoint` does.
    """
    try:
        with atomic_path(path) as tmp:
            with contextlib.suppress(FileNotFoundError):  # a dead writer's leftover of this pid: never write into it
                os.remove(tmp)
            try:
                os.link(source, tmp)
            except OSError:  # EPERM/ENOTSUP (no hard links: FAT, some network or FUSE file systems), EMLINK
                shutil.copyfile(source, tmp)
    except OSError as error:
        try:
            size = os.path.getsize(source)
        except OSError:
            size = 0
        raise ISGANError(_write_failure(path, size, error)) from None


def _nbytes(obj):
    """Bytes of the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _megabytes(n):
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:,.0f} KiB"


def last_good_checkpoint(folder):
    """The checkpoint a rerun would resume from in ``folder``: its latest.pth.tar, else its newest
    model.pth.tar-<epoch> (never a temp file); None when it holds neither."""
    try:
        names = [n for n in os.listdir(folder) if re.fullmatch(r"model\.pth\.tar-\d+", n)]
    except OSError:
        return None
    if os.path.isfile(os.path.join(folder, "latest.pth.tar")):
        return os.path.join(folder, "latest.pth.tar")
    return max((os.path.join(folder, n) for n in names), key=os.path.getmtime, default=None)


def _write_failure(path, nbytes, error):
    """One line: which file failed, why, the space it needs (``nbytes``: the state's tensors), the last good
    checkpoint."""
    folder = os.path.dirname(path) or "."
    try:
        free = f", {_megabytes(shutil.disk_usage(folder).free)} free there now"
    except OSError:
        free = ""
    last = last_good_checkpoint(folder)
    kept = f"the last good checkpoint, {last}, is intact" if last else f"no earlier checkpoint is in {folder}"
    return (f"cannot write checkpoint {path}: {error.strerror or error} (errno {error.errno}); it needs about "
            f"{_megabytes(nbytes)} of free space{free}; {kept}: free space (or fix the cause) and run "
            f"again to resume")


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
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would: some writers (safetensors) create files 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def numpy_safe_globals():
    """The numpy objects that torchreid's checkpoints legitimately contain."""
    core = getattr(np, "_core", None) or np.core
    types_ = [core.multiarray.scalar, np.dtype]
    types_ += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return types_


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
    if os.path.isdir(path):
        raise ISGANError(f"{path} is a folder, not a checkpoint; pass a file in it, e.g. "
                         f"{os.path.join(path, 'stage3', 'latest.pth.tar')} or a stage's encoder.safetensors")
    if not os.path.isfile(path):
        raise ISGANError(f"checkpoint not found: {path}; check the path (checkpoints live in OUTPUT_DIR/stage<n>/)")
    if is_safetensors(path):
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):  # torchreid's rank1: a numpy scalar
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle error, foreign object...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if os.path.basename(path) == "latest.pth.tar":  # a run's resume point
            advice = ("to resume from an older epoch, delete it and copy a model.pth.tar-<epoch> of the same folder "
                      "in its place, or delete it to start the stage again")
        else:
            advice = ("pass a checkpoint written by this project or torchreid (.pth.tar) or an "
                      "encoder.safetensors")
        raise ISGANError(f"checkpoint {path} is corrupt or not a weights-only checkpoint ({reason}); "
                         f"{advice}") from None
    if not isinstance(state, dict):
        raise ISGANError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state
