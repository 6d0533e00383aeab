"""What IS-GAN disentangled, in pictures: mix E_R and E_U features of two images and decode them with G.

* :func:`interpolation_figure`: the paper's Fig. 1: interpolate the identity-related features (E_R) between
  two images while the identity-unrelated ones (E_U) stay those of the first, then the other way round.
* :func:`swap_figure`: the paper's Fig. 5: swap the identity-related or -unrelated features of some parts
  (upper, lower, all, or chosen features) between two persons, in both directions.
* :func:`pairs_figure`: the identity of row i with the nuisance of column j, for all pairs of images.

Codes come from :class:`isgan_torchreid.deploy.GAN` (``load_gan``), whose decoding is deterministic: every
module in eval mode, E_U's mean (no sampling), G's noise 0 (its mean). G also takes a one-hot class of the C
training identities [Sec. 4.1]; a test image has no such class, so it gets the class E_R's classifiers predict
from the identity features being decoded (:meth:`GAN.predicted_class`). Every figure states this in its caption
and labels each generated image with the class it was given.
"""
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..deploy.gan import GAN
from ..errors import ISGANError
from ..losses.shuffle import part_shuffle
from .canvas import Tile, market_label, part_mask_bar, sheet, to_pil

__all__ = ["CLASS_INPUT_NOTE", "slot_names", "region_slots", "region_cells", "parse_slots", "interpolated_codes",
           "swapped_codes", "decode_with_classes", "interpolation_figure", "swap_figure", "pairs_figure"]

CLASS_INPUT_NOTE = ("G decodes E_R features (identity) and E_U means (nuisance) with noise 0; its class input is "
                    "the class E_R's classifiers predict from the decoded identity features (argmax of the mean of "
                    "the K logits; 'cls' under each image), since test identities have no training class.")
WHAT = ("identity", "nuisance")


# ------------------------------------------------------------------ the part layout

def slot_names(parts: Sequence[int]) -> List[str]:
    """Names of the K features of MODEL.PARTS in feature order: ``p{n}g`` (the global feature of the part-n
    branch), then ``p{n}s{i}`` (its stripe i, 1 = top) for n > 1; e.g. (1, 2): p1g, p2g, p2s1, p2s2."""
    names = []
    for n in parts:
        names.append(f"p{n}g")
        if n > 1:
            names += [f"p{n}s{i + 1}" for i in range(n)]
    return names


def region_slots(parts: Sequence[int], region: str) -> List[int]:
    """Feature indices of a region: ``all`` (every feature), ``upper`` / ``lower`` (the stripes whose centre
    lies in the top / bottom half of the image; the middle stripe of an odd part-n branch is in neither)."""
    if region == "all":
        return list(range(len(slot_names(parts))))
    slots, k = [], 0
    for n in parts:
        k += 1  # the global feature
        for i in range(n if n > 1 else 0):
            if _in_half(i, n, region):
                slots.append(k)
            k += 1
    return slots


def _in_half(i: int, n: int, region: str) -> bool:
    """Whether band i of n equal bands (top to bottom) has its centre in the ``upper`` / ``lower`` half."""
    centre = 2 * i + 1  # the band's centre x 2n, compared with the image's centre n
    return centre < n if region == "upper" else centre > n


def region_cells(grid: Optional[Tuple[int, int]], region: str, first: int) -> List[int]:
    """Feature indices of the cells of E_U's layout grid (MODEL.EU_GRID; none without one) in a region, the cells
    numbered row by row from ``first`` (they follow the K part features): ``all``, or ``upper`` / ``lower``
    (the rows whose centre lies in the top / bottom half, as :func:`region_slots`); none for chosen features."""
    if not grid or region not in ("all", "upper", "lower"):
        return []
    rows, cols = grid
    chosen = [r for r in range(rows) if region == "all" or _in_half(r, rows, region)]
    return [first + r * cols + c for r in chosen for c in range(cols)]


def layout_text(parts: Sequence[int]) -> str:
    """'0=p1g 1=p2g 2=p2s1 ...': the feature indices of MODEL.PARTS, for messages."""
    return " ".join(f"{k}={name}" for k, name in enumerate(slot_names(parts)))


