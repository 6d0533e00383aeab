"""cfg -> torchreid ``ImageDataManager`` (:func:`build_data`); datasets checked before anything is built.

torchreid tries to download a missing Market-1501/DukeMTMC-reID from dead URLs (it hangs
or fails obscurely offline), so :func:`check_datasets` looks for every source and target
first and fails with the expected path, layout and where to get the data. While torchreid
builds the datasets, their images are checked (:mod:`.images`: unreadable ones skipped or
fatal, empty splits named); the loaders get a timeout and workers that end with the trainer
(:mod:`.loaders`).
"""
import dataclasses
import multiprocessing
import os
import pickle
import sys
import traceback
from typing import Any, Dict, List, NamedTuple

from .. import comm, compat
from ..errors import ISGANError
from .synthetic import spec as synth
from .synthetic.datasets import DATASETS as SYNTHETIC
from .synthetic.generation import ensure
from .device_batches import uint8_train_transform
from .images import CheckCache, ImageCheck
from .loaders import guarded
from .sampler import identity_loader

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_MARKET_LAYOUT = "bounding_box_train/, bounding_box_test/, query/ (files like 0002_c1s1_000451_03.jpg)"
# name -> (accepted sets of required paths under DATA.ROOT, expected layout, where to get it)
KNOWN_DATASETS = {
    "market1501": (
        [[f"market1501/Market-1501-v15.09.15/{d}" for d in _SPLITS], [f"market1501/{d}" for d in _SPLITS]],
        "market1501/Market-1501-v15.09.15/ holding " + _MARKET_LAYOUT,
        "the Market-1501 release (Market-1501-v15.09.15.zip, Zheng et al. ICCV 2015) and unzip it there",
    ),
    "dukemtmcreid": (
        [[f"dukemtmc-reid/DukeMTMC-reID/{d}" for d in _SPLITS]],
        "dukemtmc-reid/DukeMTMC-reID/ holding " + _MARKET_LAYOUT,
        "DukeMTMC-reID.zip (Zheng et al. ICCV 2017) and unzip it there",
    ),
    "cuhk03": (
        [["cuhk03/cuhk03_release/cuhk-03.mat", "cuhk03/cuhk03_new_protocol_config_detected.mat",
          "cuhk03/cuhk03_new_protocol_config_labeled.mat"]],
        "cuhk03/cuhk03_release/cuhk-03.mat, cuhk03/cuhk03_new_protocol_config_detected.mat and "
        "cuhk03/cuhk03_new_protocol_config_labeled.mat (the 767/700 split)",
        "cuhk03_release.zip (Li et al. CVPR 2014) and the new-protocol split files of Zhong et al. CVPR 2017 "
        "(their re-ranking code, evaluation/data/CUHK03)",
    ),
}


def check_datasets(cfg):
    """Raise ISGANError for any source/target that is not on disk; generate synthetic ones."""
    registry = compat.image_dataset_registry()
    root = os.path.abspath(os.path.expanduser(cfg.DATA.ROOT))
    specs = synth_specs(cfg)
    for name in dict.fromkeys(list(cfg.DATA.SOURCES) + list(cfg.DATA.TARGETS)):
        if name in specs:
            ensure(root, name, specs[name])
        elif name not in registry:
            raise ISGANError(f"unknown dataset {name!r} in DATA.SOURCES/DATA.TARGETS; available: "
                             f"{', '.join(sorted(registry))}")
        elif name in KNOWN_DATASETS:
            layouts, expected, source = KNOWN_DATASETS[name]
            missing = [[p for p in paths if not os.path.exists(os.path.join(root, p))] for paths in layouts]
            if all(missing):
                raise ISGANError(f"dataset {name} not found: missing {os.path.join(root, missing[0][0])}. "
                                 f"Expected under DATA.ROOT={root}: {expected}. Get {source}; or set "
                                 f"DATA.ROOT (or $REID_DATA_ROOT) to the folder that holds it")
        else:
            path = os.path.join(root, getattr(registry[name], "dataset_dir", name))
            if not os.path.exists(path):
                raise ISGANError(f"dataset {name} not found at {path}; prepare it as torchreid's dataset docs "
                                 f"describe, or set DATA.ROOT (or $REID_DATA_ROOT) to the folder that holds it")


def synth_spec(cfg, name):
    """The synthetic dataset spec of ``name`` with the sizes from DATA.SYNTH."""
    s = cfg.DATA.SYNTH
    return dataclasses.replace(
        synth.default_spec(name), num_train_ids=s.NUM_TRAIN_IDS, num_test_ids=s.NUM_TEST_IDS,
        num_cams=s.NUM_CAMS, images_per_id=s.IMAGES_PER_ID, height=s.HEIGHT, width=s.WIDTH)


def synth_specs(cfg):
    """{name: spec} of the synthetic datasets among DATA.SOURCES and DATA.TARGETS (:func:`synth_spec`)."""
    return {name: synth_spec(cfg, name) for name in dict.fromkeys(list(cfg.DATA.SOURCES) + list(cfg.DATA.TARGETS))
            if name in SYNTHETIC}


def train_augmentations(cfg, stage):
    """torchreid's names of the train augmentations of ``stage``: random erasing only in stage 1 (paper,
    Sec. 4.1)."""
    names = ["random_flip"] if cfg.DATA.RANDOM_FLIP else []
    if stage == 1 and cfg.DATA.RANDOM_ERASING:
        names.append("random_erase")
    return names


