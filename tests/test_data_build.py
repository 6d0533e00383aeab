"""cfg -> ImageDataManager: missing datasets fail fast and clearly; transforms and P x K batches."""
import os

import pytest
import torch
import torchvision.transforms as T

from isgan_torchreid.config import load_config
from isgan_torchreid.data.build import (IMAGENET_MEAN, IMAGENET_STD, build_data, check_datasets, datamanager_kwargs,
                                        synth_specs, train_transform, use_forkserver)
from isgan_torchreid.data.device_batches import RandomErasingUInt8
from isgan_torchreid.data.synthetic.spec import SynthSpec, default_spec, spec_for, using_specs
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models.images import normalize_uint8


def cfg_for(root, *sources, opts=()):
    return load_config(None, ["DATA.ROOT", str(root), "DATA.SOURCES", str(list(sources))] + list(opts))


@pytest.mark.parametrize("name, expected", [
    ("market1501", ["market1501", "Market-1501-v15.09.15", "bounding_box_train", "query", "Market-1501"]),
    ("dukemtmcreid", ["dukemtmc-reid", "DukeMTMC-reID", "bounding_box_test", "DukeMTMC-reID.zip"]),
    ("cuhk03", ["cuhk03_release", "cuhk-03.mat", "cuhk03_new_protocol_config_labeled.mat", "767/700"]),
])
def test_missing_real_dataset_names_path_layout_and_source(tmp_path, name, expected):
    with pytest.raises(ISGANError) as info:
        check_datasets(cfg_for(tmp_path, name))
    message = str(info.value)
    assert str(tmp_path) in message and "DATA.ROOT" in message and "\n" not in message
    for part in expected:
        assert part in message


def test_missing_target_is_checked_too(tmp_path, data_root):
    cfg = cfg_for(data_root, "synthperson", opts=["DATA.TARGETS", "[dukemtmcreid]"])
    with pytest.raises(ISGANError, match="dukemtmcreid not found"):
        check_datasets(cfg)


def test_both_market_layouts_accepted(tmp_path):
    for d in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(tmp_path / "a" / "market1501" / "Market-1501-v15.09.15" / d)
        os.makedirs(tmp_path / "b" / "market1501" / d)
    check_datasets(cfg_for(tmp_path / "a", "market1501"))
    check_datasets(cfg_for(tmp_path / "b", "market1501"))
    os.rmdir(tmp_path / "b" / "market1501" / "query")
    with pytest.raises(ISGANError, match="query"):
        check_datasets(cfg_for(tmp_path / "b", "market1501"))


def test_unknown_and_other_torchreid_datasets(tmp_path):
    with pytest.raises(ISGANError, match="unknown dataset 'marke1501'.*market1501"):
        check_datasets(cfg_for(tmp_path, "marke1501"))
    with pytest.raises(ISGANError, match=f"msmt17 not found at {tmp_path}"):
        check_datasets(cfg_for(tmp_path, "msmt17"))


def test_random_erasing_only_in_stage_1():
    cfg = load_config(None)
    names = [lambda t: [type(x).__name__ for x in t.transforms]][0]
    assert "RandomErasing" in names(train_transform(cfg, 1))
    assert "RandomErasing" not in names(train_transform(cfg, 2))
    assert "RandomHorizontalFlip" in names(train_transform(cfg, 3))
    off = load_config(None, ["DATA.RANDOM_ERASING", "False", "DATA.RANDOM_FLIP", "False"])
    assert names(train_transform(off, 1)) == ["Resize", "ToTensor", "Normalize"]


def test_datamanager_kwargs_follow_config():
    cfg = load_config(None, ["SAMPLER.P", "8", "SAMPLER.K", "2", "DATA.TARGETS", "[dukemtmcreid, cuhk03]",
                             "DATA.CUHK03_LABELED", "True"])
    kw = datamanager_kwargs(cfg)
    assert kw["batch_size_train"] == 16 and kw["num_instances"] == 2
    assert kw["train_sampler"] == "RandomIdentitySampler" and kw["cuhk03_labeled"] is True
    assert kw["sources"] == ["market1501"] and kw["targets"] == ["dukemtmcreid", "cuhk03"]


def test_batches_are_p_identities_times_k_images(tiny_cfg):
    cfg = tiny_cfg("SAMPLER.P", "2", "SAMPLER.K", "3")
    dm = build_data(cfg).manager
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (6, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH)
    pids = batch["pid"].view(2, 3)  # RandomIdentitySampler: K consecutive images per identity
    assert torch.all(pids == pids[:, :1]) and pids[0, 0] != pids[1, 0]
    assert dm.num_train_pids == cfg.DATA.SYNTH.NUM_TRAIN_IDS
    # DATA.SYNTH reached torchreid's instantiation of the dataset through a block of build_data: the registered
    # default spec is untouched, and the block's spec is gone with it
    assert default_spec("synthperson") == SynthSpec() == spec_for("synthperson")
    with using_specs({"synthperson": synth_specs(cfg)["synthperson"]}):
        assert spec_for("synthperson").num_train_ids == cfg.DATA.SYNTH.NUM_TRAIN_IDS
        assert spec_for("synthperson_b") == default_spec("synthperson_b")
    assert spec_for("synthperson") == SynthSpec()


