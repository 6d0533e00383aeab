"""Shared fixtures: a tiny synthetic dataset root and a tiny IS-GAN config for CPU tests."""
import contextlib
import os
import shutil

import numpy as np
import pytest
import torch

import isgan_torchreid  # noqa: F401  (registers models and datasets into torchreid)
from isgan_torchreid.config import CONFIG_DIR, config_hash, dump_config, load_config
from isgan_torchreid import storage
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.models import build_model
from isgan_torchreid.engine.plan import RunLayout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = CONFIG_DIR  # the packaged configs, by path (tests/test_entry_points.py loads them by name)

# small enough for seconds per epoch on 2 CPU cores: 8 train ids x 6 images, ResNet-18 at 128x64
TINY = [
    "MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False",
    "DATA.SOURCES", "[synthperson]", "DATA.WORKERS", "0",
    "DATA.SYNTH.NUM_TRAIN_IDS", "8", "DATA.SYNTH.NUM_TEST_IDS", "8", "DATA.SYNTH.NUM_CAMS", "3",
    "DATA.SYNTH.IMAGES_PER_ID", "6",
    "SAMPLER.P", "2", "SAMPLER.K", "4",
    "TRAIN.STAGE1.EPOCHS", "1", "TRAIN.STAGE2.EPOCHS", "1", "TRAIN.STAGE3.EPOCHS", "1",
    "TRAIN.PRINT_FREQ", "1000", "TRAIN.RESUME_FREQ", "1", "TEST.BATCH_SIZE", "32",
]


@contextlib.contextmanager
def interrupted_at(stage, epoch, step, before=None):
    """Within the block, a training run stops with KeyboardInterrupt (as on Ctrl-C) when it reaches ``step``
    (batch index) of ``epoch`` (0-based) of ``stage``, after calling ``before(engine)`` if given; the block
    must expect the KeyboardInterrupt."""
    real_step = StagedEngine.forward_backward

    def step_or_stop(engine, data):
        if (engine.stage, engine.epoch, engine.batch_idx) == (stage, epoch, step):
            if before is not None:
                before(engine)
            raise KeyboardInterrupt
        return real_step(engine, data)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(StagedEngine, "forward_backward", step_or_stop)
        yield


def make_run(root, data_root, name, stage, *overrides):
    """A run folder with config.yaml and a stage-``stage`` checkpoint of random weights (8 classes, seed 0), as
    the engine writes them; returns the checkpoint's path. For tools whose behaviour does not depend on training."""
    out = os.path.join(root, name)
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"),
                      TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", out] + list(overrides))
    os.makedirs(out, exist_ok=True)
    dump_config(cfg, os.path.join(out, "config.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg, 8)
    path = RunLayout(out).kept(stage, 1)
    storage.save_checkpoint({"stage": stage, "epoch": 1, "state_dict": model.state_dict(), "num_classes": 8,
                          "config_hash": config_hash(cfg), "results": {}}, path)
    return path


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: tiny models gain nothing from two, and on a shared 2-core machine two threads
    spin-wait for each other (measured 3-5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One DATA.ROOT per test session; synthetic datasets are generated there on first use."""
    return str(tmp_path_factory.mktemp("reid-data"))


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, request):
    """A folder for the runs one test module shares, removed when its tests are done: a tiny run's checkpoints
    take 1-2 GB, and pytest keeps folders of module fixtures until the session ends."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tiny_cfg(data_root, tmp_path):
    """``tiny_cfg(*overrides)`` -> a frozen tiny config writing to a fresh OUTPUT_DIR."""
    def make(*overrides):
        opts = TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "out")] + list(overrides)
        return load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), opts)
    return make


def floats(summary):
    """A training step's summary (0-d tensors on the device) as floats, as the engine's logging points read it."""
    return {name: value.item() for name, value in summary.items()}


# ---------------------------------------------------------------- deterministic draws

# the modules whose random draws FixedDraws replaces
DRAWING_MODULES = ("isgan_torchreid.models.encoders", "isgan_torchreid.models.generator",
                   "isgan_torchreid.losses.shuffle", "isgan_torchreid.losses.isgan")


def _shape(size):
    """The shape a torch.rand/randn ``*size`` argument means: (2, 3) or ((2, 3),)."""
    return tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)


class FixedDraws:
    """``torch`` as seen by the modules that draw random numbers, with rand/randn/randint/multinomial replaced by
    functions of the row index modulo ``period`` (and of the labels, for partners): one process's rows i and the
    concatenated batch's rows i and period + i get the same draws. Install it as the ``torch`` of the modules that
    draw (models.encoders, models.generator, losses.shuffle, losses.isgan)."""

    def __init__(self, period: int):
        self.period = period

    def __getattr__(self, name):
        return getattr(torch, name)

    def _table(self, shape, offset):
        rows = torch.arange(shape[0]) % self.period
        cols = torch.arange(int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        return torch.sin(1.3 * rows[:, None] + 0.7 * cols[None, :] + offset).reshape(shape)

    def randn(self, *size, generator=None, device=None, dtype=None):
        return self._table(_shape(size), 0.0).to(device=device, dtype=dtype or torch.float32)

    def rand(self, *size, generator=None, device=None, dtype=None):
        return ((self._table(_shape(size), 1.0) + 1) / 2).to(device=device, dtype=dtype or torch.float32)

    def randint(self, low, high, size, generator=None, device=None):
        return low + torch.arange(size[0], device=device) % self.period % (high - low)

    def multinomial(self, weights, num_samples, generator=None):
        n = weights.size(0)  # the next candidate after each row, cyclically: a same-label partner
        index = torch.arange(n, device=weights.device)
        ahead = (index[None, :] - index[:, None]) % n  # (n, n)
        ahead = torch.where(ahead == 0, torch.full_like(ahead, n), ahead)  # itself last (singletons only)
        return torch.where(weights > 0, ahead, torch.full_like(ahead, 2 * n)).argmin(1, keepdim=True)
