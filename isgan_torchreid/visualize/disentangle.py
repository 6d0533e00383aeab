"""What IS-GAN disentangled, in pictures: mix E_R and E_U features of two images and decode them with G.

* :func:`interpolation_figure`: the paper's Fig. 1: interpolate the identity-related features (E_R) between
  two images while the identity-unrelated ones (E_U) stay those of the first, then the other way round.
* :func:`swap_figure`: the paper's Fig. 5: swap the identity-related or -unrelated features of some parts
  (upper, lower, all, or chosen features) between two persons, in both directions.
* :func:`pairs_figure`: the identity of row i with the nuisance of column j, for all pairs of images.

Decoding is deterministic: every module in eval mode, E_U's mean (no sampling), G's noise 0 (its mean).
G also takes a one-hot class of the C training identities [Sec. 4.1]; a test image has no such class, so it
gets the class E_R's classifiers predict from the identity features being decoded: the argmax of the mean of
the K classifiers' logits (:meth:`Disentangler.predicted_class`). Every figure states this in its caption
and labels each generated image with the class it was given.
"""
import os
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ISGANError
from ..losses.shuffle import part_shuffle
from .canvas import Tile, market_label, part_mask_bar, sheet, to_pil

__all__ = ["CLASS_INPUT_NOTE", "slot_names", "region_slots", "parse_slots", "Disentangler", "interpolation_figure",
           "swap_figure", "pairs_figure"]

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
            centre = 2 * i + 1  # stripe centre x 2n, compared with the image centre n
            if (region == "upper" and centre < n) or (region == "lower" and centre > n):
                slots.append(k)
            k += 1
    return slots


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


# ------------------------------------------------------------------ encode, mix, decode

class Disentangler:
    """Encodes images into identity (E_R) and nuisance (E_U mean) features and decodes mixtures with G.

    ``to_unit`` maps G's output to [0, 1] RGB (the objective's ``image_to_unit``, per LOSS.TARGET_SPACE).
    """

    def __init__(self, model, to_unit):
        self.model = model.eval()
        self.to_unit = to_unit
        self.parts = tuple(model.encoder_r.branches.parts)
        self.num_features = model.encoder_r.num_features

    @torch.no_grad()
    def encode(self, imgs: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, 3, H, W) normalised images -> identity (B, K*p_R), nuisance (B, K*p_U)."""
        trunk = self.model.backbone(imgs)  # (B, C4, H/16, W/16)
        identity, _ = self.model.encoder_r(trunk)
        nuisance, _, _ = self.model.encoder_u(trunk)  # eval mode: E_U's mean
        return identity, nuisance

    @torch.no_grad()
    def predicted_class(self, identity: Tensor) -> Tensor:
        """(B,) class of identity features (B, K*p_R): argmax of the mean of E_R's K classifiers' logits."""
        parts = identity.view(identity.size(0), self.num_features, -1)  # (B, K, p_R)
        logits = [classify(parts[:, k]) for k, classify in enumerate(self.model.encoder_r.classifiers)]
        return torch.stack(logits).mean(0).argmax(1)

    @torch.no_grad()
    def decode(self, identity: Tensor, nuisance: Tensor) -> Tuple[Tensor, Tensor]:
        """G with the predicted class and zero noise -> images (B, 3, H, W) in [0, 1], classes (B,)."""
        classes = self.predicted_class(identity)
        noise = identity.new_zeros(identity.size(0), self.model.generator.noise_dim)
        return self.to_unit(self.model.generator(identity, nuisance, classes, noise=noise)), classes

    def interpolate(self, a: Tuple[Tensor, Tensor], b: Tuple[Tensor, Tensor], steps: int, what: str):
        """Decode ``steps`` points from a's to b's ``what`` features (the other kind stays a's).

        ``a``, ``b``: (identity (1, K*p_R), nuisance (1, K*p_U)). ``torch.lerp`` gives exactly a's features
        at t = 0 and b's at t = 1 (and a's everywhere when a == b). Returns images (steps, 3, H, W), classes.
        """
        if what not in WHAT:
            raise ValueError(f"interpolate: what must be one of {WHAT}, got {what!r}")
        t = torch.linspace(0, 1, steps, device=a[0].device)[:, None]  # (steps, 1)
        mixed = [x.expand(steps, -1) for x in a]
        i = WHAT.index(what)
        mixed[i] = torch.lerp(a[i].expand(steps, -1), b[i].expand(steps, -1), t)
        return self.decode(*mixed)

    def swap(self, x: Tuple[Tensor, Tensor], y: Tuple[Tensor, Tensor], slots: Sequence[int], what: str):
        """x's features with the ``what`` features of ``slots`` taken from y (the region-wise S of Eq. 4)."""
        if what not in WHAT:
            raise ValueError(f"swap: what must be one of {WHAT}, got {what!r}")
        mask = torch.zeros(x[0].size(0), self.num_features, dtype=torch.bool, device=x[0].device)  # (B, K)
        mask[:, list(slots)] = True
        mixed = list(x)
        i = WHAT.index(what)
        mixed[i] = part_shuffle(x[i], y[i], mask)
        return self.decode(*mixed)


