"""Identity-related encoder E_R and identity-unrelated encoder E_U (paper Sec. 3.2, 3.3, 4.1).

Both sit on the shared trunk and own their part branches. E_R reduces each pooled feature with a
1x1 conv + BN (the test-time descriptor is their concatenation) and classifies it [Eq. 1-2].
E_U maps each pooled feature to a Gaussian (mu, logvar) and samples it by reparameterisation,
which the KL loss [Eq. 5] pulls towards N(0, 1).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .branches import PartBranches, kaiming_init_

__all__ = ["IdentityEncoder", "NuisanceEncoder"]


class IdentityEncoder(nn.Module):
    """E_R: max-pooled part branches, K reductions (1x1 conv + BN, no ReLU) and K classifiers.

    ``num_classes`` 0 builds no classifiers: the deploy encoder, which needs only the descriptor.
    """

    def __init__(
        self,
        resnet: torchvision.models.ResNet,
        num_classes: int,
        parts=(1, 2, 3),
        feat_dim: int = 256,
    ):
        super().__init__()
        self.branches = PartBranches(resnet, parts, pool="max")
        self.feat_dim = feat_dim
        channels = self.branches.out_channels
        self.reductions = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim))
            for _ in range(self.num_features)
        )
        self.classifiers = nn.ModuleList(
            nn.Linear(feat_dim, num_classes) for _ in range(self.num_features if num_classes else 0)
        )
        kaiming_init_(self.reductions)
        kaiming_init_(self.classifiers)

    @property
    def num_features(self) -> int:
        """K: the number of part features."""
        return self.branches.num_features

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(B, C4, h, w) trunk map -> (id feature (B, K*feat_dim), K logits (B, num_classes), none if 0)."""
        pooled = self.branches(x)  # (B, K, C5)
        feats = torch.cat([
            reduce(pooled[:, k, :, None, None]).flatten(1)  # (B, C5, 1, 1) -> (B, feat_dim)
            for k, reduce in enumerate(self.reductions)
        ], dim=1)  # (B, K*feat_dim)
        # the classifiers read the descriptor's slices: every gradient on the parts meets in one tensor
        # (LOSS.CODE_GRAD_CAP caps G's share of it)
        logits = [classify(f) for classify, f in zip(self.classifiers, feats.split(self.feat_dim, dim=1))]
        return feats, logits


class NuisanceEncoder(nn.Module):
    """E_U: part branches (or one shared branch) with K Gaussian heads (mu, logvar), sampled by
    reparameterisation.

    ``grid`` (rows, cols) (MODEL.EU_GRID; None in the paper): E_U also average-pools its last branch's map
    into rows x cols cells and encodes each cell with one more Gaussian head (shared by the cells), so that the
    nuisance code carries a coarse layout (where the person, the occluder and the background's objects are)
    besides the K part features. The code then holds K + rows * cols features of ``feat_dim``.

    ``stem`` (MODEL.EU_TRUNK separate; None in the paper): a trunk of E_U's own that reads the image and gives the
    branches their (B, C4, h, w) map, trained with E_U by G's losses alone.
    """

    def __init__(
        self,
        resnet: torchvision.models.ResNet,
        parts=(1, 2, 3),
        feat_dim: int = 64,
        pool: str = "avg",
        shared: bool = False,
        grid: Optional[Tuple[int, int]] = None,
        stem: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.stem = stem
        self.branches = PartBranches(resnet, parts, pool=pool, shared=shared)
        self.feat_dim = feat_dim
        self.grid = tuple(grid) if grid else None
        channels = self.branches.out_channels
        self.mu = nn.ModuleList(nn.Linear(channels, feat_dim) for _ in range(self.num_features))
        self.logvar = nn.ModuleList(nn.Linear(channels, feat_dim) for _ in range(self.num_features))
        if self.grid:
            self.cell_mu = nn.Linear(channels, feat_dim)
            self.cell_logvar = nn.Linear(channels, feat_dim)

    @property
    def num_cells(self) -> int:
        """rows * cols of the layout grid (0 without one)."""
        return self.grid[0] * self.grid[1] if self.grid else 0

    @property
    def num_features(self) -> int:
        """K: the number of part features."""
        return self.branches.num_features

    def forward(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C4, h, w) trunk map (with a ``stem``: (B, 3, H, W) images) -> z (B, F*feat_dim), mu and logvar
        (B, F, feat_dim); F = K parts, then the grid's cells row by row (F = K without a grid).

        In train mode z = mu + exp(logvar / 2) * eps with eps ~ N(0, 1) drawn from ``generator``
        (torch's default generator when None; it must live on the input's device).
        In eval mode z = mu.
        """
        if self.stem is not None:
            x = self.stem(x)  # (B, C4, h, w)
        pooled, last_map = self.branches.pooled_and_map(x)  # (B, K, C5), (B, C5, h', w')
        mu = torch.stack([head(pooled[:, k]) for k, head in enumerate(self.mu)], dim=1)
        logvar = torch.stack([head(pooled[:, k]) for k, head in enumerate(self.logvar)], dim=1)
        if self.grid:
            cells = F.adaptive_avg_pool2d(last_map, self.grid).flatten(2).transpose(1, 2)  # (B, rows*cols, C5)
            mu = torch.cat([mu, self.cell_mu(cells)], dim=1)  # (B, K + rows*cols, feat_dim)
            logvar = torch.cat([logvar, self.cell_logvar(cells)], dim=1)
        if self.training:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
            z = mu + std * eps  # (B, F, feat_dim)
        else:
            z = mu
        return z.flatten(1), mu, logvar  # (B, F*feat_dim)
