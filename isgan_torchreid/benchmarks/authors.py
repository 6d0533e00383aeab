"""The authors' IS-GAN code, loaded from a user's checkout and patched in memory, for same-run benchmarks only.

The authors' repository (https://github.com/cvlab-yonsei/ISGAN, PyTorch 1.0) has no licence, so nothing of
it ships with this project: the user clones it and passes the folder (``tools/benchmark.py --reference DIR``).
Its files are never modified. :func:`load` imports its ``opt``, ``network`` and ``loss`` modules from DIR,
and :class:`AuthorsStage` runs one training iteration of a stage as their ``Main.train`` loop does.

Run-time patches (ours, applied to their module objects in memory, each needed on current PyTorch/numpy):

1. **Command line.** ``opt.py`` parses ``sys.argv`` at import. It is imported with an argv that holds only
   their own options: ``--device`` (their default picks CUDA whenever present; we pass the benchmark's
   device, which their code only hands to ``.to()`` and ``device=``), ``--batchid``/``--batchimage`` (P and K,
   which their loss bakes in at import) and ``--num_cls``. ``opt.stage`` is set per stage before their
   ``Loss`` is built, since ``get_optimizer`` and ``Loss.forward`` read it.
2. **No download.** ``network.resnet50`` is called with ``pretrained=True``. That downloads ImageNet weights,
   and the argument is deprecated in torchvision. It is replaced by torchvision's ResNet-50 with random
   weights. Timing does not depend on the weights, and our side also runs without pretrained weights.
3. **numpy on lists.** ``np.size``/``np.shape`` are applied to Python lists of modules (Encoder init,
   ``Loss.set_model``, stage-3 ``get_optimizer``) and of tensors that require grad (``Loss.KL_loss``).
   numpy >= 1.24 refuses both (ragged array; "Can't call numpy() on Tensor that requires grad"). The
   ``np`` of ``network``, ``loss`` and ``utils.get_optimizer`` is replaced by :class:`_NumpyOnLists`.
   It gives a list's length, which is all they use, and is numpy itself for everything else
   (``np.random.normal`` in the reparameterisation).
4. **D's class pool.** ``Discriminator.avgp = AvgPool2d((12, 4))`` runs on an 11x3 map. Current PyTorch
   raises "Output size is too small". PyTorch 1.0 returned the global mean, so the attribute is replaced by
   ``AdaptiveAvgPool2d(1)``, which gives the same output.
5. **Quiet loss prints.** ``Loss.forward`` prints its losses every iteration (``'\\r...'``). The print still
   runs, and its ``.cpu()`` copies are timed, but its text goes to a sink so the tables stay readable.

Their modules have top-level names (``opt``, ``network``, ``loss``, ``utils``). They are imported with DIR
first on ``sys.path``, and ``sys.modules``, ``sys.path`` and ``sys.argv`` are restored afterwards.
"""
import contextlib
import importlib
import os
import sys

import numpy as np
import torch
import torchvision

from ..errors import ISGANError

CLONE = "git clone https://github.com/cvlab-yonsei/ISGAN"
# the files :func:`load` imports (utils/get_optimizer.py through loss.py)
REQUIRED_FILES = ("opt.py", "network.py", "loss.py", os.path.join("utils", "get_optimizer.py"))
# their fixed setting (reference notes B5): pool kernels and G's output are tied to ResNet-50 at 384x128
BACKBONE, HEIGHT, WIDTH = "resnet50", 384, 128
_MODULES = ("opt", "network", "loss", "utils", "utils.get_optimizer")


def _not_a_checkout(path, why):
    return ISGANError(f"--reference {path} is not a checkout of the authors' code ({why}); run `{CLONE}` and "
                      f"pass that folder")


def check_checkout(path):
    """Raise an :class:`ISGANError` unless ``path`` holds the files :func:`load` imports."""
    if not os.path.isdir(path):
        raise _not_a_checkout(path, "no such folder")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise _not_a_checkout(path, f"{', '.join(missing)} missing")


