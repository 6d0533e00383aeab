"""IS-GAN (paper Sec. 3.3, Fig. 2): the MGN-like baseline plus E_U, G, D_D and D_C.

``forward`` is the baseline's (E_R only), so torchreid can train stage 1 and evaluate the model
unchanged; :meth:`ISGAN.encode` and :meth:`ISGAN.decode` give a trained model's codes and images; IS-GAN's
training steps (:mod:`isgan_torchreid.engine.objective`) call the modules one by one, each wrapped for DDP.
One ImageNet ResNet is loaded and deep-copied into the trunk and all part branches of E_R and E_U.

``eu_input`` (MODEL.EU_INPUT): ``rgb``, E_U reads the trunk map of the image (paper); ``gray``, of the image's
luminance (:meth:`ISGAN.nuisance_input`), as DG-Net's structure encoder reads a grey
image: E_U can still carry pose, view, background layout and light, but colour, the largest share of what tells
persons apart, only the identity code can give G; ``contrast``, of its local contrast (the luminance with each
neighbourhood's mean and spread taken out): shapes and edges without the brightness of a shirt; ``blur``, of its
luminance low-passed: layout, pose and light without a person's patterns and prints.

``eu_trunk`` (MODEL.EU_TRUNK): ``shared``, E_U reads the trunk E_R reads (paper); ``frozen``, a copy of it
(``nuisance_trunk``) taken when stage 2 or 3 starts (:meth:`ISGAN.freeze_nuisance_trunk`) and never trained, so
that stage 3, which trains the trunk for E_R, leaves the map E_U and G learned in stage 2 where it was;
``separate``, E_U's own trunk (``encoder_u.stem``), a copy of the trunk as built (ImageNet's or random weights)
trained with E_U by G's losses alone: E_U reads a map that was never trained to tell identities apart.

``identity_teacher`` (LOSS.R_FAKE_JUDGE teacher): a frozen copy of the trunk and E_R (``identity_teacher``), taken
when stage 3 starts (:meth:`ISGAN.freeze_identity_teacher`): E_R as stages 1-2 left it, trained on real images
only, which judges whether a cross-identity fake shows the identity it was drawn with (:meth:`ISGAN.teacher_logits`).
"""
import copy
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ISGANError
from .branches import load_resnet, validate_parts
from .discriminator import Discriminator
from .encoders import NuisanceEncoder
from .frozen import frozen
from .generator import Generator, check_image_size
from .images import NUISANCE_INPUTS
from .mgn import MGN, check_loss

__all__ = ["EU_INPUTS", "EU_TRUNKS", "ISGAN", "check_config", "isgan_r50", "isgan_r34", "isgan_r18"]

EU_INPUTS = ("rgb", *NUISANCE_INPUTS)  # the image itself (paper), or one of its reductions
EU_TRUNKS = ("shared", "frozen", "separate")
G_STRIPES = {"none": (), "identity": ("identity",), "both": ("identity", "nuisance")}  # MODEL.G_STRIPES -> codes