def parse_slots(spec: Sequence[str], parts: Sequence[int]) -> List[int]:
    """``--parts`` values -> sorted feature indices: one of upper/lower/all, or feature indices or names."""
    names = slot_names(parts)
    if len(spec) == 1 and spec[0] in ("upper", "lower", "all"):
        slots = region_slots(parts, spec[0])
        if not slots:
            raise ISGANError(f"--parts {spec[0]}: MODEL.PARTS {list(parts)} has no stripe in the {spec[0]} half; "
                             f"use --parts all or feature indices ({layout_text(parts)})")
        return slots
    slots = set()
    for item in spec:
        if item.isdigit() and int(item) < len(names):
            slots.add(int(item))
        elif item in names:
            slots.add(names.index(item))
        else:
            raise ISGANError(f"--parts {item}: not upper, lower, all or a feature of MODEL.PARTS {list(parts)} "
                             f"({layout_text(parts)})")
    return sorted(slots)


# ------------------------------------------------------------------ mix codes

def interpolated_codes(a: Tuple[Tensor, Tensor], b: Tuple[Tensor, Tensor], steps: int, what: str):
    """``steps`` points from a's to b's ``what`` codes (the other kind stays a's).

    ``a``, ``b``: (identity (1, K*p_R), nuisance (1, K*p_U)). ``torch.lerp`` gives exactly a's features
    at t = 0 and b's at t = 1 (and a's everywhere when a == b). Returns (identity, nuisance), (steps, ...) each.
    """
    if what not in WHAT:
        raise ValueError(f"interpolate: what must be one of {WHAT}, got {what!r}")
    t = torch.linspace(0, 1, steps, device=a[0].device)[:, None]  # (steps, 1)
    mixed = [x.expand(steps, -1) for x in a]
    i = WHAT.index(what)
    mixed[i] = torch.lerp(a[i].expand(steps, -1), b[i].expand(steps, -1), t)
    return tuple(mixed)


def swapped_codes(x: Tuple[Tensor, Tensor], y: Tuple[Tensor, Tensor], slots: Sequence[int], what: str,
                  num_features: int):
    """x's codes with the ``what`` features of ``slots`` taken from y (the region-wise S of Eq. 4); the ``what``
    code holds ``num_features`` features (K, or for a nuisance code with a layout grid K + its cells)."""
    if what not in WHAT:
        raise ValueError(f"swap: what must be one of {WHAT}, got {what!r}")
    mask = torch.zeros(x[0].size(0), num_features, dtype=torch.bool, device=x[0].device)  # (B, K)
    mask[:, list(slots)] = True
    mixed = list(x)
    i = WHAT.index(what)
    mixed[i] = part_shuffle(x[i], y[i], mask)
    return tuple(mixed)


