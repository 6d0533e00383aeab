"""The generative half of a trained IS-GAN: images -> (identity, nuisance) codes -> images.

``gan = load_gan("out/stage2/latest.pth.tar")`` builds the run's IS-GAN (architecture from the run's
``config.yaml``) with every tensor of the checkpoint, in eval mode; then::

    identity, nuisance = gan.encode(images)          # (N, K*p_R) E_R features, (N, K*p_U) E_U means
    fakes = gan.decode(identity, nuisance)           # (N, 3, H, W) RGB in [0, 1] at the model's input size

Decoding is deterministic: E_U's mean (no sampling, Eq. 2), G's noise 0 (its mean), every module in eval
mode. G also takes a one-hot class of the C training identities [Sec. 4.1]; a test image has no such class, so
by default it gets the class E_R's classifiers predict from the identity features being decoded
(:meth:`GAN.predicted_class`), as the figures do. Pass ``classes`` to choose it.

:func:`load_model` builds any checkpoint of this project from the config that trained it (found by
:func:`~isgan_torchreid.engine.checkpoint.checkpoint_config`); tools/visualize.py and the disentanglement
benchmark use it too.
"""
import os

import torch
from torch import Tensor

from .. import storage
from ..data.build import IMAGENET_MEAN, IMAGENET_STD
from ..engine import checkpoint as ckpt
from ..engine import distributed
from ..errors import ISGANError
from ..models import build_model
from ..models.images import image_to_unit
from .embedding import image_tensor, test_transform
from .encoder import _device, load_for_evaluation

__all__ = ["GAN", "load_gan", "load_model"]

GAN_PREFIXES = ("encoder_u.", "generator.")


