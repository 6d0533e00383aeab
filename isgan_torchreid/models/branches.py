"""ResNet trunk cut at conv4_1 and MGN-style part branches (paper Sec. 3.2 and 4.1).

The shared trunk is a torchvision ResNet up to the first block of layer3 ("cropped at conv4_1").
Each part branch is a copy of the rest of layer3 followed by layer4; a part-n branch pools its
map into one global feature and, for n > 1, n horizontal stripes. E_R, E_U and the MGN baseline
all build their branches here.
"""
import copy
import os
from http.client import HTTPException
from typing import List, Tuple

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from ..errors import ISGANError

__all__ = [
    "RESNETS",
    "load_resnet",
    "build_trunk",
    "validate_parts",
    "stripe_bounds",
    "part_layout",
    "part_pool",
    "PartBranches",
    "kaiming_init_",
]

# name -> (constructor, ImageNet weights)
RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def load_resnet(name: str, pretrained: bool) -> torchvision.models.ResNet:
    """Build a torchvision ResNet; with ImageNet weights (torch hub cache) when ``pretrained``."""
    if name not in RESNETS:
        raise ValueError(
            f"unknown backbone {name!r} (MODEL.BACKBONE); choose one of {', '.join(RESNETS)}"
        )
    build, weights = RESNETS[name]
    if not pretrained:
        return build(weights=None)
    try:
        return build(weights=weights)
    except (OSError, RuntimeError, HTTPException) as err:  # URLError is an OSError
        file_name = os.path.basename(weights.url)
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        reason = " ".join(str(err).split())  # keep the message on one line
        raise ISGANError(
            f"could not load the ImageNet weights of {name} ({type(err).__name__}: {reason}); "
            f"download {weights.url} and put {file_name} in {folder}, "
            f"or set MODEL.PRETRAINED False to start from random weights"
        ) from err


def build_trunk(resnet: torchvision.models.ResNet) -> nn.Sequential:
    """Shared backbone: a copy of conv1 .. layer2 plus layer3[0]; output (B, C4, H/16, W/16)."""
    return nn.Sequential(
        copy.deepcopy(resnet.conv1),
        copy.deepcopy(resnet.bn1),
        copy.deepcopy(resnet.relu),
        copy.deepcopy(resnet.maxpool),
        copy.deepcopy(resnet.layer1),
        copy.deepcopy(resnet.layer2),
        copy.deepcopy(resnet.layer3[0]),
    )


def validate_parts(parts) -> tuple:
    """Return ``parts`` as a tuple; it must be a non-empty sequence of distinct positive ints."""
    ok = (
        isinstance(parts, (tuple, list))
        and len(parts) > 0
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in parts)
        and len(set(parts)) == len(parts)
    )
    if not ok:
        raise ValueError(
            f"invalid part branches {parts!r} (MODEL.PARTS); give a non-empty tuple of distinct "
            f"positive ints, one per branch, e.g. (1, 2, 3)"
        )
    return tuple(parts)