class ISGAN(MGN):
    """MGN (trunk + E_R, same forward) plus E_U, G and D (``encoder_u``, ``generator``, ``discriminator``)."""

    # copied from the trunk (and E_R) as a stage starts, not loaded: E_U's own trunk, the identity teacher
    stage_start_state = ("nuisance_trunk.", "identity_teacher.")

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = True,
        parts=(1, 2, 3),
        id_dim: int = 256,
        nid_dim: int = 64,
        noise_dim: int = 128,
        height: int = 384,
        width: int = 128,
        eu_pool: str = "avg",
        loss: str = "softmax",
        eu_shared: bool = False,
        eu_input: str = "rgb",
        eu_trunk: str = "shared",
        g_init: str = "fan_in",
        g_dropout: float = 0.2,
        g_class_input: bool = True,
        g_width: int = 512,
        d_width: int = 256,
        g_stripes: str = "none",
        eu_grid=None,
        nuisance_adversary: bool = False,
        identity_teacher: bool = False,
    ):
        # check cheap settings before loading (possibly downloading) the ResNet
        check_loss(loss)
        parts = validate_parts(parts)
        check_image_size(height, width)
        if g_stripes not in G_STRIPES:
            raise ValueError(f"unknown G stripes {g_stripes!r} (MODEL.G_STRIPES); use one of {', '.join(G_STRIPES)}")
        if eu_input not in EU_INPUTS:
            raise ValueError(f"unknown E_U input {eu_input!r} (MODEL.EU_INPUT); use one of {', '.join(EU_INPUTS)}")
        if eu_trunk not in EU_TRUNKS:
            raise ValueError(f"unknown E_U trunk {eu_trunk!r} (MODEL.EU_TRUNK); use one of {', '.join(EU_TRUNKS)}")
        resnet = load_resnet(backbone, pretrained)
        super().__init__(num_classes, backbone, pretrained, parts, id_dim, loss, resnet=resnet)
        stem = copy.deepcopy(self.backbone) if eu_trunk == "separate" else None  # the trunk before stage 1
        self.encoder_u = NuisanceEncoder(resnet, parts, nid_dim, pool=eu_pool, shared=eu_shared, grid=eu_grid,
                                         stem=stem)
        self.eu_input = eu_input  # what E_U reads: the trunk map of the image or of its luminance (nuisance_input)
        # E_U's own frozen trunk (MODEL.EU_TRUNK frozen), or None: E_U reads the trunk E_R reads
        self.nuisance_trunk = copy.deepcopy(self.backbone) if eu_trunk == "frozen" else None
        # the frozen trunk + E_R that judges the fakes of L_R_fake (LOSS.R_FAKE_JUDGE teacher), or None
        self.identity_teacher = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone),
                                               "encoder_r": copy.deepcopy(self.encoder_r)}).requires_grad_(False) \
            if identity_teacher else None
        k = self.encoder_r.num_features
        nuisance_dim = nid_dim * (k + self.encoder_u.num_cells)  # F * p_U
        self.generator = Generator(num_classes, id_dim * k, nuisance_dim, noise_dim,
                                   height, width, dropout=g_dropout, init=g_init, class_input=g_class_input,
                                   base_channels=g_width, parts=parts, stripe_codes=G_STRIPES[g_stripes],
                                   grid=self.encoder_u.grid)
        # with the nuisance adversary (LOSS.LAMBDA_ADV_U), D also classifies E_U's codes
        self.discriminator = Discriminator(num_classes, base_channels=d_width,
                                           code_dim=nuisance_dim if nuisance_adversary else 0)

    def nuisance_input(self, imgs: Tensor, trunk: Tensor) -> Tensor:
        """What E_U reads (MODEL.EU_INPUT): ``trunk``, the images' trunk map (rgb), or the trunk map of their
        luminance (gray), its local contrast (contrast) or its low-passed luminance (blur), (B, C4, H/16, W/16).
        That pass runs without gradient and with the trunk's running BatchNorm statistics, so in stage 3 the trunk
        that E_R's test descriptor depends on learns from real images only. With E_U's frozen trunk
        (MODEL.EU_TRUNK frozen) every input is read by that copy, the same way; with its separate trunk (separate)
        E_U is given the image itself (B, 3, H, W), which its stem reads with gradient."""
        separate = self.encoder_u.stem is not None
        if self.eu_input == "rgb" and self.nuisance_trunk is None and not separate:
            return trunk
        image = imgs if self.eu_input == "rgb" else NUISANCE_INPUTS[self.eu_input](imgs)
        if separate:
            return image
        net = self.backbone if self.nuisance_trunk is None else self.nuisance_trunk
        with torch.no_grad(), frozen(net):
            return net(image)

    def freeze_nuisance_trunk(self) -> None:
        """E_U's own trunk (MODEL.EU_TRUNK frozen) becomes a copy of the trunk as it is now, weights and running
        statistics; nothing without one."""
        if self.nuisance_trunk is not None:
            self.nuisance_trunk.load_state_dict(self.backbone.state_dict())

    def freeze_identity_teacher(self) -> None:
        """The identity teacher (LOSS.R_FAKE_JUDGE teacher) becomes a copy of the trunk and E_R as they are now,
        weights and running statistics; nothing without one."""
        if self.identity_teacher is not None:
            self.identity_teacher.backbone.load_state_dict(self.backbone.state_dict())
            self.identity_teacher.encoder_r.load_state_dict(self.encoder_r.state_dict())

    def teacher_logits(self, imgs: Tensor) -> List[Tensor]:
        """The identity teacher's K classifier logits (B, C) of normalised images (B, 3, H, W), without gradient,
        BatchNorm on its running statistics."""
        if self.identity_teacher is None:
            raise ISGANError("this IS-GAN model has no identity teacher: build it with LOSS.R_FAKE_JUDGE teacher")
        teacher = self.identity_teacher
        with torch.no_grad(), frozen(teacher):
            _, logits = teacher.encoder_r(teacher.backbone(imgs))
        return logits

    def trunk_maps(self, imgs: Tensor) -> List[Tensor]:
        """The trunk's maps of normalised images (B, 3, H, W) after each of its last three stages: layer1
        (B, C1, H/4, W/4), layer2 (B, C2, H/8, W/8) and its output, layer3's first block (B, C4, H/16, W/16)."""
        maps, x = [], imgs
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i >= len(self.backbone) - 3:
                maps.append(x)
        return maps

    def encode(self, imgs: Tensor) -> Tuple[Tensor, Tensor]:
        """Normalised images (B, 3, H, W) -> identity code (B, K*p_R), E_R's features, and nuisance code
        (B, F*p_U), E_U's (its mean in eval mode, a sample in train mode; F = K parts + the grid's cells)."""
        trunk = self.backbone(imgs)  # (B, C4, H/16, W/16)
        identity, _ = self.encoder_r(trunk)
        nuisance, _, _ = self.encoder_u(self.nuisance_input(imgs, trunk))
        return identity, nuisance

    def identity_class(self, identity: Tensor) -> Tensor:
        """(B,) training class of identity codes (B, K*p_R): argmax of the mean of E_R's K classifiers' logits."""
        parts = identity.view(identity.size(0), self.encoder_r.num_features, -1)  # (B, K, p_R)
        logits = [classify(parts[:, k]) for k, classify in enumerate(self.encoder_r.classifiers)]
        return torch.stack(logits).mean(0).argmax(1)

    def decode(self, identity: Tensor, nuisance: Tensor, labels: Tensor,
               noise: Optional[Tensor] = None) -> Tensor:
        """G(identity (B, K*p_R), nuisance (B, F*p_U), labels (B,) [, noise (B, noise_dim)]) -> (B, 3, H, W) in
        G's output space (:func:`~.images.image_to_unit` turns it into RGB); noise drawn when None."""
        return self.generator(identity, nuisance, labels, noise=noise)