def load_model(cfg, state, strict, device, origin="the checkpoint"):
    """The model of ``cfg`` with the checkpoint's weights, in eval mode on ``device``.

    ``strict``: every tensor must fit (IS-GAN's pictures need all of E_R, E_U and G); else the descriptor must
    load whole and what else does not fit (another num_classes' classifiers) is skipped and listed
    (:func:`~isgan_torchreid.deploy.encoder.load_for_evaluation`). ``origin`` names the checkpoint in errors.
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PRETRAINED = False  # the checkpoint replaces every weight
    cfg.freeze()
    model = build_model(cfg, state.get("num_classes") or 1)
    weights = ckpt.model_state(state)
    if strict:
        weights = ckpt.unwrapped(weights)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise ISGANError(f"the checkpoint does not fit MODEL.* of its config ({str(e).splitlines()[0]}); "
                             f"pass the config that trained it with --config-file") from None
    else:
        load_for_evaluation(model, weights, origin)
    return model.to(device).eval()


class GAN:
    """A trained IS-GAN's encoders and generator: :meth:`encode` images, :meth:`decode` any mix of codes.

    ``model``: an ISGAN (eval mode is set); ``target_space``: LOSS.TARGET_SPACE, the space of G's output;
    ``height``, ``width``: the model's input size (what :meth:`encode` resizes to and :meth:`decode` returns).
    """

    def __init__(self, model, target_space, height, width):
        self.model = model.eval()
        self.target_space = target_space
        self.spec = {"height": height, "width": width, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        self.parts = tuple(model.encoder_r.branches.parts)
        self.num_features = model.encoder_r.num_features  # K
        self.grid = model.encoder_u.grid  # (rows, cols) of E_U's layout cells (MODEL.EU_GRID), or None
        self.nuisance_features = self.num_features + model.encoder_u.num_cells  # K parts, then the cells
        self._transform = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def images(self, images) -> Tensor:
        """Images as :func:`isgan_torchreid.embed` takes them (paths, PIL images, (H, W, 3) uint8 arrays, or a
        (N, 3, H, W) tensor already through the test transform) -> normalised (N, 3, H, W) on the device."""
        if isinstance(images, Tensor):
            return images.to(self.device)
        if self._transform is None:
            self._transform = test_transform(self.spec)
        return torch.stack([image_tensor(image, self._transform) for image in images]).to(self.device)

    @torch.no_grad()
    def encode(self, images, batch_size: int = 64):
        """images -> identity (N, K*p_R) E_R features, nuisance (N, K*p_U) E_U means; on the device."""
        identity, nuisance = [], []
        for start in range(0, len(images), batch_size):
            ids, nid = self.model.encode(self.images(images[start:start + batch_size]))  # eval: E_U's mean
            identity.append(ids)
            nuisance.append(nid)
        if not identity:
            raise ValueError("GAN.encode: no images given")
        return torch.cat(identity), torch.cat(nuisance)

    @torch.no_grad()
    def predicted_class(self, identity: Tensor) -> Tensor:
        """(N,) class of identity features (N, K*p_R): argmax of the mean of E_R's K classifiers' logits."""
        return self.model.identity_class(identity)

    @torch.no_grad()
    def decode(self, identity: Tensor, nuisance: Tensor, classes=None, batch_size: int = 64) -> Tensor:
        """G(identity, nuisance, class, noise 0) -> (N, 3, H, W) RGB in [0, 1].

        ``classes``: (N,) training classes for G's one-hot input; default :meth:`predicted_class` (a G built with
        MODEL.G_CLASS_INPUT False reads none).
        """
        if identity.size(0) != nuisance.size(0):
            raise ValueError(f"GAN.decode: {identity.size(0)} identity codes but {nuisance.size(0)} nuisance codes")
        out = []
        for start in range(0, identity.size(0), batch_size):
            ids = identity[start:start + batch_size].to(self.device)
            nid = nuisance[start:start + batch_size].to(self.device)
            cls = self.predicted_class(ids) if classes is None else classes[start:start + batch_size].to(self.device)
            noise = ids.new_zeros(ids.size(0), self.model.generator.noise_dim)
            out.append(image_to_unit(self.model.decode(ids, nid, cls, noise), self.target_space))
        return torch.cat(out)


def describe(weights, state):
    """``weights (stage s, epoch e)`` for captions and tables."""
    where = f" (stage {state['stage']}, epoch {state['epoch']})" if "stage" in state else ""
    return f"{weights}{where}"


def gan_from_checkpoint(weights, config_file=None, opts=(), device=None):
    """(GAN, config, checkpoint) of an IS-GAN stage-2/3 checkpoint; one clear error for anything else.

    ``device``: a torch.device, or None for the config's DEVICE."""
    weights = os.fspath(weights)
    if os.path.isfile(weights) and storage.is_safetensors(weights):
        raise ISGANError(f"{weights} is an encoder file (E_R only, no E_U or G); load_gan needs a stage-2 or "
                         f"stage-3 checkpoint of an IS-GAN run (OUTPUT_DIR/stage2/ or stage3/latest.pth.tar)")
    cfg, state = ckpt.checkpoint_config(weights, config_file, opts)
    if cfg.MODEL.NAME != "isgan":
        raise ISGANError(f"{weights} is a {cfg.MODEL.NAME} model without E_U and G: this needs an IS-GAN checkpoint "
                         f"of stage 2 or 3 (load_encoder or visualize.py rank read {cfg.MODEL.NAME} models)")
    if state.get("stage") == 1:
        raise ISGANError(f"{weights} is a stage-1 checkpoint, whose E_U and G are untrained; use a stage-2 or "
                         f"stage-3 checkpoint (OUTPUT_DIR/stage2/ or stage3/)")
    if not any(k.startswith(GAN_PREFIXES) for k in ckpt.model_state(state)):
        raise ISGANError(f"{weights} holds no E_U or G tensors; load_gan needs a stage-2 or stage-3 checkpoint of "
                         f"an IS-GAN run (OUTPUT_DIR/stage2/ or stage3/latest.pth.tar)")
    if device is None:
        device = distributed.select_device(cfg)
    model = load_model(cfg, state, strict=True, device=device)
    return GAN(model, cfg.LOSS.TARGET_SPACE, cfg.DATA.HEIGHT, cfg.DATA.WIDTH), cfg, state


def load_gan(weights, device="auto", config_file=None):
    """An eval-mode :class:`GAN` from a stage-2/3 IS-GAN checkpoint (``OUTPUT_DIR/stage<n>/latest.pth.tar`` or
    ``model.pth.tar-N``), its architecture from the run's config.yaml (or ``config_file``).

    A stage-1 checkpoint, an encoder file or a non-IS-GAN checkpoint raises ISGANError in one line.
    """
    gan, _, _ = gan_from_checkpoint(weights, config_file, device=_device(device))
    return gan