def train_transform(cfg, stage):
    """torchreid's train transform for ``stage`` (:func:`train_augmentations`), built without torchreid's
    printout (the data manager's, once per run, says what every transform does); with DATA.UINT8_BATCHES the
    same stopped at uint8 (:mod:`.device_batches`)."""
    names = train_augmentations(cfg, stage)
    if cfg.DATA.UINT8_BATCHES:
        return uint8_train_transform(cfg.DATA.HEIGHT, cfg.DATA.WIDTH, "random_flip" in names, "random_erase" in names,
                                     IMAGENET_MEAN, IMAGENET_STD)
    return compat.build_transforms(cfg.DATA.HEIGHT, cfg.DATA.WIDTH, names, IMAGENET_MEAN, IMAGENET_STD)[0]


def use_forkserver(loaders):
    """Start the loaders' workers from a small forkserver that has imported the package.

    Forking the trainer itself (torch's default) was measured to stall the first batch of every
    epoch by 10-15 s once the process holds a model and has written a checkpoint (the training loader's
    workers now persist through the run; the test loaders' start per evaluation). A dataset that cannot be
    pickled (a user's, holding a lambda) keeps torch's default start method.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["isgan_torchreid"])
    for loader in loaders:
        if loader.num_workers > 0 and _picklable(loader.dataset):
            loader.multiprocessing_context = context


def _picklable(obj):
    try:
        pickle.dumps(obj)
    except Exception:  # pickle raises several types (PicklingError, AttributeError, TypeError)
        return False
    return True


def datamanager_kwargs(cfg, use_gpu=False):
    """``ImageDataManager`` arguments: P x K batches from torchreid's RandomIdentitySampler (P of all processes:
    :func:`build_data` shares them out)."""
    sources = list(cfg.DATA.SOURCES)
    return dict(
        root=os.path.abspath(os.path.expanduser(cfg.DATA.ROOT)),
        sources=sources,
        targets=list(cfg.DATA.TARGETS) or sources,
        height=cfg.DATA.HEIGHT,
        width=cfg.DATA.WIDTH,
        transforms=["random_flip"] if cfg.DATA.RANDOM_FLIP else [],
        norm_mean=IMAGENET_MEAN,
        norm_std=IMAGENET_STD,
        use_gpu=use_gpu,
        batch_size_train=cfg.SAMPLER.P * cfg.SAMPLER.K,
        num_instances=cfg.SAMPLER.K,
        train_sampler="RandomIdentitySampler",
        batch_size_test=cfg.TEST.BATCH_SIZE,
        workers=cfg.DATA.WORKERS,
        cuhk03_labeled=cfg.DATA.CUHK03_LABELED,
        cuhk03_classic_split=cfg.DATA.CUHK03_CLASSIC_SPLIT,
    )


def image_check_cache(cfg):
    """Where the results of image checks are kept: a hidden folder of DATA.ROOT."""
    return CheckCache(os.path.join(os.path.abspath(os.path.expanduser(cfg.DATA.ROOT)), ".isgan-image-checks"))


class Data(NamedTuple):
    """The data a run trains and evaluates on: torchreid's data manager of the checked datasets, and what the
    check left out."""

    manager: Any  # torchreid's ImageDataManager
    skipped_images: Dict[str, List[str]]  # the unreadable images left out: {"<dataset>/<split>": [paths]}


def build_data(cfg, use_gpu=False) -> Data:
    """Check the datasets, then build torchreid's ``ImageDataManager`` with checked images and guarded loaders."""
    check_datasets(cfg)
    check = ImageCheck(cfg.DATA.ON_BAD_IMAGE, image_check_cache(cfg))
    try:
        with compat.checking_image_datasets(check), synth.using_specs(synth_specs(cfg)):
            dm = compat.torchreid_base().data.ImageDataManager(**datamanager_kwargs(cfg, use_gpu))
    except AssertionError:  # torchreid validates with bare asserts; say which one failed
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        if os.path.basename(frame.filename) == "sampler.py":
            raise ISGANError(f"SAMPLER.P = {cfg.SAMPLER.P} identities per batch exceeds the training identities "
                             f"of {cfg.DATA.SOURCES}; lower SAMPLER.P") from None
        raise ISGANError(f"torchreid rejected the data ({frame.filename}:{frame.lineno}: {frame.line}); check the "
                         f"file names of {cfg.DATA.SOURCES} (Market layout: person id 0-1501, camera 1-6)") from None
    if check.skipped:
        print(f"=> left out {sum(map(len, check.skipped.values()))} unreadable image(s) (DATA.ON_BAD_IMAGE skip): "
              + ", ".join(f"{split} {len(paths)}" for split, paths in check.skipped.items()))
    transforms = {stage: train_transform(cfg, stage) for stage in (1, 2, 3)}
    dm.train_loader = identity_loader(dm.train_loader, cfg.SAMPLER.EPOCH, cfg.SEED, transforms, comm.get_rank(),
                                      comm.get_world_size(), replace_unreadable=cfg.DATA.ON_BAD_IMAGE == "skip")
    dm.train_loader = guarded(dm.train_loader, cfg.DATA.LOADER_TIMEOUT)
    for split in dm.test_loader.values():
        for name, loader in split.items():
            split[name] = guarded(loader, cfg.DATA.LOADER_TIMEOUT)
    use_forkserver([dm.train_loader] + [loader for split in dm.test_loader.values() for loader in split.values()])
    return Data(dm, check.skipped)
