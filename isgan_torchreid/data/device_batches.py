"""Training batches as uint8, normalised on the device (DATA.UINT8_BATCHES).

torchreid's train transform ends in ToTensor, Normalize and (stage 1) RandomErasing, so every training image
crosses the loader's queue, pinned memory and the host-to-device copy as float32. With DATA.UINT8_BATCHES the
workers stop before the conversion: they resize and flip with the same torchvision classes and the same random
draws as torchreid's transform, erase on the uint8 image with torchreid's draws (:class:`RandomErasingUInt8`),
and hand over uint8 (B, 3, H, W), a quarter of the bytes; the device converts and normalises
(:func:`~isgan_torchreid.models.images.normalize_uint8`) with the operations ToTensor and Normalize compute.
Without erasing the batch on the device is bit-identical to torchreid's; an erased patch differs by the
rounding of its fill to 1/255.
"""
import math
import random
from typing import Sequence

import torch
import torchvision.transforms as T
from torch import Tensor

__all__ = ["RandomErasingUInt8", "uint8_train_transform"]


class RandomErasingUInt8:
    """torchreid's RandomErasing (Zhong et al. 2020) on a uint8 (C, H, W) image, drawing from Python's ``random``
    as torchreid's does, one draw for one draw: with probability ``probability`` a rectangle of area
    U(``sl``, ``sh``) of the image and aspect ratio U(``r1``, 1 / ``r1``), tried up to 100 times until it fits,
    is filled. torchreid fills the normalised image with ``mean``; here each channel gets the uint8 value that
    normalises nearest to it, round(255 (mean x std + mean)) (torchreid's data manager passes ImageNet's mean)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], probability: float = 0.5, sl: float = 0.02,
                 sh: float = 0.4, r1: float = 0.3):
        self.fill = torch.tensor([min(255, max(0, round(255 * (m * s + m)))) for m, s in zip(mean, std)],
                                 dtype=torch.uint8)  # (3,)
        self.probability, self.sl, self.sh, self.r1 = probability, sl, sh, r1

    def __call__(self, img: Tensor) -> Tensor:
        if random.uniform(0, 1) > self.probability:
            return img
        channels, height, width = img.shape
        for _ in range(100):
            area = random.uniform(self.sl, self.sh) * (height * width)
            aspect = random.uniform(self.r1, 1 / self.r1)
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                img[:, top:top + h, left:left + w] = self.fill[:channels, None, None]
                return img
        return img


def uint8_train_transform(height: int, width: int, flip: bool, erase: bool, mean: Sequence[float],
                          std: Sequence[float]):
    """The train transform of torchreid's ``build_transforms`` (resize, random flip, random erasing) stopped at
    uint8: PIL image -> (3, height, width) uint8."""
    steps = [T.Resize((height, width))] + ([T.RandomHorizontalFlip()] if flip else []) + [T.PILToTensor()]
    return T.Compose(steps + ([RandomErasingUInt8(mean, std)] if erase else []))
