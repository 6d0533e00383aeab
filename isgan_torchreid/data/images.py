"""Unreadable images never hang or crash a run: found before training, then skipped (reported) or fatal.

torchreid's ``read_image`` retries forever on an ``IOError``, so one corrupt, zero-byte or truncated JPEG hangs
training. Two guards replace it:

* **Before training**, :class:`ImageCheck` decodes every image of the splits a run uses (the same full decode a
  batch does, so a truncated JPEG that passes a header check is caught too), in threads, and remembers the
  result per folder (``<DATA.ROOT>/.isgan-image-checks/``, one entry per file keyed by its size and mtime, so a
  second run checks only new or changed files). Each unreadable image is reported once by path; with
  ``DATA.ON_BAD_IMAGE skip`` it is left out of its split (and counted), with ``error`` the run stops before
  training. A split left empty is reported by folder.
* **At load time**, :func:`isgan_torchreid.image_files.read_image` (torchreid's ``read_image`` is replaced by it,
  see :mod:`..compat`) retries an I/O error twice, then raises :class:`~isgan_torchreid.errors.BadImageError`
  instead of looping; with ``DATA.ON_BAD_IMAGE skip``, :class:`ReplacingUnreadable` then reads another image of
  the same identity (an image that broke after the check, e.g. a disk fault during a long run).
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import PIL
import torch

from .. import image_files
from ..console import progress
from ..errors import BadImageError, ISGANError
from ..storage import write_json

_SPLITS = ("train", "query", "gallery")


# ---------------------------------------------------------------------------- the check before training


class CheckCache:
    """Results of :func:`~isgan_torchreid.image_files.unreadable` per folder, in
    ``folder_cache/<hash of the folder path>.json``.

    An entry is reused while the file's size and mtime are unchanged (and for the same Pillow version). A
    folder that cannot be written (read-only DATA.ROOT) only costs a re-check next time.
    """

    def __init__(self, directory):
        self.directory = directory
        self.unwritable = None  # the OSError met when writing, reported once

    def _path(self, folder):
        return os.path.join(self.directory, hashlib.sha1(folder.encode()).hexdigest()[:16] + ".json")

    def load(self, folder):
        """{file name: [size, mtime_ns, reason or None]} recorded for ``folder`` (empty when none)."""
        try:
            with open(self._path(folder)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if data.get("folder") != folder or data.get("pillow") != PIL.__version__:
            return {}
        return data.get("files", {})

    def save(self, folder, files):
        try:
            os.makedirs(self.directory, exist_ok=True)
            write_json(self._path(folder), {"folder": folder, "pillow": PIL.__version__, "files": files})
        except OSError as e:
            if self.unwritable is None:
                self.unwritable = e
                print(f"=> note: image checks cannot be cached in {self.directory} ({e.strerror}); "
                      f"they run again next time")


def check_images(paths, cache=None, threads=None, desc="checking images"):
    """{path: reason} for each of ``paths`` that cannot be decoded; decodes run in ``threads`` threads (PIL
    releases the GIL while decoding) and only for files the ``cache`` has no current result for, with their
    progress shown as ``desc`` (:func:`~isgan_torchreid.console.progress`)."""
    by_folder = {}
    for path in paths:
        by_folder.setdefault(os.path.dirname(path), []).append(path)
    bad, todo, records = {}, [], {}
    for folder, folder_paths in by_folder.items():
        records[folder] = cache.load(folder) if cache else {}
        for path in folder_paths:
            try:
                st = os.stat(path)
            except OSError as e:
                bad[path] = image_files.failure_reason(e, path)
                continue
            entry = records[folder].get(os.path.basename(path))
            if entry and entry[:2] == [st.st_size, st.st_mtime_ns]:
                if entry[2]:
                    bad[path] = entry[2]
            else:
                todo.append((path, st))
    if todo:
        workers = threads or min(32, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            # in order, as they finish
            decoded = pool.map(image_files.unreadable, [path for path, _ in todo], chunksize=16)
            reasons = list(progress(decoded, total=len(todo), desc=desc, unit="img"))
        for (path, st), reason in zip(todo, reasons):
            records[os.path.dirname(path)][os.path.basename(path)] = [st.st_size, st.st_mtime_ns, reason]
            if reason:
                bad[path] = reason
        if cache:
            for folder in {os.path.dirname(path) for path, _ in todo}:
                cache.save(folder, records[folder])
    return bad


class ImageCheck:
    """Checks the split lists of every torchreid image dataset as it is built (see
    :func:`isgan_torchreid.compat.checking_image_datasets`): each split non-empty, the images of the splits the
    dataset is built for (train, or query and gallery) decodable, and at least one query with a true match in
    the gallery. Unreadable images are reported once by path, then left out (``policy`` "skip", recorded in
    :attr:`skipped` as {"<dataset>/<split>": [paths]}) or fatal (``policy`` "error")."""

    def __init__(self, policy, cache=None):
        self.policy = policy
        self.cache = cache
        self.skipped = {}
        self.known = {}  # path -> reason (None: readable), for paths checked in this process

    def __call__(self, name, mode, splits, folders):
        """``splits``: {"train"/"query"/"gallery": [(path, pid, camid, ...)]}; ``folders``: where each split was
        read from (None when the dataset does not say). Returns the splits with unreadable images left out."""
        for split in _SPLITS:
            if not splits[split]:
                raise ISGANError(f"dataset {name}: {self._where(split, folders)} holds no images (its {split} split "
                                 f"is empty); put the images there, or remove {name} from DATA.SOURCES/DATA.TARGETS")
        for split in (("train",) if mode == "train" else ("query", "gallery")):
            splits[split] = self._filter(name, split, splits[split], folders)
        if mode == "query":
            _check_true_matches(name, splits, folders)
        return splits

    @staticmethod
    def _where(split, folders):
        return folders.get(split) or f"the {split} split"

    def _filter(self, name, split, items, folders):
        paths = [item[0] for item in items]
        unknown = [p for p in paths if p not in self.known]
        if unknown:
            bad = check_images(unknown, self.cache, desc=f"checking {name} {split} images")
            for path in unknown:
                self.known[path] = bad.get(path)
                if path in bad:
                    print(f"=> unreadable image: {path} ({bad[path]})")
        bad = [p for p in paths if self.known[p]]
        if not bad:
            return items
        where = self._where(split, folders)
        if self.policy == "error":
            raise ISGANError(f"{len(bad)} unreadable image(s) in {where} of {name}, e.g. {bad[0]} "
                             f"({self.known[bad[0]]}); replace or delete them, or set DATA.ON_BAD_IMAGE skip to "
                             f"leave them out")
        kept = [item for item in items if not self.known[item[0]]]
        if not kept:
            raise ISGANError(f"dataset {name}: all {len(items)} images in {where} are unreadable; replace them")
        self.skipped.setdefault(f"{name}/{split}", [])
        self.skipped[f"{name}/{split}"] += [p for p in bad if p not in self.skipped[f"{name}/{split}"]]
        return _relabel(kept) if split == "train" else kept


def _relabel(items):
    """Training labels 0..n-1 again after images were left out (an identity may have lost all of its)."""
    labels = sorted({item[1] for item in items})
    if labels == list(range(len(labels))):
        return items
    new = {old: i for i, old in enumerate(labels)}
    return [(item[0], new[item[1]], *item[2:]) for item in items]


def _check_true_matches(name, splits, folders):
    """At least one query has a gallery image of its identity from another camera (the evaluation protocol
    discards same-camera matches); otherwise evaluation would fail after training."""
    gallery = {}
    for item in splits["gallery"]:
        gallery.setdefault(item[1], set()).add(item[2])
    if not any(gallery.get(pid, set()) - {camid} for _, pid, camid, *_ in splits["query"]):
        raise ISGANError(f"dataset {name}: no query image in {folders.get('query') or 'the query split'} has a "
                         f"gallery image of its identity from another camera in "
                         f"{folders.get('gallery') or 'the gallery split'}, so evaluation has nothing to rank; "
                         f"check the file names (person id and camera) of both")


# ---------------------------------------------------------------------------- at load time


class ReplacingUnreadable(torch.utils.data.Dataset):
    """torchreid's training dataset, whose image that fails to load is replaced by the next image of the same
    identity that loads (each image reported once per process: the trainer, or each loader worker); when none
    of the identity's images loads any more, one BadImageError. ``transform`` is the dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.train = dataset.train  # the (path, pid, camid, ...) items, as torchreid's dataset has them
        self.replaced = set()  # the paths that failed to load

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, transform):
        self.dataset.transform = transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        path, pid = self.train[index][:2]
        candidates = [index] + [i for i in list(range(index + 1, len(self.train))) + list(range(index))
                                if self.train[i][1] == pid]
        for i in candidates:
            if self.train[i][0] in self.replaced:
                continue
            try:
                return self.dataset[i]
            except BadImageError:
                self.replaced.add(self.train[i][0])
                note = f"; using other images of identity {pid} instead" if i == index else ""
                print(f"=> unreadable image at load time: {self.train[i][0]}{note}", flush=True)
        raise BadImageError(f"no image of training identity {pid} can be read any more (e.g. {path}); replace them "
                            f"and run again")