def check_setting(backbone, height, width, batch, k):
    """Raise an :class:`ISGANError` unless the benchmark setting is one the authors' code can run."""
    if (backbone, height, width) != (BACKBONE, HEIGHT, WIDTH):
        raise ISGANError(f"--reference needs the authors' fixed setting {BACKBONE} at {HEIGHT}x{WIDTH}, not "
                         f"{backbone} at {height}x{width}; set MODEL.BACKBONE {BACKBONE} DATA.HEIGHT {HEIGHT} "
                         f"DATA.WIDTH {WIDTH}")
    if batch % k or batch // k < 2:
        raise ISGANError(f"--reference needs --batch = P x SAMPLER.K with P >= 2 (their partner draw never ends "
                         f"for P = 1), not --batch {batch} with SAMPLER.K {k}; e.g. --batch {2 * k}")


class _NumpyOnLists:
    """numpy, except that ``size``/``shape`` of a Python list or tuple give its length (patch 3)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def size(a):
        return len(a) if isinstance(a, (list, tuple)) else np.size(a)

    @staticmethod
    def shape(a):
        return (len(a),) if isinstance(a, (list, tuple)) else np.shape(a)


def _random_resnet50(pretrained=False, **kwargs):
    """torchvision's ResNet-50 with random weights, whatever ``pretrained`` says (patch 2)."""
    return torchvision.models.resnet50(weights=None, **kwargs)


class _Sink:
    """A text stream that drops what is written (patch 5)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@contextlib.contextmanager
def _imported_from(path, argv):
    """Import top-level modules from ``path`` with ``sys.argv = argv``; leave sys.modules/path/argv as found."""
    saved_modules = {name: sys.modules.pop(name) for name in _MODULES if name in sys.modules}
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, path)
    try:
        yield
    finally:
        for name in _MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved_modules)
        sys.argv, sys.path[:] = saved_argv, saved_path


class AuthorsCode:
    """Their ``opt`` namespace and their ``network`` and ``loss`` modules, patched (patches 1-3)."""

    def __init__(self, opt, network, loss, device):
        self.opt, self.network, self.loss, self.device = opt, network, loss, device


def load(path, device, batch_id, batch_image, num_classes):
    """Import the authors' code from the checkout ``path`` for ``device`` and P x K = batch_id x batch_image."""
    check_checkout(path)
    path = os.path.abspath(path)
    argv = ["opt.py", "--device", str(device), "--batchid", str(batch_id), "--batchimage", str(batch_image),
            "--num_cls", str(num_classes)]
    with _imported_from(path, argv):
        try:
            opt = importlib.import_module("opt").opt
            network = importlib.import_module("network")
            loss = importlib.import_module("loss")
            get_optimizer = importlib.import_module("utils.get_optimizer")
        except (Exception, SystemExit) as e:  # their code, run at import: any failure means a wrong folder
            raise _not_a_checkout(path, f"importing it failed: {e!r}") from None
    for name, module in (("Model", network), ("Loss", loss), ("get_optimizer", get_optimizer)):
        if not hasattr(module, name):
            raise _not_a_checkout(path, f"{module.__name__}.py has no {name}")
    network.resnet50 = _random_resnet50
    for module in (network, loss, get_optimizer):
        module.np = _NumpyOnLists()
    return AuthorsCode(opt, network, loss, torch.device(device))


class AuthorsStage:
    """One stage of their training as ``main.py`` runs it, with a fresh model (each stage is a new process there).

    ``step(imgs, pids)`` is one iteration of their ``Main.train`` loop: move the batch to the device, zero
    the optimisers, ``Loss.forward`` (which, for stages 2-3, also runs the D step), backward, Adam step.
    """

    def __init__(self, code, stage):
        self.code, self.stage = code, stage
        code.opt.stage = stage  # patch 1: read by get_optimizer (in Loss) and by Loss.forward
        model = code.network.Model()
        model.D.avgp = torch.nn.AdaptiveAvgPool2d(1)  # patch 4
        self.model = model.to(code.device).train()  # Main.__init__, then Main.train once per epoch
        self.loss = code.loss.Loss(self.model)

    def step(self, imgs, pids):
        loss = self.loss
        inputs, labels = imgs.to(self.code.device), pids.to(self.code.device)
        with contextlib.redirect_stdout(_Sink()):  # patch 5
            if self.stage > 1:
                loss.optimizer_D.zero_grad()
            loss.optimizer.zero_grad()
            total = loss(inputs, labels, 0)  # stages 2-3: the D step runs in here
            total.backward()
            loss.optimizer.step()
