"""Writing a synthetic dataset in the Market-1501 layout (the package's docstring): which image goes where
(:func:`_plan`), rendering every one, and replacing the folder atomically (:func:`generate`, :func:`ensure`)."""
import dataclasses
import json
import os
import os.path as osp
import re
import shutil
import tempfile

import numpy as np
from PIL import Image

from ...console import progress
from ...errors import ISGANError
from . import render
from .spec import STYLES, SynthSpec, default_spec

__all__ = ['FACTORS_FILE', 'generate', 'ensure']

# Bump whenever rendering changes, so datasets made by an older generator are regenerated.
GENERATOR_VERSION = 2  # 2: factors.json (images unchanged)

_SPLIT_DIRS = ('bounding_box_train', 'query', 'bounding_box_test')
FACTORS_FILE = 'factors.json'  # each image's nuisance factors, beside the split folders
# Random-number streams: the first entries of every default_rng((seed, stream, ...)) key.
_CAMERA, _IDENTITY, _IMAGE, _SPLIT, _DISTRACTOR, _JUNK = range(6)


def _plan(spec):
    """Lists every image: (folder, pid, cam, identity key, image key); identity key None = no person."""
    rng = np.random.default_rng((spec.seed, _SPLIT))
    jobs = []
    max_cams = min(spec.num_cams, spec.images_per_id - 1)  # leaves one camera with >= 2 images
    for pid in range(1, spec.num_train_ids + spec.num_test_ids + 1):
        is_test = pid > spec.num_train_ids
        cams = np.sort(rng.choice(spec.num_cams, int(rng.integers(2, max_cams + 1)), replace=False)) + 1
        counts = 1 + rng.multinomial(spec.images_per_id - len(cams), np.full(len(cams), 1.0 / len(cams)))
        index = 0
        for cam, count in zip(cams, counts):
            for k in range(count):
                if not is_test:
                    folder = 'bounding_box_train'
                else:  # one query per camera that keeps >= 1 image of this id in the gallery
                    folder = 'query' if k == 0 and count >= 2 else 'bounding_box_test'
                jobs.append((folder, pid, int(cam), (_IDENTITY, pid), (_IMAGE, pid, index)))
                index += 1
    for i in range(spec.num_distractors):  # pid 0: empty or partial detections of strangers
        cam = int(rng.integers(1, spec.num_cams + 1))
        ident_key = (_DISTRACTOR, i, 0) if i % 2 else None
        jobs.append(('bounding_box_test', 0, cam, ident_key, (_DISTRACTOR, i, 1)))
    for i in range(_num_junk(spec)):  # pid -1: partial views of test ids, dropped by the parser
        pid = spec.num_train_ids + 1 + int(rng.integers(spec.num_test_ids))
        cam = int(rng.integers(1, spec.num_cams + 1))
        jobs.append(('bounding_box_test', -1, cam, (_IDENTITY, pid), (_JUNK, i)))
    frames = rng.integers(0, 50, spec.num_cams + 1)  # per-camera running frame number
    named = []
    for folder, pid, cam, ident_key, image_key in jobs:
        frames[cam] += rng.integers(1, 9)
        prefix = '-1' if pid == -1 else f'{pid:04d}'
        named.append((osp.join(folder, f'{prefix}_c{cam}s1_{int(frames[cam]):06d}_00.jpg'),
                      cam, ident_key, image_key, pid))
    return named


def _num_junk(spec):
    """Number of junk (-1) gallery images: about one per eight test ids."""
    return max(1, spec.num_test_ids // 8)


def _spec_record(spec):
    """The JSON-able record stored as spec.json."""
    return {'generator_version': GENERATOR_VERSION, 'spec': dataclasses.asdict(spec)}


def _render_all(out_dir, spec):
    """Renders every image of ``spec`` into ``out_dir``."""
    style = STYLES[spec.style]
    cams = {c: render.random_camera(np.random.default_rng((spec.seed, _CAMERA, c)), style, spec.height,
                                    spec.width)
            for c in range(1, spec.num_cams + 1)}
    idents, factors = {}, {}
    for name in _SPLIT_DIRS:
        os.makedirs(osp.join(out_dir, name))
    plan = progress(_plan(spec), desc='generating synthetic images', unit='img')
    for rel_path, cam, ident_key, image_key, pid in plan:
        ident = None
        if ident_key is not None:
            if ident_key not in idents:
                idents[ident_key] = render.random_identity(np.random.default_rng((spec.seed, *ident_key)), style)
            ident = idents[ident_key]
        framing = 'empty' if ident is None else ('partial' if pid <= 0 else 'full')
        rng = np.random.default_rng((spec.seed, *image_key))
        pixels, drawn = render.draw_image(cams[cam], ident, rng, spec.height, spec.width, framing)
        Image.fromarray(pixels).save(osp.join(out_dir, rel_path), quality=cams[cam].quality)
        factors[rel_path.replace(os.sep, '/')] = {'camera': cam, **drawn}
    with open(osp.join(out_dir, FACTORS_FILE), 'w') as f:
        json.dump(factors, f, indent=0, sort_keys=True)
    with open(osp.join(out_dir, 'spec.json'), 'w') as f:
        json.dump(_spec_record(spec), f, indent=2, sort_keys=True)


def _is_current(dataset_dir, spec):
    """True if ``dataset_dir`` holds a complete dataset made from ``spec`` by this generator."""
    try:
        with open(osp.join(dataset_dir, 'spec.json')) as f:
            return json.load(f) == _spec_record(spec)
    except (OSError, ValueError):
        return False


def generate(dataset_dir, spec):
    """Renders ``spec`` into ``dataset_dir``, replacing it atomically (via a hidden sibling folder)."""
    if not isinstance(spec, SynthSpec):
        raise TypeError(f'generate({dataset_dir!r}, ...) needs a SynthSpec, got {type(spec).__name__}')
    dataset_dir = osp.abspath(osp.expanduser(dataset_dir))
    parent, name = osp.split(dataset_dir)
    if osp.exists(dataset_dir) and not osp.isfile(osp.join(dataset_dir, 'spec.json')) \
            and (not osp.isdir(dataset_dir) or os.listdir(dataset_dir)):
        raise ISGANError(
            f'{dataset_dir} exists but was not made by the synthetic generator (no spec.json); '
            f'move it away or choose another data root'
        )
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
    old_dir = None
    try:
        _render_all(tmp_dir, spec)
        if _is_current(dataset_dir, spec):  # another process finished the same dataset first
            shutil.rmtree(tmp_dir)
            return
        if osp.exists(dataset_dir):
            old_dir = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
            os.rename(dataset_dir, osp.join(old_dir, name))
        os.rename(tmp_dir, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)


def ensure(root, name, spec=None):
    """Returns ``<root>/<name>``, generating it if missing or made from another spec."""
    spec = default_spec(name) if spec is None else spec
    dataset_dir = osp.join(osp.abspath(osp.expanduser(root)), name)
    # torchreid's parser reads pid and camera with re.search on the whole path
    clash = re.search(r'[-\d]+_c\d', osp.join(dataset_dir, 'bounding_box_train'))
    if clash:
        raise ISGANError(
            f'data root {dataset_dir} contains {clash.group(0)!r}, which torchreid\'s Market-1501 '
            f'parser would read as a person id and camera; choose a root without "<digits>_c<digit>"'
        )
    if not _is_current(dataset_dir, spec):
        generate(dataset_dir, spec)
    return dataset_dir
