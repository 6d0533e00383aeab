"""Sample grids for IS-GAN: one PNG with a row per sample and a column per image kind.

Typical columns: real | reconstructed | identity-shuffled [Eq. 3] | part-shuffled [Eq. 4].
"""
import os
import tempfile
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid


__all__ = ["denormalize", "save_grid"]

_PADDING = 2
_TITLE_HEIGHT = 14


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo per-channel normalisation of (B, 3, H, W) images and clamp to [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    return (x * std_t + mean_t).clamp(0.0, 1.0)


def save_grid(path: str, columns: Sequence[Tensor], titles: Optional[Sequence[str]] = None) -> None:
    """Write one PNG whose rows are samples and whose columns are the given (B, 3, H, W) tensors in [0, 1]."""
    if len(columns) == 0:
        raise ValueError(f"save_grid: no image columns given for {path}; pass at least one (B, 3, H, W) tensor")
    shape = columns[0].shape
    if len(shape) != 4 or any(c.shape != shape for c in columns):
        raise ValueError(
            f"save_grid: columns for {path} have shapes {[tuple(c.shape) for c in columns]}; "
            "all must be the same (B, 3, H, W)"
        )
    if titles is not None and len(titles) != len(columns):
        raise ValueError(f"save_grid: {len(titles)} titles for {len(columns)} columns; give one title per column")

    tiles = torch.stack([c.detach().float().cpu() for c in columns], dim=1).flatten(0, 1)  # (B*C, 3, H, W)
    grid = make_grid(tiles.clamp(0.0, 1.0), nrow=len(columns), padding=_PADDING)  # (3, H', W')
    pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', 3)
    image = Image.fromarray(pixels)
    if titles is not None:
        image = _add_titles(image, titles, tile_width=shape[-1] + _PADDING)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def _add_titles(image: Image.Image, titles: Sequence[str], tile_width: int) -> Image.Image:
    """Prepend a white band with one title above each column."""
    titled = Image.new("RGB", (image.width, image.height + _TITLE_HEIGHT), "white")
    titled.paste(image, (0, _TITLE_HEIGHT))
    draw = ImageDraw.Draw(titled)
    for col, title in enumerate(titles):
        draw.text((_PADDING + col * tile_width, 1), title, fill="black")
    return titled
