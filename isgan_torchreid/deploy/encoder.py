"""The identity encoder alone: trunk + E_R's part branches and reductions, and its compact weights file.

The test descriptor needs nothing else: no classifiers, no E_U, G or D. An :class:`Encoder` holds
exactly those modules, under the names they have in the full MGN/IS-GAN model (``backbone.*``,
``encoder_r.branches.*``, ``encoder_r.reductions.*``), so the same tensors load into either.

An encoder file (``encoder.safetensors``) is a safetensors file: tensors only, nothing that runs
code when read. Its metadata (strings) holds ``format`` and, JSON-encoded, the encoder spec:

=========  ===============================================================
backbone   resnet50 | resnet34 | resnet18
parts      stripes per branch, e.g. [1, 2, 3] (MODEL.PARTS)
id_dim     reduction size per part feature (MODEL.ID_DIM); descriptor = K x id_dim
height     input height (DATA.HEIGHT)
width      input width (DATA.WIDTH)
mean, std  input normalisation (ImageNet statistics)
flip       descriptor = f(x) + f(hflip(x)) (TEST.FLIP)
normalize  descriptor L2-normalised (TEST.NORMALIZE)
=========  ===============================================================
"""
import json
import os

import torch
from torch import nn
from yacs.config import CfgNode

from .. import storage
from ..config import load_config, trained_by
from ..data.build import IMAGENET_MEAN, IMAGENET_STD
from ..engine import checkpoint as ckpt
from ..engine.evaluation import descriptor
from ..engine.hooks import HookBase
from ..errors import ISGANError
from ..models.branches import RESNETS, build_trunk, load_resnet, validate_parts
from ..models.encoders import IdentityEncoder

__all__ = ["FORMAT", "SPEC_KEYS", "encoder_spec", "Encoder", "Descriptor", "has_identity_encoder",
           "encoder_state", "save_encoder", "EncoderWriter", "read_encoder_file", "load_encoder",
           "load_for_evaluation"]