def check_config(cfg) -> None:
    """The config rules of an ISGAN model (MODEL.NAME isgan), whichever stages run: G's image size, E_U's grid,
    G's stripe conditioning; ISGANError naming the key and the fix."""
    for key in ("HEIGHT", "WIDTH"):
        if cfg.DATA[key] % 16:
            raise ISGANError(f"DATA.{key} = {cfg.DATA[key]} must be divisible by 16 for the generator "
                             f"(at least four x2 upsamplings); e.g. 384x128, 256x128, 128x64 or 64x32")
    grid = list(cfg.MODEL.EU_GRID)
    if grid and (len(grid) != 2 or not all(isinstance(n, int) and n >= 1 for n in grid)):
        raise ISGANError(f"MODEL.EU_GRID = {grid}: give [] (off) or [rows, cols] of positive integers, "
                         f"e.g. [4, 2]")
    if grid and (grid[0] > cfg.DATA.HEIGHT // 16 or grid[1] > cfg.DATA.WIDTH // 16):
        raise ISGANError(f"MODEL.EU_GRID = {grid} has more cells than E_U's map of a {cfg.DATA.HEIGHT}x"
                         f"{cfg.DATA.WIDTH} image ({cfg.DATA.HEIGHT // 16}x{cfg.DATA.WIDTH // 16}); use at "
                         f"most [{cfg.DATA.HEIGHT // 16}, {cfg.DATA.WIDTH // 16}]")
    if cfg.MODEL.G_STRIPES != "none" and max(cfg.MODEL.PARTS) < 2:
        raise ISGANError(f"MODEL.G_STRIPES {cfg.MODEL.G_STRIPES} draws stripe features, but MODEL.PARTS "
                         f"{cfg.MODEL.PARTS} has no branch with stripes: set MODEL.PARTS e.g. [1, 2, 3], or "
                         f"MODEL.G_STRIPES none")


def isgan_r50(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid factory: IS-GAN on ResNet-50 (``use_gpu`` is accepted for torchreid and unused)."""
    return ISGAN(num_classes, backbone="resnet50", pretrained=pretrained, loss=loss, **kwargs)


def isgan_r34(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid factory: IS-GAN on ResNet-34 (``use_gpu`` is accepted for torchreid and unused)."""
    return ISGAN(num_classes, backbone="resnet34", pretrained=pretrained, loss=loss, **kwargs)


def isgan_r18(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid factory: IS-GAN on ResNet-18 (``use_gpu`` is accepted for torchreid and unused)."""
    return ISGAN(num_classes, backbone="resnet18", pretrained=pretrained, loss=loss, **kwargs)