# ------------------------------------------------------------------ figures

def _name(path: str) -> str:
    return f"{os.path.basename(path)} ({market_label(path)})"


def _tiles(images: Tensor, labels: Sequence[str], scale: int) -> List[Tile]:
    return [Tile(to_pil(img, scale), label) for img, label in zip(images, labels)]


def interpolation_figure(dis: Disentangler, imgs: Tensor, shown: Tensor, paths: Sequence[str], steps: int,
                         what: str, scale: int, font_size: int, source: str = ""):
    """Fig. 1 rows for images a, b (``imgs``: normalised (2, 3, H, W); ``shown``: the same in [0, 1]).

    One row per kind in ``what`` (identity, nuisance or both): a | ``steps`` decodings from t = 0 to 1 | b.
    """
    if steps < 2:
        raise ISGANError(f"--steps {steps}: interpolation needs at least 2 steps (t = 0 and t = 1)")
    identity, nuisance = dis.encode(imgs)
    a, b = (identity[:1], nuisance[:1]), (identity[1:], nuisance[1:])
    kinds = WHAT if what == "both" else (what,)
    real_a, real_b = _tiles(shown, ["a: " + market_label(paths[0]), "b: " + market_label(paths[1])], scale)
    rows, labels = [], []
    for kind in kinds:
        fakes, classes = dis.interpolate(a, b, steps, kind)
        other = "nuisance" if kind == "identity" else "identity"
        rows.append([real_a] + _tiles(fakes, [f"cls {int(c)}" for c in classes], scale) + [real_b])
        labels.append(f"{kind} a -> b\n{other} of a")
    ts = [f"t={t:.2f}" for t in torch.linspace(0, 1, steps).tolist()]
    title = f"Interpolation (paper Fig. 1) from a = {_name(paths[0])} to b = {_name(paths[1])}"
    caption = (f"Each row interpolates one kind of feature linearly between a and b while the other kind stays "
               f"a's. {CLASS_INPUT_NOTE}" + (f" Weights: {source}." if source else ""))
    return sheet(rows, title=title, column_titles=["a"] + ts + ["b"], row_labels=labels, caption=caption,
                 font_size=font_size)


def swap_figure(dis: Disentangler, imgs: Tensor, shown: Tensor, paths: Sequence[str], slots: Sequence[int],
                region: str, what: str, scale: int, font_size: int, source: str = ""):
    """Fig. 5 for images a, b: each with the ``what`` features of ``slots`` taken from the other.

    Rows a and b: input | auto-encoded | with the other's features | the other | which features were taken.
    """
    identity, nuisance = dis.encode(imgs)
    codes = (identity, nuisance)
    partner = torch.tensor([1, 0], device=identity.device)
    swapped_codes = tuple(c[partner] for c in codes)
    auto, auto_cls = dis.decode(identity, nuisance)
    swapped, swapped_cls = dis.swap(codes, swapped_codes, slots, what)
    names = slot_names(dis.parts)
    taken = [k in set(slots) for k in range(len(names))]
    bar = part_mask_bar(dis.parts, taken, height=shown.size(-2) * scale, cell=max(8, 5 * scale))
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
               f"image (features: {layout_text(dis.parts)}; stripes numbered from the top). Bars: one per part "
               f"branch of MODEL.PARTS {list(dis.parts)}, a frame for its global feature around its stripes; "
               f"orange = taken from the other image. {CLASS_INPUT_NOTE}" + (f" Weights: {source}." if source else ""))
    return sheet(rows, title=title, column_titles=["input", "auto-encoded", f"with the other's {what}", "the other",
                                                   "features"],
                 row_labels=who, caption=caption, font_size=font_size)


def pairs_figure(dis: Disentangler, imgs: Tensor, shown: Tensor, paths: Sequence[str], scale: int, font_size: int,
                 source: str = ""):
    """All pairs: cell (i, j) decodes the identity of image i with the nuisance of image j (diagonal:
    auto-encoding); the first row and column show the images."""
    identity, nuisance = dis.encode(imgs)
    n = identity.size(0)
    rows_id = identity.repeat_interleave(n, dim=0)  # (n*n, K*p_R): row i repeated for each column
    cols_nid = nuisance.repeat(n, 1)  # (n*n, K*p_U)
    fakes, classes = dis.decode(rows_id, cols_nid)
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