FORMAT = "isgan-torchreid-encoder/1"
SPEC_KEYS = ("backbone", "parts", "id_dim", "height", "width", "mean", "std", "flip", "normalize")
# the prefixes of the tensors the descriptor depends on, in the full model's state dict
ENCODER_PREFIXES = ("backbone.", "encoder_r.branches.", "encoder_r.reductions.")
# what torchreid's factories (isgan_r50, mgn_r18, ...) build, and the model's default input size
DEFAULT_SPEC = {"parts": [1, 2, 3], "id_dim": 256, "height": 384, "width": 128, "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD, "flip": True, "normalize": True}


def encoder_spec(cfg):
    """The encoder spec of a config (isgan, baseline and mgn models): the checkpoint's ``encoder_spec`` entry."""
    if cfg.MODEL.NAME not in ("isgan", "baseline", "mgn"):
        raise ISGANError(f"MODEL.NAME {cfg.MODEL.NAME} has no IS-GAN/MGN identity encoder to save or load; "
                         f"use torchreid.utils.FeatureExtractor for torchreid's own models")
    return {"backbone": cfg.MODEL.BACKBONE, "parts": list(cfg.MODEL.PARTS), "id_dim": cfg.MODEL.ID_DIM,
            "height": cfg.DATA.HEIGHT, "width": cfg.DATA.WIDTH, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "flip": cfg.TEST.FLIP, "normalize": cfg.TEST.NORMALIZE}


def _check_spec(spec, origin):
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ISGANError(f"{origin}: the encoder spec lacks {', '.join(missing)}; give all of "
                         f"{', '.join(SPEC_KEYS)}")
    if spec["backbone"] not in RESNETS:
        raise ISGANError(f"{origin}: unknown backbone {spec['backbone']!r}; choose one of {', '.join(RESNETS)}")
    validate_parts(tuple(spec["parts"]))
    return {k: spec[k] for k in SPEC_KEYS}


class Encoder(nn.Module):
    """Trunk + E_R without classifiers: (B, 3, H, W) normalised images -> (B, K*id_dim) raw descriptor.

    The output is the model's eval-mode output (un-flipped, un-normalised); :class:`Descriptor` and
    :func:`isgan_torchreid.embed` add the test-time flip and L2 normalisation of ``spec``.
    """

    def __init__(self, spec):
        super().__init__()
        self.spec = _check_spec(spec, "Encoder")
        resnet = load_resnet(self.spec["backbone"], pretrained=False)
        self.backbone = build_trunk(resnet)
        self.encoder_r = IdentityEncoder(resnet, 0, tuple(self.spec["parts"]), self.spec["id_dim"])

    @property
    def descriptor_dim(self) -> int:
        """K * id_dim."""
        return self.encoder_r.num_features * self.encoder_r.feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, _ = self.encoder_r(self.backbone(x))  # (B, K*id_dim), no logits
        return feat


class Descriptor(nn.Module):
    """The descriptor tools/test.py evaluates: ``encoder`` with the spec's flip and L2 normalisation."""

    def __init__(self, encoder: Encoder, flip=None, normalize=None):
        super().__init__()
        self.encoder = encoder
        self.flip = encoder.spec["flip"] if flip is None else flip
        self.normalize = encoder.spec["normalize"] if normalize is None else normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return descriptor(self.encoder, x, self.flip, self.normalize)  # (B, K*id_dim)


def has_identity_encoder(model) -> bool:
    """True for models with the trunk + E_R layout (ISGAN, MGN, Encoder); False for torchreid's own."""
    return isinstance(getattr(model, "encoder_r", None), IdentityEncoder) and hasattr(model, "backbone")


def encoder_state(weights):
    """The descriptor's tensors of a full model's state dict (``module.`` prefixes removed)."""
    weights = ckpt.unwrapped(weights)
    return {k: v for k, v in weights.items() if k.startswith(ENCODER_PREFIXES)}


def load_for_evaluation(model, weights, origin):
    """Copy a state dict into ``model`` to evaluate its descriptor; one ISGANError unless the descriptor loads whole.

    The descriptor's tensors are trunk + E_R branches + reductions for IS-GAN/MGN models, and every tensor but
    the classifiers of another class count (shape differing in the first dimension only) for torchreid's own
    models. A missing, reshaped or unused one is refused; what else does not fit (classifiers of another
    num_classes, an absent E_U/G/D) is skipped with a note. Returns the skipped names.
    """
    weights = ckpt.unwrapped(weights)
    own = model.state_dict()
    if has_identity_encoder(model):
        needed = [k for k in own if k.startswith(ENCODER_PREFIXES)]
        unused = [k for k in weights if k.startswith(ENCODER_PREFIXES) and k not in own]
    else:
        def other_classes(k):  # a classifier's weight (C, D) or bias (C,) of another class count
            theirs, mine = weights[k].shape if k in weights else None, own[k].shape
            return theirs is not None and len(mine) > 0 and theirs[1:] == mine[1:] and theirs[0] != mine[0]
        needed = [k for k in own if not other_classes(k)]
        unused = [k for k in weights if k not in own]
    missing = [k for k in needed if k not in weights]
    reshaped = [k for k in needed if k in weights and weights[k].shape != own[k].shape]
    if missing or reshaped or unused:
        examples = ", ".join((missing + reshaped + unused)[:2])
        raise ISGANError(f"{origin} does not hold the whole descriptor of this {type(model).__name__}: "
                         f"{len(missing)} of its {len(needed)} tensors missing, {len(reshaped)} of another shape, "
                         f"{len(unused)} unused (e.g. {examples}); evaluate it with the config that trained it "
                         f"(--config-file, MODEL.*), or evaluate a checkpoint of this model")
    return ckpt.load_weights(model, weights)


def save_encoder(model, spec, path):
    """Write the identity encoder of ``model`` (ISGAN, MGN or Encoder) to ``path`` as safetensors, atomically.

    ``spec``: a config (its :func:`encoder_spec` is used) or a spec dict with every key of SPEC_KEYS.
    The file holds trunk + E_R branches + reductions (about 4 bytes per parameter) and the spec.
    """
    from safetensors.torch import save_file

    if not has_identity_encoder(model):
        raise TypeError(f"save_encoder: {type(model).__name__} has no trunk + E_R identity encoder")
    spec = _check_spec(encoder_spec(spec) if isinstance(spec, CfgNode) else spec, "save_encoder")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder_state(model.state_dict()).items()}
    metadata = {"format": FORMAT, **{k: json.dumps(spec[k]) for k in SPEC_KEYS}}
    with storage.atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


class EncoderWriter(HookBase):
    """At the end of each stage, the identity encoder alone (trunk + E_R, what the test descriptor needs) as
    ``stage{n}/encoder.safetensors``, with its spec in the file's metadata (:mod:`isgan_torchreid.deploy`)."""

    def __init__(self, spec):
        self.spec = spec  # :func:`encoder_spec` of the run's config

    def after_stage(self):
        e = self.engine
        save_encoder(e.model, self.spec, os.path.join(e.plan.layout.stage_dir(e.stage), "encoder.safetensors"))


def read_encoder_file(path):
    """(tensors, spec) of an encoder file written by :func:`save_encoder`."""
    state = storage.load_checkpoint(path)
    return state["state_dict"], _file_spec(path, state.get("metadata", {}))


