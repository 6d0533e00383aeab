"""Domain discriminator D_D and class discriminator D_C with a shared trunk (paper Sec. 3.3, 4.1).

Differences from the authors' code (reference notes 1.6, B6, B8), all parameter-count neutral:
- no Tanh on the input: real and generated images must reach D in the same space;
- D_D returns logits (use BCEWithLogits), not Sigmoid probabilities;
- the k4 s1 head convs use 'same' padding (1 before, 2 after), so the patch map keeps the trunk
  size H/32 x W/32 (12x4 at 384x128 instead of the reference's 10x2) and small inputs such as
  128x64 (trunk 4x2) still work;
- D_C is class conv -> LeakyReLU -> global average pool -> FC, with no InstanceNorm in the class
  block (the paper's extra block has one; it has no parameters). The authors' head pools the
  InstanceNorm output directly, whose spatial mean is 0 per channel by construction, so their D_C
  gives the same logits for every image (only the FC bias learns, and L_C carries no gradient to
  G); their AvgPool kernel (12, 4) also exceeds its 11x3 input (B6). Keeping the InstanceNorm and
  pooling after the LeakyReLU is not enough: the mean of LeakyReLU(z) over a zero-mean, unit-variance
  map z is 0.4 mean|z|, one sign-blind shape statistic per channel, and D_C memorises its training
  images without naming new ones. Measured by ``tools/benchmark.py --dc`` (bench_dc.py): D trained
  with the class term alone (SGD lr 0.01, 300 steps of 32) on 8 images of each of the 48 synthperson
  train identities names the other 4 of each with accuracy 0.05-0.07 with that head and 0.92-0.94
  with this one at 128x64 (0.02-0.05 and 0.81-0.82 at 256x128; chance 0.02; seeds 0, 1). Max pools
  did as well at 128x64 (0.93-0.96); the average passes L_C's gradient to every position of a
  generated image's map, the max to one per channel.

With ``code_dim`` (LOSS.LAMBDA_ADV_U > 0; not in the paper), D also holds a linear identity classifier of E_U's
nuisance codes, the adversary that :func:`~isgan_torchreid.losses.isgan.confusion_loss` asks E_U to defeat.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["Discriminator"]

_TRUNK_CHANNELS = (32, 64, 128, 256, 256)


def _same_conv4(cin: int, cout: int) -> nn.Sequential:
    """k4 s1 conv with asymmetric zero padding (1 top/left, 2 bottom/right): keeps the map size."""
    return nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(cin, cout, 4, 1, 0))


class Discriminator(nn.Module):
    """Shared stride-2 trunk with a PatchGAN domain head (D_D) and a classification head (D_C).

    ``base_channels`` (MODEL.D_WIDTH, 256: the authors') is the trunk's last width; every layer's channel
    count scales with it. ``code_dim`` > 0: also an identity classifier of nuisance codes of that size
    (``code_head``).
    """

    def __init__(self, num_classes: int, base_channels: int = 256, code_dim: int = 0):
        super().__init__()
        trunk = [max(1, c * base_channels // 256) for c in _TRUNK_CHANNELS]
        top = trunk[-1]
        # first block without normalisation
        layers = [nn.Conv2d(3, trunk[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(trunk[:-1], trunk[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.patch_head = nn.Sequential(
            _same_conv4(top, top), nn.InstanceNorm2d(top), nn.LeakyReLU(0.2, inplace=True), _same_conv4(top, 1)
        )
        # no InstanceNorm: see module doc
        self.class_conv = nn.Sequential(_same_conv4(top, top), nn.LeakyReLU(0.2, inplace=True))
        self.class_pool = nn.AdaptiveAvgPool2d(1)
        self.class_fc = nn.Linear(top, num_classes)
        self.code_head = nn.Linear(code_dim, num_classes) if code_dim else None

    def forward(self, img: torch.Tensor, codes: Optional[torch.Tensor] = None):
        """(B, 3, H, W) -> (patch logits (B, 1, H/32, W/32), class logits (B, num_classes)); with ``codes``
        (N, code_dim), also their identity logits (N, num_classes) from ``code_head``."""
        x = self.trunk(img)  # (B, D_WIDTH, H/32, W/32)
        patch_logits = self.patch_head(x)  # (B, 1, H/32, W/32)
        pooled = self.class_pool(self.class_conv(x)).flatten(1)  # (B, D_WIDTH)
        if codes is None:
            return patch_logits, self.class_fc(pooled)
        return patch_logits, self.class_fc(pooled), self.code_head(codes)
