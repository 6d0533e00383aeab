"""Drawing: labelled sheets of image tiles, part-mask bars, tensors to pictures, atomic PNG writes.

A *sheet* is a table of :class:`Tile` s: a title on top, a title per column, a label left of each row, a
label under each tile, and a caption at the bottom; text wraps to the space it has. Text uses Pillow's
built-in TrueType font (``ImageFont.load_default(size=...)``, Pillow >= 10.1) when Pillow has FreeType, so
it stays readable at any size; otherwise Pillow's small bitmap font.
"""
import dataclasses
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .. import storage

__all__ = ["denormalize", "to_pil", "Tile", "sheet", "part_mask_bar", "save_png", "market_label", "parse_market_name",
           "font", "display_scale", "font_size_for", "to_array", "PAD", "MASK_COLOUR"]

PAD = 4  # pixels between tiles and around the sheet
WHITE = (255, 255, 255)
INK = (20, 20, 20)
GREY = (170, 170, 170)
LIGHT = (225, 225, 225)
MASK_COLOUR = (240, 120, 0)  # part-mask cells taken from the partner


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo per-channel normalisation of (B, 3, H, W) images and clamp to [0, 1]."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, 3, 1, 1)
    return (x * std_t + mean_t).clamp(0.0, 1.0)


def to_pil(img: Tensor, scale: int = 1) -> Image.Image:
    """One (3, H, W) image in [0, 1] -> an RGB picture, enlarged ``scale`` times (nearest: pixels stay honest)."""
    if img.dim() != 3 or img.size(0) != 3:
        raise ValueError(f"to_pil: expected a (3, H, W) image, got shape {tuple(img.shape)}")
    pixels = img.detach().float().cpu().clamp(0, 1).mul(255).add(0.5).to(torch.uint8)  # (3, H, W)
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def display_scale(height: int) -> int:
    """How many times to enlarge images of ``height`` rows for display: to about 256 rows (at least once)."""
    return max(1, round(256 / height))


