"""Everything that touches torchreid's internals, in one place.

torchreid is installed in one of two layouts, and the project runs on both
(:func:`torchreid_base` hides the difference; nothing else names a torchreid module path):

* **PyPI** ``torchreid`` **0.2.5** (``pip install torchreid``): the library lives under
  ``torchreid.reid.*``; ``import torchreid.data`` fails, although the top-level package re-exports
  ``torchreid.data``, ``.models``, ``.metrics``... as attributes. The wheel has no compiled rank
  evaluator: ``torchreid.reid.metrics.rank`` warns "Cython evaluation ... is unavailable" at import
  and ``evaluate_rank`` (and so torchreid's stock engines) always runs the pure-Python evaluator.
* **Source install of 1.4.0** (GitHub, as its README installs it): the library is ``torchreid.*``
  (``torchreid.reid`` does not exist) and the install compiles the Cython evaluator
  ``torchreid.metrics.rank_cylib.rank_cy``. ``evaluate_rank`` defaults to ``use_cython=True``, so
  torchreid's stock engines evaluate with it. It sums in float32, so its mAP and CUHK03 CMC differ
  from the pure-Python evaluator's in the last float32 bits (the Market CMC, a sum of 0/1, is
  exact), and it pads the CUHK03 CMC with zeros past the number of gallery identities.

Both layouts hold the same code otherwise. The project evaluates with
:mod:`isgan_torchreid.engine.evaluation`, equal to the pure-Python evaluator bit for bit, in both.

Narrow patches for what breaks on numpy 2 / torch >= 2.6 / CPU-only machines, the same in both
layouts (each is idempotent, applied by :func:`apply_patches` at ``import isgan_torchreid`` and
covered by a test that fails without it):

* ``metrics.rank.eval_cuhk03`` uses ``np.bool``, absent from numpy 1.24-1.26 (numpy 2 re-added the
  alias), where the pure-Python CUHK03 metric raises AttributeError (1.4.0's Cython one does not
  use it). Where numpy lacks it, the function is re-bound to a namespace in which ``np.bool`` is
  ``bool``.
* ``utils.load_checkpoint`` calls ``torch.load`` with the torch >= 2.6 default
  ``weights_only=True``, which rejects torchreid's own checkpoints (``Engine.save_model``
  stores ``rank1`` as a numpy scalar). It now allow-lists numpy scalars and dtypes only, and
  reads safetensors files (the project's ``encoder.safetensors``) as ``{'state_dict': tensors}``,
  so ``load_pretrained_weights`` and ``FeatureExtractor(model_path=...)`` accept them too.
* ``utils.FeatureExtractor`` defaults to ``device='cuda'`` and fails on CPU-only machines;
  the default becomes ``'cuda'`` when available, else ``'cpu'``.
* ``utils.read_image`` retries forever when an image cannot be read (one corrupt JPEG hangs training);
  it becomes :func:`isgan_torchreid.image_files.read_image` (bounded retries, then ``BadImageError``),
  in every module that imported it by name.
* ``ImageDataset.__init__`` passes its split lists through the check that :func:`checking_image_datasets`
  installs (unreadable images left out before torchreid counts identities; empty splits named by folder
  instead of torchreid's ``IndexError``; each dataset's summary table printed once).
"""
import contextlib
import contextvars
import functools
import importlib
import inspect
import io
import os
import types
import warnings

import numpy as np
import torch

# 0.2.5 warns at import that its compiled evaluator is missing. The project never evaluates with
# torchreid's evaluator (engine/evaluation.py), so the warning would only mislead. The filter
# matches that one message only; 1.4.0 has the compiled evaluator and never emits it.
warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
import torchreid  # noqa: E402

from . import image_files, storage  # noqa: E402


@functools.lru_cache(maxsize=None)
def torchreid_base():
    """The module that holds torchreid's ``data``/``models``/``metrics``/``utils`` subpackages:
    ``torchreid.reid`` (PyPI 0.2.5) or ``torchreid`` itself (1.4.0 installed from source)."""
    try:
        return importlib.import_module("torchreid.reid")  # PyPI 0.2.5 layout
    except ImportError:
        return torchreid  # source 1.4.0 layout


def has_cython_evaluator():
    """Whether torchreid's ``evaluate_rank`` runs the compiled evaluator by default (1.4.0 from source)."""
    return bool(_submodule("metrics.rank").IS_CYTHON_AVAI)


def _submodule(dotted):
    return importlib.import_module(f"{torchreid_base().__name__}.{dotted}")


def model_factory():
    """torchreid's private name -> builder dict used by ``build_model``."""
    return vars(_submodule("models"))["__model_factory"]


def image_dataset_registry():
    """torchreid's private name -> class dict used by ``init_image_dataset``."""
    return vars(_submodule("data.datasets"))["__image_datasets"]


def register_model(name, builder):
    """Make ``torchreid.models.build_model(name, ...)`` return ``builder(...)`` (idempotent)."""
    model_factory()[name] = builder


def register_dataset(name, cls):
    """Register an image dataset class with torchreid (idempotent for the same class)."""
    registry = image_dataset_registry()
    if registry.get(name) is cls:
        return
    registry.pop(name, None)
    torchreid_base().data.register_image_dataset(name, cls)


def set_engine_models(engine, entries):
    """Make ``entries`` (name -> (model, optimizer, scheduler)) the only models a torchreid ``Engine`` keeps.

    torchreid's ``Engine.register_model`` adds to private registries (``_models``, ``_optims``, ``_scheds``)
    that ``set_model_mode``, ``update_lr`` and ``get_current_lr`` read; a new stage replaces them.
    """
    for registry in (engine._models, engine._optims, engine._scheds):
        registry.clear()
    for name, (model, optimizer, scheduler) in entries.items():
        engine.register_model(name, model, optimizer, scheduler)