def test_too_many_identities_per_batch(tiny_cfg):
    with pytest.raises(ISGANError, match="SAMPLER.P"):
        build_data(tiny_cfg("SAMPLER.P", "50", "TRAIN.STAGES", "[1]"))


def test_workers_start_from_a_forkserver_persist_and_take_each_stages_transform(tiny_cfg):
    cfg = tiny_cfg("DATA.WORKERS", "2")
    dm = build_data(cfg).manager
    loaders = [dm.train_loader] + [l for split in dm.test_loader.values() for l in split.values()]
    assert all(l.multiprocessing_context.get_start_method() == "forkserver" for l in loaders)
    assert dm.train_loader.persistent_workers
    dm.train_loader.dataset.transforms[2] = T.Compose([T.Resize((8, 4)), T.ToTensor()])  # before the workers start
    batch = next(iter(dm.train_loader))
    assert batch["img"].abs().sum() > 0 and batch["img"].shape[-2:] == (cfg.DATA.HEIGHT, cfg.DATA.WIDTH)
    dm.train_loader.sampler.set_epoch(0, stage=2)
    assert next(iter(dm.train_loader))["img"].shape[-2:] == (8, 4)  # the same workers, stage 2's transform


def test_augmentations_depend_on_the_seed_and_place_alone(tiny_cfg):
    """Workers or none, one epoch drawn twice, or resumed at it: the same augmented images."""
    def epoch(workers, first=None):
        dm = build_data(tiny_cfg("DATA.WORKERS", str(workers))).manager
        if first is not None:
            dm.train_loader.sampler.set_epoch(first, stage=1)
            list(dm.train_loader)  # an earlier epoch in the same workers
        dm.train_loader.sampler.set_epoch(3, stage=1)
        torch.manual_seed(123)  # the trainer's RNG: augmentations neither depend on it nor move it
        imgs = torch.cat([b["img"] for b in dm.train_loader])
        return imgs, torch.rand(1)
    alone, after = epoch(0), epoch(0, first=0)
    assert torch.equal(alone[0], after[0]) and torch.equal(alone[1], after[1]) and torch.equal(alone[1], epoch(2)[1])
    assert torch.equal(alone[0], epoch(2, first=1)[0])
    dm = build_data(tiny_cfg()).manager
    dm.train_loader.sampler.set_epoch(4, stage=1)
    assert not torch.equal(torch.cat([b["img"] for b in dm.train_loader]), alone[0])  # another epoch: other draws


def epoch_images(cfg, stage):
    dm = build_data(cfg).manager
    dm.train_loader.sampler.set_epoch(0, stage=stage)
    return torch.cat([b["img"] for b in dm.train_loader])


def test_uint8_batches_normalise_on_the_device_to_torchreids(tiny_cfg):
    """DATA.UINT8_BATCHES: the workers hand over uint8 images that normalise to torchreid's float batch bit for bit
    (stage 2: resize and flip, the same draws); in stage 1 random erasing fills the same rectangles, with a value
    that differs by its rounding to 1/255 alone."""
    floats = {stage: epoch_images(tiny_cfg(), stage) for stage in (1, 2)}
    uint8 = {stage: epoch_images(tiny_cfg("DATA.UINT8_BATCHES", "True"), stage) for stage in (1, 2)}
    assert uint8[2].dtype == torch.uint8 and floats[2].dtype == torch.float32
    assert torch.equal(normalize_uint8(uint8[2]), floats[2])
    erased = (floats[1] == torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).all(1, keepdim=True).expand_as(floats[1])
    assert erased.any()  # torchreid's fill, in normalised units
    ours = normalize_uint8(uint8[1])
    assert torch.equal(ours[~erased], floats[1][~erased])
    assert (ours[erased] - floats[1][erased]).abs().max() <= 0.5 / 255 / min(IMAGENET_STD) + 1e-6
    fill = RandomErasingUInt8(IMAGENET_MEAN, IMAGENET_STD).fill.view(1, 3, 1, 1)
    assert (uint8[1] == fill).all(1, keepdim=True).expand_as(erased)[erased].all()


class Unpicklable(torch.utils.data.Dataset):
    def __init__(self):
        self.transform = lambda x: x

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.transform(i)


def test_unpicklable_datasets_keep_forked_workers():
    loader = torch.utils.data.DataLoader(Unpicklable(), num_workers=1)
    use_forkserver([loader])
    assert loader.multiprocessing_context is None and list(loader) == [torch.tensor([0]), torch.tensor([1])]