def font_size_for(tile_height: int) -> int:
    """A readable text size beside tiles ``tile_height`` pixels high (14 px beside 256)."""
    return max(12, tile_height // 18)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (TrueType when Pillow has FreeType)."""
    return ImageFont.load_default(size=size)


def parse_market_name(path: str) -> Optional[Tuple[int, int]]:
    """(person id, camera) from a Market-1501-style file name ``0002_c1s1_000451_03.jpg``; None otherwise."""
    match = re.match(r"(-?\d+)_c(\d+)", os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else None


def market_label(path: str) -> str:
    """'pid 2, cam 1' for a Market-style file name, else the file name."""
    parsed = parse_market_name(path)
    return f"pid {parsed[0]}, cam {parsed[1]}" if parsed else os.path.basename(path)


@dataclasses.dataclass
class Tile:
    """One picture of a sheet and the text under it."""

    image: Image.Image
    label: str = ""


def _wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> List[str]:
    """Greedy word wrap of each line of ``text`` to ``width`` pixels (a longer single word stays whole)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and draw.textlength(trial, font=face) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


class _Text:
    """Measures and draws wrapped text in one font."""

    def __init__(self, size: int):
        self.face = font(size)
        self.line_height = size + max(2, size // 4)
        self._draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lines(self, text: str, width: int) -> List[str]:
        return _wrap(self._draw, text, self.face, width) if text else []

    def width(self, text: str) -> int:
        return int(max((self._draw.textlength(line, font=self.face) for line in text.split("\n")), default=0)) + 1

    def word_width(self, text: str) -> int:
        return int(max((self._draw.textlength(w, font=self.face) for w in text.split()), default=0)) + 1

    def height(self, text: str, width: int) -> int:
        return len(self.lines(text, width)) * self.line_height

    def draw(self, draw: ImageDraw.ImageDraw, xy: Tuple[int, int], text: str, width: int, centre: bool = False):
        x, y = xy
        for i, line in enumerate(self.lines(text, width)):
            dx = (width - draw.textlength(line, font=self.face)) / 2 if centre else 0
            draw.text((x + max(dx, 0), y + i * self.line_height), line, fill=INK, font=self.face)


def sheet(rows: Sequence[Sequence[Optional[Tile]]], title: str = "", column_titles: Sequence[str] = (),
          row_labels: Sequence[str] = (), caption: str = "", font_size: int = 14,
          min_width: int = 480) -> Image.Image:
    """Compose rows of tiles (None: an empty cell) into one labelled picture.

    Each column is as wide as its widest tile, each row as high as its highest tile plus its tallest tile
    label. Row labels take a left column at most two tiles wide; the title and caption wrap to the sheet's
    width, which is at least ``min_width``.
    """
    if not rows or not any(rows):
        raise ValueError("sheet: no tiles to draw")
    n_cols = max(len(r) for r in rows)
    if column_titles and len(column_titles) != n_cols:
        raise ValueError(f"sheet: {len(column_titles)} column titles for {n_cols} columns")
    if row_labels and len(row_labels) != len(rows):
        raise ValueError(f"sheet: {len(row_labels)} row labels for {len(rows)} rows")
    text = _Text(font_size)
    cells = [list(r) + [None] * (n_cols - len(r)) for r in rows]
    titles = list(column_titles) or [""] * n_cols
    col_w = [max([c.image.width for c in col if c is not None]  # at least as wide as its longest word
                 + [text.word_width(s) for s in [t] + [c.label for c in col if c is not None]])
             for t, col in zip(titles, zip(*cells))]
    tile_h = [max((c.image.height for c in row if c is not None), default=0) for row in cells]
    label_h = [max((text.height(c.label, w) for c, w in zip(row, col_w) if c is not None), default=0)
               for row in cells]
    widest = max(col_w)
    label_w = min(max((text.width(s) for s in row_labels), default=0), 2 * widest) if row_labels else 0
    grid_w = (label_w + PAD if label_w else 0) + sum(col_w) + PAD * (n_cols - 1)
    width = max(grid_w + 2 * PAD, min_width)
    inner = width - 2 * PAD
    title_h = text.height(title, inner) + PAD if title else 0
    head_h = max((text.height(t, w) for t, w in zip(column_titles, col_w)), default=0)
    caption_h = text.height(caption, inner) + PAD if caption else 0
    height = PAD + title_h + head_h + sum(t + lab + PAD for t, lab in zip(tile_h, label_h)) + caption_h + PAD

    picture = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(picture)
    y = PAD
    if title:
        text.draw(draw, (PAD, y), title, inner)
        y += title_h
    x0 = PAD + (label_w + PAD if label_w else 0)
    lefts = [x0 + sum(col_w[:j]) + PAD * j for j in range(n_cols)]
    for t, x, w in zip(column_titles, lefts, col_w):
        text.draw(draw, (x, y), t, w, centre=True)
    y += head_h
    for i, row in enumerate(cells):
        if row_labels:
            label_y = y + max(0, (tile_h[i] - text.height(row_labels[i], label_w)) // 2)
            text.draw(draw, (PAD, label_y), row_labels[i], label_w)
        for cell, x, w in zip(row, lefts, col_w):
            if cell is None:
                continue
            picture.paste(cell.image, (x + (w - cell.image.width) // 2, y))
            text.draw(draw, (x, y + tile_h[i]), cell.label, w, centre=True)
        y += tile_h[i] + label_h[i] + PAD
    if caption:
        text.draw(draw, (PAD, y), caption, inner)
    return picture


def part_mask_bar(parts: Sequence[int], taken: Sequence[bool], height: int, cell: int = 10) -> Image.Image:
    """Which of the K part features came from elsewhere: one column per part branch.

    ``taken`` lists the K features in :class:`~isgan_torchreid.models.branches.PartBranches` order (per
    branch: global, then stripes top to bottom). A part-1 branch is one cell (its global feature); a part-n
    branch (n > 1) is a frame (its global feature) around n cells (its stripes, top to bottom). Orange:
    taken; grey: own.
    """
    flags = [bool(t) for t in taken]
    if len(flags) != sum(1 + (n if n > 1 else 0) for n in parts):
        raise ValueError(f"part_mask_bar: {len(flags)} flags for the features of parts {tuple(parts)}")
    picture = Image.new("RGB", (len(parts) * (cell + 3), height), WHITE)
    draw = ImageDraw.Draw(picture)
    k = 0
    for b, n in enumerate(parts):
        x0, x1 = b * (cell + 3) + 1, b * (cell + 3) + cell
        draw.rectangle((x0, 0, x1, height - 1), fill=MASK_COLOUR if flags[k] else GREY)  # the global feature
        for i in range(n if n > 1 else 0):
            y0 = 2 + (height - 4) * i // n
            y1 = 2 + (height - 4) * (i + 1) // n - 2
            draw.rectangle((x0 + 2, y0, x1 - 2, y1), fill=MASK_COLOUR if flags[k + 1 + i] else LIGHT)
        k += 1 + (n if n > 1 else 0)
    return picture


def save_png(picture: Image.Image, path: str, colors: int = 0) -> None:
    """Write ``picture`` as PNG at ``path`` atomically (temp file in the same folder, then rename); with
    ``colors`` (2-256) as a palette PNG of that many colours (median cut, several times smaller)."""
    if colors:
        if not 2 <= colors <= 256:
            raise ValueError(f"save_png: colors must be 2-256 (or 0: full RGB), got {colors}")
        picture = picture.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    with storage.output_file(path) as tmp:
        picture.save(tmp, format="PNG", optimize=True)


def to_array(picture: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a picture (for TensorBoard's ``add_image(..., dataformats='HWC')``)."""
    return np.asarray(picture.convert("RGB"))