def build_transforms(height, width, names, mean, std):
    """torchreid's (train, test) transforms from ``build_transforms`` (``names``: its train augmentations, e.g.
    ``["random_flip", "random_erase"]``), without its "Building train transforms ..." printout: the data
    manager prints that once per run, and a stage's own train transform would print it again."""
    with contextlib.redirect_stdout(io.StringIO()):
        return torchreid_base().data.transforms.build_transforms(height, width, transforms=list(names),
                                                                 norm_mean=mean, norm_std=std)


def test_transform(height, width, mean, std):
    """torchreid's test transform (resize, to tensor, normalise), without its printout."""
    return build_transforms(height, width, [], mean, std)[1]


# --------------------------------------------------------------------------- patches


class _NumpyWithBool(types.ModuleType):
    """numpy, plus the ``np.bool`` alias that numpy 1.24-1.26 lack."""

    bool = bool

    def __getattr__(self, name):
        return getattr(np, name)


def _patch(owner, name, make):
    """Replace ``owner.<name>`` by ``make(original)`` (wrapped with the original's name and doc), once: the
    replacement is marked, so applying a patch again changes nothing. Returns the replacement."""
    original = getattr(owner, name)
    if getattr(original, "_isgan_patched", False):
        return original
    patched = functools.wraps(original)(make(original))
    patched._isgan_patched = True
    setattr(owner, name, patched)
    return patched


def _patch_eval_cuhk03():
    if hasattr(np, "bool"):
        return

    def make(fn):  # the same code, reading ``np`` from a namespace that has np.bool
        namespace = dict(fn.__globals__, np=_NumpyWithBool("numpy"))
        return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)

    _patch(_submodule("metrics.rank"), "eval_cuhk03", make)


def _patch_load_checkpoint():
    def make(original):
        def load_checkpoint(fpath):
            if fpath is not None and os.path.isfile(fpath) and storage.is_safetensors(fpath):
                return storage.load_checkpoint(fpath)  # {'state_dict': tensors, 'metadata': {...}}
            if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.4 loads pickles unrestricted
                return original(fpath)
            with torch.serialization.safe_globals(storage.numpy_safe_globals()):
                return original(fpath)
        return load_checkpoint

    _submodule("utils").load_checkpoint = _patch(_submodule("utils.torchtools"), "load_checkpoint", make)


def _patch_feature_extractor():
    def make(init):
        signature = inspect.signature(init)

        def __init__(self, *args, **kwargs):
            if "device" not in signature.bind_partial(self, *args, **kwargs).arguments:
                kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
            init(self, *args, **kwargs)
        return __init__

    _patch(_submodule("utils.feature_extractor").FeatureExtractor, "__init__", make)


def _patch_read_image():
    for module in (_submodule("utils.tools"), _submodule("utils"), _submodule("data.datasets.dataset")):
        _patch(module, "read_image", lambda original: lambda path: image_files.read_image(path))


# (check, names of the datasets whose summary table was printed) of the innermost checking_image_datasets block.
# torchreid's ImageDataManager builds its datasets itself and passes them no argument of ours, so the block's check
# reaches ImageDataset.__init__ through this context variable: scoped to the block (and to its thread or task)
_dataset_checking = contextvars.ContextVar("isgan_dataset_checking", default=None)


@contextlib.contextmanager
def checking_image_datasets(check):
    """While active, each torchreid image dataset built passes its lists through
    ``check(name, mode, {"train"/"query"/"gallery": list}, {split: folder or None})`` -> lists
    (see :class:`isgan_torchreid.data.images.ImageCheck`) before torchreid counts its identities; and each
    dataset prints its summary table (``=> Loaded <name>``, the ids/images/cameras of its splits) once,
    where torchreid's ``ImageDataManager`` prints it for the training and again for the test build of a
    dataset that is both a source and a target."""
    token = _dataset_checking.set((check, set()))
    try:
        yield check
    finally:
        _dataset_checking.reset(token)


def dataset_name(dataset):
    """The name a torchreid dataset object is registered under (its class name when it is not)."""
    names = [name for name, cls in image_dataset_registry().items() if cls is type(dataset)]
    return names[0] if names else type(dataset).__name__


def _patch_image_dataset_init():
    def make(init):
        def __init__(self, train, query, gallery, **kwargs):
            checking = _dataset_checking.get()
            if checking is not None:
                check, summaries_shown = checking
                # torchreid's dataset classes set train_dir, query_dir, gallery_dir before calling this
                folders = {split: getattr(self, f"{split}_dir", None) for split in ("train", "query", "gallery")}
                lists = check(dataset_name(self), kwargs.get("mode", "train"),
                              {"train": train, "query": query, "gallery": gallery}, folders)
                train, query, gallery = lists["train"], lists["query"], lists["gallery"]
                if kwargs.get("verbose", True):
                    name = dataset_name(self)
                    kwargs["verbose"] = name not in summaries_shown  # torchreid's summary table, once
                    summaries_shown.add(name)
            init(self, train, query, gallery, **kwargs)
        return __init__

    _patch(_submodule("data.datasets.dataset").ImageDataset, "__init__", make)


def apply_patches():
    """Apply every compatibility patch (idempotent)."""
    _patch_eval_cuhk03()
    _patch_load_checkpoint()
    _patch_feature_extractor()
    _patch_read_image()
    _patch_image_dataset_init()
