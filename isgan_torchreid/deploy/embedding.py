"""Embedding images with the evaluated descriptor, in memory (:func:`embed`) or streamed to disk (:func:`extract`).

Images go through torchreid's test transform (resize to the spec's size, to tensor, normalise), and
the descriptor is :func:`isgan_torchreid.engine.evaluation.descriptor`: the one ``tools/test.py`` evaluates.

:func:`extract` writes an ``.npz`` (uncompressed features, deflated path lists) with

==========  ===========================================================================
paths       (N,) str: the images embedded, in input order (unreadable ones left out)
features    (N, D) float32: their descriptors
pids        (N,) int64, only when every name follows Market naming (``0002_c1s1_000451_03.jpg``)
camids      (N,) int64, likewise; 0-based as in torchreid (``c1`` -> 0)
bad_paths   (M,) str: the images that could not be read, skipped
spec        () str: the encoder spec as JSON, with the flip/normalize settings used
==========  ===========================================================================

Features are written to disk batch by batch and copied into the archive at the end, so memory holds
one batch of images and features whatever the number of images (plus the list of paths).
"""
import json
import os
import re
import zipfile

import numpy as np
import torch
from PIL import Image

from .. import compat, console, image_files, storage
from ..engine.evaluation import descriptor
from ..errors import ISGANError

__all__ = ["IMAGE_EXTENSIONS", "test_transform", "read_image", "image_tensor", "embed", "list_images", "market_labels",
           "extract"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")  # torchreid's Market-1501 parser: pid, camera (1-based)
_COPY_BYTES = 16 * 2 ** 20  # chunk size when copying the features into the archive
_PATHS_PER_CHUNK = 65536


def test_transform(spec):
    """torchreid's test transform for the spec's input size and normalisation."""
    return compat.test_transform(spec["height"], spec["width"], spec["mean"], spec["std"])


def read_image(path):
    """An RGB PIL image, decoded now as training and evaluation decode it (EXIF orientation, 16-bit grey: see
    :func:`~isgan_torchreid.image_files.to_rgb`); raises OSError/ValueError for unreadable files (no retry)."""
    return image_files.decode(path)


def image_tensor(image, transform):
    """One image as :func:`embed` takes it (a path, a PIL image or an (H, W, 3) uint8 array) through
    ``transform``; an unreadable path is one ISGANError."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = read_image(image)
        except (OSError, ValueError) as e:
            raise ISGANError(f"cannot read image {image} ({e}); fix or remove it (tools/extract.py skips "
                             f"unreadable images)") from None
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)  # (H, W, 3) uint8 RGB
    elif isinstance(image, Image.Image):
        image = image_files.to_rgb(image)
    else:
        raise TypeError(f"embed: expected image paths, PIL images or (H, W, 3) uint8 arrays, "
                        f"got {type(image).__name__}")
    return transform(image)


@torch.no_grad()
def embed(encoder, images, batch_size=64, flip=None, normalize=None):
    """(N, D) float32 CPU descriptors of ``images`` with ``encoder`` (from :func:`load_encoder`).

    ``images``: a list of paths, PIL images or (H, W, 3) uint8 RGB arrays, which go through torchreid's
    test transform at the encoder's input size; or a (N, 3, H, W) float tensor already transformed.
    ``flip``, ``normalize``: default the encoder spec's (TEST.FLIP, TEST.NORMALIZE of its run), so that by
    default this is the descriptor tools/test.py evaluates (f(x) + f(hflip(x)), L2-normalised, for the default
    settings).
    """
    spec = getattr(encoder, "spec", {})
    flip = spec.get("flip", True) if flip is None else flip
    normalize = spec.get("normalize", True) if normalize is None else normalize
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    transform = None if isinstance(images, torch.Tensor) else test_transform(encoder.spec)
    feats = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if transform is not None:
                batch = torch.stack([image_tensor(image, transform) for image in batch])  # (B, 3, H, W)
            feats.append(descriptor(encoder, batch.to(device), flip, normalize).float().cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        return torch.empty(0, encoder.descriptor_dim)
    return torch.cat(feats)


def list_images(source):
    """Image paths of a folder (recursively, sorted) or of a list file (one path per line, relative
    paths taken from the list file's folder; blank lines and lines starting with # ignored)."""
    if os.path.isdir(source):
        paths = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise ISGANError(f"no images under {source} (looked for {', '.join(IMAGE_EXTENSIONS)}); pass the folder "
                             f"that holds them, or a text file listing one path per line")
        return paths
    if os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source) as f:
            lines = [line.strip() for line in f]
        paths = [os.path.join(base, line) for line in lines if line and not line.startswith("#")]
        if not paths:
            raise ISGANError(f"the image list {source} names no image; write one path per line")
        return paths
    raise ISGANError(f"--images {source} is neither a folder nor a list file; pass a folder of images or a text "
                     f"file with one path per line")


def market_labels(paths):
    """(pids, camids) int64 arrays when every file name follows Market naming, else None."""
    pids, camids = [], []
    for path in paths:
        match = _MARKET_NAME.match(os.path.basename(path))
        if not match:
            return None
        pids.append(int(match.group(1)))
        camids.append(int(match.group(2)) - 1)  # torchreid's camids start at 0
    return np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)