def stripe_bounds(height: int, n: int) -> List[Tuple[int, int]]:
    """Row ranges [start, stop) of n horizontal stripes of a height-row map, top to bottom.

    The bins of torch's adaptive pooling: stripe i covers rows floor(i*H/n) to ceil((i+1)*H/n),
    so when H is not divisible by n neighbouring stripes share a row.
    """
    # ceil as (a + n - 1) // n: stays exact where a tracer records the division of non-negative ints
    return [((i * height) // n, ((i + 1) * height + n - 1) // n) for i in range(n)]


def part_layout(parts) -> List[Tuple[int, List[int]]]:
    """[(index of its global feature, indices of its stripe features)] per branch n of ``parts``, in the order
    :class:`PartBranches` pools them (a branch n == 1 has no stripes): for (1, 2, 3), [(0, []), (1, [2, 3]),
    (4, [5, 6, 7])], K = 8."""
    layout, start = [], 0
    for n in parts:
        stripes = list(range(start + 1, start + 1 + n)) if n > 1 else []
        layout.append((start, stripes))
        start += 1 + len(stripes)
    return layout


def part_pool(x: torch.Tensor, n: int, pool: str = "max") -> torch.Tensor:
    """Pool a (B, C, H, W) map into [global, stripe_0 .. stripe_{n-1}] (top to bottom).

    Returns (B, 1, C) for n == 1 and (B, 1 + n, C) otherwise.

    The stripes are the explicit row slices of :func:`stripe_bounds` (the bins of torch's adaptive
    pooling, so the values are those of ``F.adaptive_max_pool2d(x, (n, 1))``), reduced with
    ``amax``/``mean``: any map size exports to ONNX and traces to TorchScript, where adaptive pooling
    to a size that does not divide the input fails. Training, evaluation and export share this code.
    """
    reduce = torch.amax if pool == "max" else torch.mean
    rows = [(0, x.shape[2])] + (stripe_bounds(x.shape[2], n) if n > 1 else [])  # global, then stripes
    pooled = [reduce(x[:, :, start:stop], dim=(2, 3)) for start, stop in rows]  # 1 (+n) x (B, C)
    return torch.stack(pooled, dim=1)  # (B, 1 (+n), C)


def _stride_one(layer4: nn.Sequential) -> nn.Sequential:
    """A copy of layer4 whose first block keeps the resolution (stride 1), weights unchanged."""
    layer = copy.deepcopy(layer4)
    block = layer[0]
    strided_conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    strided_conv.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    block.stride = 1
    return layer


class PartBranches(nn.Module):
    """One MGN-style branch per entry n of ``parts``: a global feature, plus n stripes if n > 1.

    Features are ordered branch by branch (in the order of ``parts``), global first, then stripes
    top to bottom; for parts (1, 2, 3): [g_p1, g_p2, p2_s0, p2_s1, g_p3, p3_s0, p3_s1, p3_s2].
    ``shared``: one branch (layer4 at stride 1) whose map every entry of ``parts`` pools, the same K
    features at a third of the cost for parts (1, 2, 3) (MODEL.EU_BRANCHES shared, E_U only).
    """

    def __init__(self, resnet: torchvision.models.ResNet, parts=(1, 2, 3), pool: str = "max",
                 shared: bool = False):
        super().__init__()
        self.parts = validate_parts(parts)
        if pool not in ("max", "avg"):
            raise ValueError(
                f"unknown pooling {pool!r} for the part branches (MODEL.EU_POOL); use 'max' or 'avg'"
            )
        self.pool = pool
        self.shared = shared
        self.out_channels = resnet.fc.in_features  # 2048 (resnet50) or 512 (resnet18/34)
        self.branches = nn.ModuleList(
            nn.Sequential(
                copy.deepcopy(resnet.layer3[1:]),  # conv4_2 ..
                copy.deepcopy(resnet.layer4) if n == 1 and not shared else _stride_one(resnet.layer4),  # conv5
            )
            for n in (self.parts[:1] if shared else self.parts)
        )
        layout = part_layout(self.parts)
        self.global_indices = [index for index, _ in layout]
        self.local_indices = [index for _, stripes in layout for index in stripes]

    @property
    def num_features(self) -> int:
        """K: the number of pooled features (globals + stripes)."""
        return len(self.global_indices) + len(self.local_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C4, h, w) trunk map -> (B, K, C5) pooled features."""
        return self.pooled_and_map(x)[0]

    def pooled_and_map(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C4, h, w) trunk map -> (B, K, C5) pooled features and the last branch's map (B, C5, h', w')
        (the shared branch's when ``shared``; h', w' = h, w for a branch with stripes, else h/2, w/2)."""
        if self.shared:
            maps = [self.branches[0](x)] * len(self.parts)  # (B, C5, h, w), pooled by every entry
        else:
            maps = [branch(x) for branch in self.branches]
        feats = [part_pool(m, n, self.pool) for m, n in zip(maps, self.parts)]
        return torch.cat(feats, dim=1), maps[-1]  # (B, K, C5), (B, C5, h, w)


def kaiming_init_(module: nn.Module) -> None:
    """Reference init of new layers: conv kaiming fan_in, linear fan_out (bias 0), BN2d N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