def _file_spec(path, metadata):
    if metadata.get("format") != FORMAT:
        raise ISGANError(f"{path} is a safetensors file but not an isgan-torchreid encoder (format "
                         f"{metadata.get('format')!r}, expected {FORMAT!r}); write it with save_encoder")
    return {k: json.loads(metadata[k]) for k in SPEC_KEYS if k in metadata}


def _infer_spec(path, weights):
    """Backbone and id_dim from the tensors' shapes; the rest from DEFAULT_SPEC (what torchreid's factories build)."""
    if "backbone.4.0.conv3.weight" in weights:  # layer1 made of Bottlenecks
        backbone = "resnet50"
    else:  # layer2 has 2 BasicBlocks in ResNet-18, 4 in ResNet-34
        blocks = {k.split(".")[2] for k in weights if k.startswith("backbone.5.")}
        backbone = "resnet34" if len(blocks) == 4 else "resnet18"
    reduction = weights.get("encoder_r.reductions.0.0.weight")  # (id_dim, C5, 1, 1)
    spec = dict(DEFAULT_SPEC, backbone=backbone)
    if reduction is not None:
        spec["id_dim"] = int(reduction.shape[0])
    print(f"=> {path} holds no encoder spec and has no matching config.yaml two folders up: assuming "
          f"{backbone} (from its tensors), MODEL.PARTS {spec['parts']}, {spec['height']}x{spec['width']} input, "
          f"flip {spec['flip']}, normalize {spec['normalize']}; pass spec={{...}} to load_encoder if it was "
          f"trained otherwise")
    return spec


def _checkpoint_spec(path, state, weights):
    """The spec of a checkpoint: an encoder file's metadata, the ``encoder_spec`` entry, else
    OUTPUT_DIR/config.yaml, else inferred from the tensors."""
    if "metadata" in state:
        return _file_spec(path, state["metadata"])
    if isinstance(state.get("encoder_spec"), dict):
        return state["encoder_spec"]
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "config.yaml")
    if "config_hash" in state and os.path.isfile(config):
        try:
            cfg = load_config(config)
        except ISGANError:  # not a config of this version: fall back to the tensors
            cfg = None
        if cfg is not None and trained_by(state, cfg):
            return encoder_spec(cfg)
    return _infer_spec(path, weights)


def _device(device):
    """'auto' -> cuda when available, else cpu; anything else as torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_encoder(path, device="auto", spec=None):
    """An eval-mode :class:`Encoder` from any checkpoint kind, with every descriptor tensor loaded.

    ``path``: an encoder file (``encoder.safetensors``), a checkpoint of this project (``latest.pth.tar``,
    ``model.pth.tar-N``; old ones with a ``model`` entry too) or of torchreid (``{'state_dict': ...}``,
    ``module.`` prefixes). The architecture comes from the file (``encoder_spec`` / metadata), else from
    ``config.yaml`` of the run's OUTPUT_DIR (two folders up, same config hash), else from the tensors'
    shapes with the factories' defaults; ``spec`` (a dict) overrides any of its keys.
    Raises ISGANError when a descriptor tensor is missing or has another shape (no silent skip).
    """
    path = os.fspath(path)
    state = storage.load_checkpoint(path)
    weights = encoder_state(ckpt.model_state(state))
    if not weights:
        raise ISGANError(f"{path} holds no IS-GAN/MGN identity encoder (no backbone.* / encoder_r.* tensors); "
                         f"load_encoder reads isgan/mgn checkpoints, use torchreid.utils.FeatureExtractor "
                         f"for torchreid's own models")
    complete = spec is not None and set(SPEC_KEYS) <= set(spec)
    found = {} if complete else _checkpoint_spec(path, state, weights)
    full = _check_spec({**found, **(spec or {})}, path)
    encoder = Encoder(full)
    own = encoder.state_dict()
    missing = [k for k in own if k not in weights]
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    unused = [k for k in weights if k not in own]  # e.g. a third branch when spec says parts [1, 2]
    if missing or reshaped or unused:
        raise ISGANError(f"{path} does not fit a {full['backbone']} encoder with parts {full['parts']} and id_dim "
                         f"{full['id_dim']}: {len(missing)} tensors missing, {len(reshaped)} of another shape, "
                         f"{len(unused)} unused (e.g. {', '.join((missing + reshaped + unused)[:2])}); pass the "
                         f"architecture it was trained with as spec={{'parts': [...], 'id_dim': ...}}")
    encoder.load_state_dict({k: weights[k] for k in own})
    return encoder.to(_device(device)).eval()
