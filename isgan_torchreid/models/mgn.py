"""MGN-like baseline (paper Sec. 3.2, ref. [12]): trunk cut at conv4_1 + identity encoder E_R.

In train mode the model returns what torchreid's engines expect: K logits for
ImageSoftmaxEngine (the criterion is applied to each), or (K logits, global features) for
ImageTripletEngine. In eval mode it returns the descriptor: the K reduced BN features
concatenated (B, K*feat_dim), not normalised.
"""
from typing import Optional

import torch
import torchvision
from torch import nn

from .branches import build_trunk, load_resnet, validate_parts
from .encoders import IdentityEncoder

__all__ = ["LOSSES", "check_loss", "MGN", "mgn_r50", "mgn_r18"]

LOSSES = ("softmax", "triplet")


def check_loss(loss: str) -> None:
    """Raise ValueError unless ``loss`` is one of the train-mode output formats in LOSSES."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} for MGN/ISGAN; choose one of {', '.join(LOSSES)}")


class MGN(nn.Module):
    """Trunk + E_R; train: K logits (+ global features for triplet); eval: the descriptor."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool = True,
        parts=(1, 2, 3),
        feat_dim: int = 256,
        loss: str = "softmax",
        *,
        resnet: Optional[torchvision.models.ResNet] = None,
    ):
        """``resnet``: a loaded ResNet to copy from (ISGAN shares one); else ``backbone`` is loaded."""
        super().__init__()
        check_loss(loss)
        parts = validate_parts(parts)
        self.loss = loss
        if resnet is None:
            resnet = load_resnet(backbone, pretrained)
        self.backbone = build_trunk(resnet)
        self.encoder_r = IdentityEncoder(resnet, num_classes, parts, feat_dim)

    @property
    def descriptor_dim(self) -> int:
        """Length of the eval-mode descriptor (K * feat_dim)."""
        return self.encoder_r.num_features * self.encoder_r.feat_dim

    def forward(self, x: torch.Tensor):
        """(B, 3, H, W) -> eval: (B, K*feat_dim); train: K logits [, K_global x (B, feat_dim)]."""
        feat, logits = self.encoder_r(self.backbone(x))  # (B, K*feat_dim), K x (B, C)
        if not self.training:
            return feat
        if self.loss == "softmax":
            return logits
        return logits, self.global_features(feat)

    def global_features(self, feat: torch.Tensor):
        """The descriptor (B, K*feat_dim) -> the global feature of each branch, K_global x (B, feat_dim)."""
        parts = feat.view(feat.shape[0], self.encoder_r.num_features, -1)  # (B, K, feat_dim)
        return [parts[:, k] for k in self.encoder_r.branches.global_indices]


def mgn_r50(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid factory: MGN on ResNet-50 (``use_gpu`` is accepted for torchreid and unused)."""
    return MGN(num_classes, backbone="resnet50", pretrained=pretrained, loss=loss, **kwargs)


def mgn_r18(num_classes, loss="softmax", pretrained=True, use_gpu=True, **kwargs):
    """torchreid factory: MGN on ResNet-18 (``use_gpu`` is accepted for torchreid and unused)."""
    return MGN(num_classes, backbone="resnet18", pretrained=pretrained, loss=loss, **kwargs)
