"""Tests for the synthetic Market-1501-style datasets (isgan_torchreid/data/synthetic/)."""
import dataclasses
import glob
import hashlib
import json
import os
import os.path as osp
import re
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torchreid
from PIL import Image

from isgan_torchreid.data.synthetic import render, spec as spec_module
from isgan_torchreid.data.synthetic.datasets import DATASETS, SynthPerson, SynthPersonB
from isgan_torchreid.data.synthetic.generation import ensure, generate
from isgan_torchreid.data.synthetic.spec import STYLES, SynthSpec, default_spec, set_default_spec
from isgan_torchreid.errors import ISGANError

TINY = SynthSpec(num_train_ids=6, num_test_ids=6, num_cams=3, images_per_id=6, height=64, width=32,
                 num_distractors=6, seed=0, style='a')


def _market1501():
    """torchreid's Market-1501 class (the same attribute path in both torchreid layouts)."""
    return torchreid.data.datasets.Market1501


def _parse(dir_path, relabel=False):
    """torchreid's own Market-1501 parser on one folder."""
    market = _market1501()
    return market.process_dir(market.__new__(market), dir_path, relabel=relabel)


def _hashes(dataset_dir):
    """{relative path: sha256} of every file under dataset_dir."""
    out = {}
    for path in glob.glob(osp.join(dataset_dir, '**', '*'), recursive=True):
        if osp.isfile(path):
            with open(path, 'rb') as f:
                out[osp.relpath(path, dataset_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    """One tiny style-'a' dataset shared by the read-only tests."""
    path = str(tmp_path_factory.mktemp('synth') / 'tiny')
    generate(path, TINY)
    return path


def test_same_spec_is_byte_identical_and_seed_or_style_changes_it(tmp_path, tiny_dir):
    generate(str(tmp_path / 'again'), TINY)
    reference = _hashes(tiny_dir)
    assert len(reference) > TINY.images_per_id * (TINY.num_train_ids + TINY.num_test_ids)
    assert _hashes(str(tmp_path / 'again')) == reference
    for change in ({'seed': 1}, {'style': 'b'}):
        path = str(tmp_path / 'other_{}'.format(next(iter(change))))
        generate(path, dataclasses.replace(TINY, **change))
        other = _hashes(path)
        assert len(other) == len(reference)
        assert set(other.values()).isdisjoint(reference.values())  # every file's content changed


def test_factors_file_labels_every_image(tiny_dir):
    with open(osp.join(tiny_dir, 'factors.json')) as f:
        factors = json.load(f)
    images = {osp.relpath(osp.join(root, name), tiny_dir) for root, _, names in os.walk(tiny_dir)
              for name in names if name.endswith('.jpg')}
    assert set(factors) == images
    views = set()
    for path, drawn in factors.items():
        pid, cam = re.search(r'([-\d]+)_c(\d)', osp.basename(path)).groups()
        assert drawn['camera'] == int(cam) and isinstance(drawn['occluded'], bool)
        assert drawn['view'] in ('front', 'back', 'side') or (pid == '0000' and drawn['view'] is None)
        views.add(drawn['view'])
    assert {'front', 'back', 'side'} <= views


def test_layout_is_parsed_by_torchreids_market1501_parser(tiny_dir):
    train = _parse(osp.join(tiny_dir, 'bounding_box_train'), relabel=True)
    train_raw = _parse(osp.join(tiny_dir, 'bounding_box_train'))
    query = _parse(osp.join(tiny_dir, 'query'))
    gallery = _parse(osp.join(tiny_dir, 'bounding_box_test'))
    junk = glob.glob(osp.join(tiny_dir, 'bounding_box_test', '-1_c*s1_*_00.jpg'))

    assert len(train) == TINY.num_train_ids * TINY.images_per_id
    assert sorted({pid for _, pid, _ in train}) == list(range(TINY.num_train_ids))
    # every test image is either a query or a gallery image; junk is on disk but dropped
    assert len(junk) >= 1
    assert len(os.listdir(osp.join(tiny_dir, 'bounding_box_test'))) == len(gallery) + len(junk)
    assert sum(pid == 0 for _, pid, _ in gallery) == TINY.num_distractors
    test_imgs = [item for item in query + gallery if item[1] != 0]
    assert len(test_imgs) == TINY.num_test_ids * TINY.images_per_id
    test_ids = {pid for _, pid, _ in test_imgs}
    assert len(test_ids) == TINY.num_test_ids
    assert test_ids.isdisjoint({pid for _, pid, _ in train_raw})
    assert {pid for _, pid, _ in query} == test_ids
    cams = {cam for items in (train, query, gallery) for _, _, cam in items}
    assert cams <= set(range(TINY.num_cams)) and len(cams) >= 2
    # one query per (id, camera), each matched in the gallery from another camera
    query_keys = [(pid, cam) for _, pid, cam in query]
    assert len(query_keys) == len(set(query_keys))
    gallery_cams = defaultdict(set)
    for _, pid, cam in gallery:
        gallery_cams[pid].add(cam)
    for pid, cam in query_keys:
        assert gallery_cams[pid] - {cam}
    names = [osp.basename(p) for p, _, _ in train + query + gallery]
    assert len(names) == len(set(names))
    with open(osp.join(tiny_dir, 'spec.json')) as f:
        assert json.load(f)['spec'] == dataclasses.asdict(TINY)


def test_dataset_class_inside_image_data_manager(tmp_path, monkeypatch):
    name = 'synthperson_test_' + uuid.uuid4().hex[:8]
    cls = type('SynthPersonTest', (SynthPerson,), {'dataset_dir': name})
    monkeypatch.setitem(spec_module._DEFAULT_SPECS, name, TINY)
    torchreid.data.register_image_dataset(name, cls)
    with pytest.raises(ValueError):  # torchreid's registry refuses duplicate names
        torchreid.data.register_image_dataset(name, cls)
    dm = torchreid.data.ImageDataManager(
        root=str(tmp_path), sources=name, height=TINY.height, width=TINY.width,
        transforms=['random_flip'], batch_size_train=8, batch_size_test=8, workers=0, use_gpu=False
    )
    assert dm.num_train_pids == TINY.num_train_ids
    batch = next(iter(dm.train_loader))
    assert tuple(batch['img'].shape) == (8, 3, TINY.height, TINY.width)
    assert int(batch['pid'].max()) < TINY.num_train_ids
    query = dm.test_loader[name]['query'].dataset
    assert len(query) == len(_parse(osp.join(str(tmp_path), name, 'query')))
    assert sorted(DATASETS) == ['synthperson', 'synthperson_b'] and issubclass(SynthPersonB, SynthPerson)


def test_reuses_same_spec_and_regenerates_changed_spec(tmp_path):
    path = ensure(str(tmp_path), 'ds', TINY)
    assert path == osp.join(str(tmp_path), 'ds')
    probe = sorted(glob.glob(osp.join(path, 'bounding_box_train', '*.jpg')))[0]

    def stamp():
        return (os.stat(path).st_ino, os.stat(probe).st_mtime_ns,
                os.stat(osp.join(path, 'spec.json')).st_mtime_ns)

    before = stamp()
    assert ensure(str(tmp_path), 'ds', TINY) == path
    assert stamp() == before
    changed = dataclasses.replace(TINY, seed=3)
    ensure(str(tmp_path), 'ds', changed)
    with open(osp.join(path, 'spec.json')) as f:
        assert json.load(f)['spec']['seed'] == 3
    assert sorted(os.listdir(str(tmp_path))) == ['ds']  # no temporary folders left behind


def test_interrupted_generation_leaves_no_half_dataset(tmp_path, monkeypatch):
    real_render, calls = render.draw_image, []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(render, 'draw_image', failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate(str(tmp_path / 'fresh'), TINY)
    assert os.listdir(str(tmp_path)) == []

    # an interrupted regeneration keeps the old complete dataset in place
    monkeypatch.setattr(render, 'draw_image', real_render)
    generate(str(tmp_path / 'ds'), TINY)
    old = _hashes(str(tmp_path / 'ds'))
    calls.clear()
    monkeypatch.setattr(render, 'draw_image', failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate(str(tmp_path / 'ds'), dataclasses.replace(TINY, seed=9))
    assert _hashes(str(tmp_path / 'ds')) == old
    assert sorted(os.listdir(str(tmp_path))) == ['ds']


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / 'ds').mkdir()
    (tmp_path / 'ds' / 'mine.txt').write_text('keep me')
    with pytest.raises(ISGANError, match='spec.json'):
        ensure(str(tmp_path), 'ds', TINY)
    assert (tmp_path / 'ds' / 'mine.txt').read_text() == 'keep me'


def test_identity_is_visible_and_nuisance_is_present(tiny_dir):
    paths = sorted(glob.glob(osp.join(tiny_dir, 'bounding_box_train', '*.jpg')))
    pids = np.array([int(osp.basename(p)[:4]) for p in paths])
    cams = np.array([int(osp.basename(p).split('_c')[1][0]) for p in paths])
    imgs = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in paths])  # (N, H, W, 3)
    h, w = TINY.height, TINY.width
    torso = imgs[:, int(0.33 * h):int(0.5 * h), int(0.4 * w):int(0.6 * w)].mean(axis=(1, 2))  # (N, 3)
    dist = np.linalg.norm(torso[:, None] - torso[None], axis=-1)  # (N, N)
    same = pids[:, None] == pids[None]
    other_image = ~np.eye(len(paths), dtype=bool)
    assert dist[same & other_image].mean() < 0.8 * dist[~same].mean()
    # the same person in two cameras still looks clearly different pixel by pixel
    cross_cam = same & (cams[:, None] != cams[None])
    i, j = np.nonzero(cross_cam)
    assert len(i) > 0
    pixel_diff = np.abs(imgs[i] - imgs[j]).mean(axis=(1, 2, 3))
    assert pixel_diff.min() > 5.0 and pixel_diff.mean() > 20.0


def test_registered_defaults_and_styles_differ():
    a, b = default_spec('synthperson'), default_spec('synthperson_b')
    assert (a.style, b.style) == ('a', 'b') and a.seed != b.seed
    assert (a.height, a.width) == (128, 64)
    assert STYLES['a'] != STYLES['b']
    with pytest.raises(ISGANError, match='set_default_spec'):
        default_spec('no_such_dataset')
    with pytest.raises(TypeError, match='SynthSpec'):
        set_default_spec('synthperson', {'seed': 1})


@pytest.mark.parametrize('field, value', [
    ('num_train_ids', 0), ('num_test_ids', 2000), ('num_cams', 1), ('num_cams', 7),
    ('images_per_id', 2), ('height', 8), ('width', 3.5), ('num_distractors', -1), ('seed', -1),
    ('style', 'c'), ('num_cams', True),
])
def test_invalid_spec_names_the_field(field, value):
    with pytest.raises(ISGANError, match=r'SynthSpec\.' + field):
        SynthSpec(**{field: value})


def test_too_many_ids_and_clashing_root_are_rejected(tmp_path):
    with pytest.raises(ISGANError, match='num_train_ids'):
        SynthSpec(num_train_ids=1000, num_test_ids=600)
    with pytest.raises(ISGANError, match='_c'):
        ensure(str(tmp_path / 'run-7_c2'), 'ds', TINY)