class _ImageFiles(torch.utils.data.Dataset):
    """(index, transformed image or zeros, error message or '') for each path: never raises on a bad file."""

    def __init__(self, paths, transform, height, width):
        self.paths, self.transform, self.shape = paths, transform, (3, height, width)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            return index, self.transform(read_image(self.paths[index])), ""
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            return index, torch.zeros(self.shape), f"{type(e).__name__}: {e}"


def _write_npy_member(archive, name, dtype, shape, chunks, compress=False):
    """Stream an .npy member into a zip: header for (dtype, shape), then the raw bytes of ``chunks``."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with archive.open(info, "w", force_zip64=True) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        for chunk in chunks:
            f.write(chunk)


def _string_chunks(strings, width):
    for start in range(0, len(strings), _PATHS_PER_CHUNK):
        yield np.asarray(strings[start:start + _PATHS_PER_CHUNK], dtype=f"<U{width}").tobytes()


def _file_chunks(path):
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_BYTES):
            yield chunk


def _write_strings(archive, name, strings):
    width = max((len(s) for s in strings), default=1)
    _write_npy_member(archive, name, f"<U{width}", (len(strings),), _string_chunks(strings, width), compress=True)


@torch.no_grad()
def extract(encoder, paths, out, batch_size=64, workers=0, flip=True, normalize=True, progress=True):
    """Embed ``paths`` batch by batch into the archive ``out`` (see the module doc); returns a summary dict.

    Unreadable images are skipped and listed (``bad_paths``); the archive is written atomically, and a
    run killed midway leaves only ``*.tmp.<pid>`` files, removed by the next run in the same folder.
    """
    if not out.endswith(".npz"):
        raise ISGANError(f"--out {out}: the features are written as a .npz archive; name it like feats.npz")
    try:
        return _extract(encoder, paths, out, batch_size, workers, flip, normalize, progress)
    except OSError as e:  # a read-only or full file system, a missing permission: the temp files are gone
        raise ISGANError(storage.write_failure(out, e)) from None


def _extract(encoder, paths, out, batch_size, workers, flip, normalize, progress):
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    storage.remove_stale_temp_files(folder)
    device = next(encoder.parameters()).device
    encoder.eval()
    spec = dict(encoder.spec, flip=flip, normalize=normalize)
    dataset = _ImageFiles(paths, test_transform(spec), spec["height"], spec["width"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    good, bad = [], []
    raw_path = f"{out}.features.tmp.{os.getpid()}"  # features as they come, copied into the archive at the end
    try:
        with open(raw_path, "wb") as raw, console.progress(total=len(paths), desc="embedding",
                                                           unit="img", disable=not progress) as bar:
            for indices, imgs, errors in loader:
                ok = torch.tensor([not e for e in errors])
                bad += [(paths[i], e) for i, e in zip(indices.tolist(), errors) if e]
                if ok.any():
                    feats = descriptor(encoder, imgs[ok].to(device, non_blocking=True), flip, normalize)  # (B', D)
                    raw.write(feats.float().cpu().numpy().tobytes())
                    good += [paths[i] for i in indices[ok].tolist()]
                bar.update(len(indices))
                if bad:
                    bar.set_postfix(skipped=len(bad))
        labels = market_labels(good) if good else None
        with storage.atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            _write_strings(archive, "paths", good)
            _write_npy_member(archive, "features", "<f4", (len(good), encoder.descriptor_dim), _file_chunks(raw_path))
            if labels is not None:
                for name, values in zip(("pids", "camids"), labels):
                    _write_npy_member(archive, name, "<i8", values.shape, [values.tobytes()])
            _write_strings(archive, "bad_paths", [p for p, _ in bad])
            text = json.dumps(spec)
            _write_npy_member(archive, "spec", f"<U{len(text)}", (), [np.asarray(text).tobytes()])
    finally:
        if os.path.exists(raw_path):
            os.remove(raw_path)
    if bad:
        print(f"=> skipped {len(bad)} unreadable image(s) of {len(paths)}, listed in {out} (bad_paths):")
        for path, error in bad[:10]:
            print(f"   {path}: {error}")
        if len(bad) > 10:
            print(f"   ... and {len(bad) - 10} more")
    return {"images": len(paths), "embedded": len(good), "skipped": len(bad), "out": out,
            "dim": encoder.descriptor_dim, "labels": labels is not None}
