"""Image spaces the models work in: ImageNet's normalised input, G's output space (LOSS.TARGET_SPACE) and the
images E_U may read instead of the input (MODEL.EU_INPUT), with their constants made once per device."""
import functools
import math
from typing import Tuple

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from ..data.build import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["channel_constants", "normalize", "normalize_uint8", "image_target", "image_to_unit", "luminance",
           "local_contrast", "low_pass", "NUISANCE_INPUTS", "CONTRAST_FLOOR"]


@functools.lru_cache(maxsize=None)
def channel_constants(device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """ImageNet's mean and std and BT.601's luminance weights, each (1, 3, 1, 1), made once per device and dtype
    (not copied from the host at every step); plain tensors even when first asked for under inference_mode."""
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1)
                     for v in (IMAGENET_MEAN, IMAGENET_STD, [0.299, 0.587, 0.114]))


def normalize(unit: Tensor) -> Tensor:
    """[0, 1] RGB (B, 3, H, W) -> normalised with ImageNet's mean and std, as the encoders read images."""
    mean, std, _ = channel_constants(unit.device, unit.dtype)
    return (unit - mean) / std


def normalize_uint8(imgs: Tensor) -> Tensor:
    """uint8 RGB (B, 3, H, W) (DATA.UINT8_BATCHES) -> normalised float32 on its device, as torchvision's ToTensor
    (x / 255) and Normalize ((x - mean) / std) compute, element for element."""
    return normalize(imgs.float().div_(255))


def image_target(imgs: Tensor, space: str) -> Tensor:
    """Normalised input -> the space of G's tanh output and D's inputs (LOSS.TARGET_SPACE): ``rgb`` is [-1, 1]
    RGB, ``tanh`` (the authors' code) is tanh of the normalised input."""
    if space == "tanh":
        return torch.tanh(imgs)
    mean, std, _ = channel_constants(imgs.device, imgs.dtype)
    return (imgs * std + mean) * 2 - 1  # [-1, 1] RGB


def image_to_unit(fake: Tensor, space: str) -> Tensor:
    """Inverse of :func:`image_target`: G's output -> [0, 1] RGB."""
    if space == "tanh":
        mean, std, _ = channel_constants(fake.device, fake.dtype)
        return (torch.atanh(fake.clamp(-0.999, 0.999)) * std + mean).clamp(0, 1)
    return ((fake + 1) / 2).clamp(0, 1)


CONTRAST_FLOOR = 0.02  # added to the local spread of luminance (in [0, 1]) before dividing: flat regions stay ~0


def _gray(imgs: Tensor) -> Tensor:
    """Normalised RGB (B, 3, H, W) -> its luminance (ITU-R BT.601), (B, 1, H, W) in [0, 1]."""
    mean, std, weights = channel_constants(imgs.device, imgs.dtype)
    return ((imgs * std + mean) * weights).sum(1, keepdim=True)


def luminance(imgs: Tensor) -> Tensor:
    """Normalised RGB (B, 3, H, W) -> its luminance (ITU-R BT.601) in all three channels, normalised alike."""
    mean, std, _ = channel_constants(imgs.device, imgs.dtype)
    return (_gray(imgs) - mean) / std  # (B, 3, H, W)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """(B, C, H, W) blurred by a Gaussian of ``sigma`` pixels, its kernel 2 ceil(2 sigma) + 1 wide."""
    size = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])


def local_contrast(imgs: Tensor) -> Tensor:
    """Normalised RGB (B, 3, H, W) -> its luminance with each neighbourhood's mean and spread taken out (local
    contrast normalisation, a Gaussian window of sigma min(H, W) / 8), in all three channels, about zero-mean and
    unit-variance as a normalised image is: edges, shapes and texture stay; the brightness of a region (a shirt's,
    the light's) goes."""
    gray = _gray(imgs)  # (B, 1, H, W)
    blur = functools.partial(_gaussian_blur, sigma=min(imgs.shape[-2:]) / 8)
    centred = gray - blur(gray)
    spread = blur(centred * centred).sqrt()
    return (centred / (spread + CONTRAST_FLOOR)).expand(-1, 3, -1, -1)  # (B, 3, H, W)


def low_pass(imgs: Tensor) -> Tensor:
    """Normalised RGB (B, 3, H, W) -> its luminance blurred by a Gaussian of sigma min(H, W) / 16, in all three
    channels, normalised alike: the layout, the pose and the light of regions stay; texture, prints and stripes
    (a person's pattern) and thin shapes go."""
    mean, std, _ = channel_constants(imgs.device, imgs.dtype)
    return (_gaussian_blur(_gray(imgs), min(imgs.shape[-2:]) / 16) - mean) / std  # (B, 3, H, W)


# MODEL.EU_INPUT other than rgb -> E_U's image
NUISANCE_INPUTS = {"gray": luminance, "contrast": local_contrast, "blur": low_pass}