def decode_with_classes(gan: GAN, identity: Tensor, nuisance: Tensor) -> Tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) in [0, 1] and the classes G was given (B,): the figures label each image with it."""
    classes = gan.predicted_class(identity)
    return gan.decode(identity, nuisance, classes), classes


# ------------------------------------------------------------------ figures

def _name(path: str) -> str:
    return f"{os.path.basename(path)} ({market_label(path)})"


def _tiles(images: Tensor, labels: Sequence[str], scale: int) -> List[Tile]:
    return [Tile(to_pil(img, scale), label) for img, label in zip(images, labels)]


def interpolation_figure(gan: GAN, imgs: Tensor, shown: Tensor, paths: Sequence[str], steps: int,
                         what: str, scale: int, font_size: int, source: str = ""):
    """Fig. 1 rows for images a, b (``imgs``: normalised (2, 3, H, W); ``shown``: the same in [0, 1]).

    One row per kind in ``what`` (identity, nuisance or both): a | ``steps`` decodings from t = 0 to 1 | b.
    """
    if steps < 2:
        raise ISGANError(f"--steps {steps}: interpolation needs at least 2 steps (t = 0 and t = 1)")
    identity, nuisance = gan.encode(imgs)
    a, b = (identity[:1], nuisance[:1]), (identity[1:], nuisance[1:])
    kinds = WHAT if what == "both" else (what,)
    real_a, real_b = _tiles(shown, ["a: " + market_label(paths[0]), "b: " + market_label(paths[1])], scale)
    rows, labels = [], []
    for kind in kinds:
        fakes, classes = decode_with_classes(gan, *interpolated_codes(a, b, steps, kind))
        other = "nuisance" if kind == "identity" else "identity"
        rows.append([real_a] + _tiles(fakes, [f"cls {int(c)}" for c in classes], scale) + [real_b])
        labels.append(f"{kind} a -> b\n{other} of a")
    ts = [f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()]
    title = f"Interpolation (paper Fig. 1) from a = {_name(paths[0])} to b = {_name(paths[1])}"
    caption = (f"Each row interpolates one kind of feature linearly between a and b while the other kind stays "
               f"a's. {CLASS_INPUT_NOTE}" + (f" Weights: {source}." if source else ""))
    return sheet(rows, title=title, column_titles=["a"] + ts + ["b"], row_labels=labels, caption=caption,
                 font_size=font_size)


def swap_figure(gan: GAN, imgs: Tensor, shown: Tensor, paths: Sequence[str], slots: Sequence[int],
                region: str, what: str, scale: int, font_size: int, source: str = ""):
    """Fig. 5 for images a, b: each with the ``what`` features of ``slots`` taken from the other.

    Rows a and b: input | auto-encoded | with the other's features | the other | which features were taken.
    """
    identity, nuisance = gan.encode(imgs)
    codes = (identity, nuisance)
    partner = torch.tensor([1, 0], device=identity.device)
    partner_codes = tuple(c[partner] for c in codes)
    auto, auto_cls = decode_with_classes(gan, identity, nuisance)
    cells = region_cells(gan.grid, region, gan.num_features) if what == "nuisance" else []
    count = gan.nuisance_features if what == "nuisance" else gan.num_features
    swapped, swapped_cls = decode_with_classes(gan, *swapped_codes(codes, partner_codes, list(slots) + cells, what,
                                                                   count))
    names = slot_names(gan.parts)
    taken = [k in set(slots) for k in range(len(names))]
    bar = part_mask_bar(gan.parts, taken, height=shown.size(-2) * scale, cell=max(8, 5 * scale))
    who = ["a", "b"]
    rows = []
    for i in range(2):
        j = 1 - i
        rows.append([Tile(to_pil(shown[i], scale), market_label(paths[i])),
                     Tile(to_pil(auto[i], scale), f"cls {int(auto_cls[i])}"),
                     Tile(to_pil(swapped[i], scale), f"cls {int(swapped_cls[i])}"),
                     Tile(to_pil(shown[j], scale), market_label(paths[j])),
                     Tile(bar, "taken")])
    chosen = ", ".join(names[k] for k in slots)
    title = (f"Part-level swap (paper Fig. 5) of {what} features, {region}: {chosen}; a = {_name(paths[0])}, "
             f"b = {_name(paths[1])}")
    caption = (f"Third column: the row's image decoded with the {what} features {chosen} taken from the other "
               f"image (features: {layout_text(gan.parts)}; stripes numbered from the top). Bars: one per part "
               f"branch of MODEL.PARTS {list(gan.parts)}, a frame for its global feature around its stripes; "
               f"orange = taken from the other image."
               + (f" E_U's layout cells of that region were taken too ({len(cells)} of the {gan.grid[0]}x"
                  f"{gan.grid[1]} grid, MODEL.EU_GRID)." if cells else "")
               + f" {CLASS_INPUT_NOTE}" + (f" Weights: {source}." if source else ""))
    return sheet(rows, title=title, column_titles=["input", "auto-encoded", f"with the other's {what}", "the other",
                                                   "features"],
                 row_labels=who, caption=caption, font_size=font_size)


def pairs_figure(gan: GAN, imgs: Tensor, shown: Tensor, paths: Sequence[str], scale: int, font_size: int,
                 source: str = ""):
    """All pairs: cell (i, j) decodes the identity of image i with the nuisance of image j (diagonal:
    auto-encoding); the first row and column show the images."""
    identity, nuisance = gan.encode(imgs)
    n = identity.size(0)
    rows_id = identity.repeat_interleave(n, dim=0)  # (n*n, K*p_R): row i repeated for each column
    cols_nid = nuisance.repeat(n, 1)  # (n*n, K*p_U)
    fakes, classes = decode_with_classes(gan, rows_id, cols_nid)
    reals = _tiles(shown, [market_label(p) for p in paths], scale)
    rows = [[None] + reals]
    for i in range(n):
        cells = _tiles(fakes[i * n:(i + 1) * n], [f"cls {int(c)}" for c in classes[i * n:(i + 1) * n]], scale)
        rows.append([reals[i]] + cells)
    title = "Identity of each row's image with the nuisance of each column's image"
    caption = (f"Row i, column j: G(identity features of image i, nuisance features of image j); the diagonal "
               f"auto-encodes. Images: {', '.join(_name(p) for p in paths)}. {CLASS_INPUT_NOTE}"
               + (f" Weights: {source}." if source else ""))
    return sheet(rows, title=title, column_titles=["identity \\ nuisance"] + [f"nuisance {j + 1}" for j in range(n)],
                 row_labels=[""] + [f"identity {i + 1}" for i in range(n)], caption=caption, font_size=font_size)
