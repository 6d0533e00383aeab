"""torchreid compatibility: the installed layout (PyPI 0.2.5 or 1.4.0 from source), registration, and each
patch fails without it."""
import glob
import importlib
import importlib.metadata
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchreid

import isgan_torchreid
from isgan_torchreid import compat
from isgan_torchreid.models import ISGAN, MGN

from conftest import REPO


def test_models_registered_in_torchreid_factory():
    for name in ("isgan_r50", "isgan_r34", "isgan_r18", "mgn_r50", "mgn_r18"):
        assert name in compat.model_factory()
    model = torchreid.models.build_model("isgan_r18", num_classes=5, loss="softmax", pretrained=False)
    assert isinstance(model, ISGAN)
    model = torchreid.models.build_model("mgn_r18", num_classes=5, loss="triplet", pretrained=False)
    assert isinstance(model, MGN) and not isinstance(model, ISGAN) and model.loss == "triplet"
    assert "pcb_p6" in compat.model_factory()  # torchreid's own models stay


def test_datasets_registered_and_registration_is_idempotent():
    registry = compat.image_dataset_registry()
    assert registry["synthperson"] is isgan_torchreid.data.synthetic.datasets.SynthPerson
    assert issubclass(registry["synthperson"], torchreid.data.datasets.Market1501)  # the installed layout's class
    compat.register_dataset("synthperson", registry["synthperson"])  # torchreid itself would raise here
    importlib.reload(isgan_torchreid)  # re-import registers again without error
    assert "synthperson_b" in registry


# installed version -> (module holding data/models/metrics, compiled rank evaluator built)
KNOWN_LAYOUTS = {"0.2.5": ("torchreid.reid", False), "1.4.0": ("torchreid", True)}


def _installed_layout():
    """What the installed torchreid's files say: (base module name, compiled evaluator present)."""
    package_dir = os.path.dirname(importlib.util.find_spec("torchreid").origin)
    base = "torchreid.reid" if os.path.isdir(os.path.join(package_dir, "reid")) else "torchreid"
    base_dir = os.path.join(package_dir, *base.split(".")[1:])
    return base, bool(glob.glob(os.path.join(base_dir, "metrics", "rank_cylib", "rank_cy*.so")))


def test_detected_layout_matches_installed_torchreid():
    base, compiled = _installed_layout()
    version = importlib.metadata.version("torchreid")
    if version in KNOWN_LAYOUTS:
        assert (base, compiled) == KNOWN_LAYOUTS[version], f"torchreid {version} installed unusually"
    assert compat.torchreid_base().__name__ == base
    assert compat.has_cython_evaluator() == compiled
    assert compat.torchreid_base().models.build_model is torchreid.models.build_model


def test_import_loads_only_the_installed_layout():
    """A fresh ``import isgan_torchreid`` loads torchreid modules of one layout only, with no UserWarning."""
    code = ("import sys, warnings; warnings.simplefilter('error', UserWarning); import isgan_torchreid; "
            "print(' '.join(m for m in sys.modules if m.split('.')[0] == 'torchreid'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    base, compiled = _installed_layout()
    assert f"{base}.data.datasets.image.market1501" in loaded
    if base == "torchreid.reid":  # PyPI 0.2.5: no top-level subpackage modules, no compiled evaluator
        assert not {m for m in loaded if m.startswith(("torchreid.data", "torchreid.metrics"))}
    else:  # 1.4.0 from source: no torchreid.reid at all, and the compiled evaluator is loaded
        assert importlib.util.find_spec("torchreid.reid") is None
        assert not {m for m in loaded if m.startswith("torchreid.reid")}
    assert (f"{base}.metrics.rank_cylib.rank_cy" in loaded) == compiled


def _original(fn):
    return getattr(fn, "__wrapped__", fn)


def test_eval_cuhk03_patch_works_without_np_bool(monkeypatch):
    rank = compat._submodule("metrics.rank")
    unpatched = rank.eval_cuhk03
    monkeypatch.delattr(np, "bool", raising=False)  # numpy 1.24-1.26 (numpy 2 re-added the alias)
    rng = np.random.RandomState(0)
    distmat = rng.rand(4, 12)
    q_pids, g_pids = np.array([0, 1, 2, 3]), np.repeat(np.arange(4), 3)
    q_cams, g_cams = np.zeros(4, int), np.ones(12, int)
    if not getattr(unpatched, "_isgan_patched", False):
        with pytest.raises(AttributeError, match="bool"):
            unpatched(distmat, q_pids, g_pids, q_cams, g_cams, 5)
    monkeypatch.setattr(rank, "eval_cuhk03", unpatched)
    compat._patch_eval_cuhk03()
    assert rank.eval_cuhk03 is not unpatched and rank.eval_cuhk03._isgan_patched
    cmc, mAP = torchreid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5,
                                               use_metric_cuhk03=True, use_cython=False)
    assert cmc.shape == (4,) and 0 < mAP <= 1  # one sampled image per gallery id: 4 ranks
    monkeypatch.setattr(rank, "eval_cuhk03", unpatched)  # leave torchreid as it was


def test_load_checkpoint_patch_reads_torchreid_checkpoints(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    # what torchreid's Engine.save_model writes: rank1 is a numpy scalar (cmc[0])
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "epoch": 1, "rank1": np.float32(0.5),
                "optimizer": {}}, path)
    loader = torchreid.utils.load_checkpoint
    assert loader._isgan_patched
    with pytest.raises(pickle.UnpicklingError):
        _original(loader)(str(path))
    state = loader(str(path))
    assert state["rank1"] == np.float32(0.5) and set(state["state_dict"]) == {"weight", "bias"}
    model = torch.nn.Linear(2, 2)
    torchreid.utils.load_pretrained_weights(model, str(path))  # torchreid's own caller of load_checkpoint
    assert torch.equal(model.weight, state["state_dict"]["weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only default")
def test_feature_extractor_defaults_to_cpu_without_cuda(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchreid.models.build_model("resnet18", num_classes=1, pretrained=False).state_dict(), path)
    cls = torchreid.utils.FeatureExtractor
    kwargs = dict(model_name="resnet18", model_path=str(path), image_size=(64, 32), verbose=False)
    with pytest.raises((AssertionError, RuntimeError)):
        _original(cls.__init__)(object.__new__(cls), **kwargs)  # torchreid's default device='cuda'
    extractor = cls(**kwargs)
    features = extractor(torch.rand(2, 3, 64, 32))
    assert features.shape == (2, 512) and extractor.device.type == "cpu"
    assert cls(**kwargs, device="cpu").device.type == "cpu"  # an explicit device still wins


def test_patches_are_idempotent():
    before = (compat._submodule("metrics.rank").eval_cuhk03, torchreid.utils.load_checkpoint,
              torchreid.utils.FeatureExtractor.__init__)
    compat.apply_patches()
    after = (compat._submodule("metrics.rank").eval_cuhk03, torchreid.utils.load_checkpoint,
             torchreid.utils.FeatureExtractor.__init__)
    assert before == after
