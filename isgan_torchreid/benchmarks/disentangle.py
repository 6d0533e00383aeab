"""Does a trained IS-GAN disentangle? Numbers on a run's test split, from :class:`~isgan_torchreid.deploy.GAN`.

``tools/benchmark.py --disentangle RUN`` (RUN: an OUTPUT_DIR, or a stage-2/3 checkpoint) takes ``--ids`` test
identities (their query and gallery images), ``--pairs`` query pairs (a, b) of different identities seen by
different cameras, and measures, with G decoding deterministically (E_U's mean, noise 0, the class E_R
predicts):

* **reconstruction**: mean absolute error in [0, 1] RGB of G(id_x, nu_x) against x, over the chosen test
  images, beside two trivial predictors that know nothing of x but its camera: the mean training image, and
  the mean training image of x's camera (the one to beat: G that draws only the camera's background and
  light scores about that). ``recon / camera mean`` below 1 is what G knows of the person.
* **swap sensitivity**: mean |G(id_b, nu_a) - G(id_a, nu_a)| (only the identity code changes) and
  |G(id_a, nu_b) - G(id_a, nu_a)| (only the nuisance code): a G that ignores one code gives it ~0.
* **identity retention** of the swap G(id_a, nu_b): E_R's descriptor of it (flip + L2, as evaluated) is
  nearer to a gallery image of a than to any of b (chance 0.5), and E_R's rank-1 over the chosen gallery is a
  (chance 1 / ids); the same for an independent *probe*, a small CNN trained from scratch on real images only,
  identity head (trained on the chosen gallery images): logit of a above logit of b (chance 0.5). Both
  verdicts are also given on G's reconstruction G(id_a, nu_a): what G's rendering keeps of a without any swap,
  the ceiling of the swap's retention that G itself sets.
* **nuisance transfer** of the swap: for each nuisance factor, the probe's head for it (trained on the gallery
  and the chosen training images: a factor such as occlusion is rare, and the probe reads it better from more
  images) puts b's value above a's, over the pairs whose values differ (chance 0.5); the same verdict on G's
  reconstruction of b, G(id_b, nu_b), is the transfer's ceiling that G's rendering sets. The camera is the factor
  every Market-layout dataset labels (a and b always differ in it); a dataset with a ``factors.json`` beside
  its split folders (``{relative path: {factor: value}}``, as synthperson writes view and occlusion) adds its
  factors. ``nuisance_transfer`` is their mean.

The reconstruction and the retentions are also given camera by camera (``by_camera``: reconstruction of the images
each camera saw; retention of the swaps whose nuisance code comes from it): where G draws persons, and which
cameras' fakes keep a's identity.

With ``--identities train`` the same numbers are measured on the training identities, the images G and E_R
learned from: each training identity seen by at least two cameras gives one image of each camera as its queries and
the rest as its gallery (Market's convention), and the training images that are not queries serve as the training
images above. Beside the test identities' numbers they tell a G that does not disentangle from one that does on the
identities it learned and does not generalise to unseen ones.

With ``--cues`` two more probes, trained the same way on the gallery's identities, each read a reduced image:
``gray`` its luminance (shapes, texture and brightness, no hue) and ``bands`` the mean colour of each of eight
horizontal bands (the colours by height, no shape or texture). Their verdicts on the swap, beside their verdicts on
G's own reconstruction and on the real images, say which of a's cues the swap keeps and which b's nuisance code
replaces.

Each probe score comes with the probe's own accuracy on the real query images (which it never saw in training),
the ceiling its verdict on fakes can reach; the E_R rank-1 of the real query images is reported likewise.
Rates are also given chance-corrected, (rate - chance) / (1 - chance): 0 is chance, 1 perfect.
"""
import dataclasses
import json
import os
import random
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import Tensor, nn

from .. import storage
from ..console import progress
from ..data.build import IMAGENET_MEAN, IMAGENET_STD, build_data
from ..data.synthetic.generation import FACTORS_FILE
from ..deploy.gan import GAN, describe, gan_from_checkpoint
from ..engine.evaluation import descriptor
from ..engine.plan import RunLayout
from ..errors import ISGANError
from ..models.images import luminance, normalize
from ..visualize.canvas import denormalize

__all__ = ["IDENTITIES", "Settings", "find_checkpoint", "MeasuredSplit", "training_split", "choose_subset",
           "read_training_images", "Probe", "train_probe", "nuisance_factors", "measure", "by_camera_of",
           "disentangle_table", "by_camera_table", "run_disentangle", "CUES", "band_colours"]

BATCH = 64
IDENTITIES = ("test", "train")  # --identities: whose images are measured
PROBE_SIZE = (64, 32)  # the probe's input: the model's images resized down to at most this


@dataclasses.dataclass(frozen=True)
class Settings:
    ids: int = 50  # test identities measured
    pairs: int = 200  # swap pairs (a, b)
    train_images: int = 2000  # training images: the mean images, and the probe's camera and factor heads learn them
    probe_steps: int = 1000
    seed: int = 0
    identities: str = "test"  # IDENTITIES: the test split's, or the training identities' (held-out queries)
    cues: bool = False  # also the identity verdicts of probes that read one kind of cue each (CUES)

    def __post_init__(self):
        if self.identities not in IDENTITIES:
            raise ISGANError(f"identities {self.identities!r}: measure one of {', '.join(IDENTITIES)}")


def find_checkpoint(run):
    """The checkpoint to measure: ``run`` itself when a file, else its stage-3 latest, else its stage-2 latest."""
    if os.path.isfile(run):
        return run
    path = RunLayout(run).last_latest((2, 3))
    if path is not None:
        return path
    raise ISGANError(f"--disentangle {run}: no stage3/ or stage2/ latest.pth.tar there; pass an IS-GAN run's "
                     f"OUTPUT_DIR that has finished a stage-2 epoch, or a stage-2/3 checkpoint")


@dataclasses.dataclass
class MeasuredSplit:
    """The measured part of the test split: items are torchreid's (path, pid, camid, ...) tuples."""

    query: List[tuple]
    gallery: List[tuple]
    train: List[tuple]  # training images: the mean images, and more to train the probe's nuisance heads on
    pairs: List[tuple]  # (i, j) query indices: a = query[i], b = query[j]


def choose_subset(query, gallery, train, settings: Settings) -> MeasuredSplit:
    """``settings.ids`` test identities with query and gallery images, ``settings.pairs`` query pairs of different
    identities and cameras, ``settings.train_images`` training images; deterministic in ``settings.seed``."""
    rng = random.Random(settings.seed)
    in_gallery = {item[1] for item in gallery}
    ids = sorted({item[1] for item in query if item[1] in in_gallery})
    ids = set(rng.sample(ids, min(settings.ids, len(ids))))
    query = [item for item in query if item[1] in ids]
    gallery = [item for item in gallery if item[1] in ids]
    candidates = [(i, j) for i, a in enumerate(query) for j, b in enumerate(query) if a[1] != b[1] and a[2] != b[2]]
    if len(ids) < 2 or not candidates:
        raise ISGANError(f"the test split has {len(ids)} identities with query and gallery images and no two of them "
                         f"seen by different cameras in the query set; measure a dataset with at least 2 test "
                         f"identities in 2 cameras")
    pairs = rng.sample(candidates, min(settings.pairs, len(candidates)))
    train = rng.sample(list(train), min(settings.train_images, len(train)))
    return MeasuredSplit(query, gallery, train, pairs)


def training_split(train, seed: int) -> Tuple[List[tuple], List[tuple]]:
    """``--identities train``: the training items as (query, gallery). Each identity seen by at least two cameras
    gives one image of each camera, drawn with ``seed``, as its queries and its other images as its gallery; the
    identities seen by one camera are left out (no pair of theirs differs in camera)."""
    rng = random.Random(seed)
    by_identity = {}
    for item in train:
        by_identity.setdefault(item[1], {}).setdefault(item[2], []).append(item)
    query, gallery = [], []
    for pid in sorted(by_identity):
        cameras = by_identity[pid]
        if len(cameras) < 2:
            continue
        for cam in sorted(cameras):
            items = cameras[cam]
            k = rng.randrange(len(items))
            query.append(items[k])
            gallery += items[:k] + items[k + 1:]
    return query, gallery


def _unit_images(gan: GAN, paths, desc=None) -> Tensor:
    """[0, 1] RGB (N, 3, H, W) on the CPU of ``paths`` as the model sees them (resized); with ``desc``, the
    progress shown as that."""
    starts = progress(range(0, len(paths), BATCH), desc=desc, unit="batch", disable=desc is None)
    out = [denormalize(gan.images(paths[s:s + BATCH]), IMAGENET_MEAN, IMAGENET_STD).cpu() for s in starts]
    return torch.cat(out)


def read_training_images(gan: GAN, train) -> Tuple[Dict[int, Tensor], Tensor]:
    """The training images, read once: camid -> mean [0, 1] training image (3, H, W) of that camera (key -1: the
    mean over all of them), and the images as the probe's input (:meth:`Probe.prepare`), (N, 3, h, w)."""
    sums, counts, prepared = {}, {}, []
    paths = [item[0] for item in train]
    cams = [item[2] for item in train]
    for s in progress(range(0, len(paths), BATCH), desc="training images", unit="batch"):
        imgs = _unit_images(gan, paths[s:s + BATCH])
        prepared.append(Probe.prepare(imgs))
        for img, cam in zip(imgs, cams[s:s + BATCH]):
            for key in (cam, -1):
                sums[key] = sums.get(key, 0) + img
                counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}, torch.cat(prepared)


# ------------------------------------------------------------------ the probe

class Probe(nn.Module):
    """A small CNN trained from scratch on real images: one classification head per label (identity, camera,
    nuisance factors) on one trunk."""

    def __init__(self, heads: Dict[str, int], width: int = 16):
        super().__init__()
        layers, cin = [], 3
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(cin, classes) for name, classes in heads.items()})

    @staticmethod
    def prepare(unit: Tensor) -> Tensor:
        """[0, 1] images at the model's size -> the probe's input (resized to at most PROBE_SIZE, normalised)."""
        h, w = unit.shape[-2:]
        if h > PROBE_SIZE[0] or w > PROBE_SIZE[1]:
            scale = min(PROBE_SIZE[0] / h, PROBE_SIZE[1] / w)
            unit = F.interpolate(unit, size=(round(h * scale), round(w * scale)), mode="bilinear",
                                 align_corners=False, antialias=True)
        return normalize(unit)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        f = self.trunk(x)  # (B, 8 * width)
        return {name: head(f) for name, head in self.heads.items()}  # name -> (B, classes)


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Horizontal flips and shifts of up to 1/8 of the size (reflect-padded): no colour change, colour is identity."""
    flip = torch.rand(x.size(0), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    h, w = x.shape[-2:]
    ph, pw = h // 8, w // 8
    padded = F.pad(x, (pw, pw, ph, ph), mode="reflect")
    dy = int(torch.randint(0, 2 * ph + 1, (), generator=gen))
    dx = int(torch.randint(0, 2 * pw + 1, (), generator=gen))
    return padded[..., dy:dy + h, dx:dx + w]


@torch.enable_grad()
def train_probe(images: Tensor, labels: Dict[str, Tensor], heads: Dict[str, int], steps: int, seed: int,
                device) -> Probe:
    """The probe trained with Adam on ``images`` (prepared) and ``labels`` (name -> (N,) class indices, -1 where
    unknown), batches of 64."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    probe = Probe(heads).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    probe.train()
    for _ in progress(range(steps), desc="training the probe", unit="step"):
        pick = torch.randint(0, images.size(0), (min(64, images.size(0)),), generator=gen)
        logits = probe(_augment(images[pick], gen).to(device))
        loss = sum(F.cross_entropy(logits[name], labels[name][pick].to(device), ignore_index=-1) for name in heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return probe.eval()


@torch.no_grad()
def _probe_logits(probe: Probe, unit: Tensor, device, view=None) -> Dict[str, Tensor]:
    """The probe's logits of [0, 1] images (``view``: a reduction of the prepared input, as the probe learned)."""
    view = view or (lambda x: x)
    outs = [probe(view(Probe.prepare(unit[s:s + BATCH])).to(device)) for s in range(0, unit.size(0), BATCH)]
    return {name: torch.cat([o[name] for o in outs]).cpu() for name in probe.heads}


def band_colours(x: Tensor, bands: int = 8) -> Tensor:
    """Prepared (B, 3, h, w) -> each of ``bands`` horizontal bands filled with its mean colour: the colours by
    height, without shapes, texture or layout across the width."""
    return F.interpolate(F.adaptive_avg_pool2d(x, (bands, 1)), size=x.shape[-2:], mode="nearest")


CUES = {"gray": luminance, "bands": band_colours}  # --cues: name -> the reduced image a cue probe reads


def nuisance_factors(paths) -> Dict[str, List]:
    """factor -> value per path (None where unknown), from the ``factors.json`` of each image's dataset folder
    (the parent of its split folder); {} when no image has one. The camera is left out (file names carry it)."""
    files, values = {}, []
    for path in paths:
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if root not in files:
            name = os.path.join(root, FACTORS_FILE)
            files[root] = storage.read_json(name) if os.path.isfile(name) else {}
        rel = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/")
        values.append(files[root].get(rel, {}))
    names = sorted({k for v in values for k in v if k != "camera"})
    return {name: [v.get(name) for v in values] for name in names}


def _labels(values) -> Tuple[Tensor, int]:
    """Values (None: unknown) -> (N,) class indices (-1: unknown), number of classes."""
    classes = sorted({json.dumps(v) for v in values if v is not None})
    index = {c: k for k, c in enumerate(classes)}
    return torch.tensor([index[json.dumps(v)] if v is not None else -1 for v in values]), len(classes)


# ------------------------------------------------------------------ the measures

@torch.no_grad()
def _descriptors(gan: GAN, unit: Tensor) -> Tensor:
    """E_R's evaluated descriptor (flip + L2) of [0, 1] images."""
    outs = [descriptor(gan.model, normalize(unit[s:s + BATCH]).to(gan.device)).cpu()
            for s in range(0, unit.size(0), BATCH)]
    return torch.cat(outs)


def _corrected(rate: float, chance: float) -> float:
    return (rate - chance) / (1 - chance)


@torch.no_grad()
def measure(gan: GAN, subset: MeasuredSplit, settings: Settings) -> Dict[str, float]:
    """Every number of the module docstring, as a flat dict."""
    device = gan.device
    test = subset.query + subset.gallery
    real = _unit_images(gan, [item[0] for item in test], "test images")  # (N, 3, H, W)
    identity, nuisance = gan.encode(normalize(real))
    recon = gan.decode(identity, nuisance).cpu()
    means, train_probe_input = read_training_images(gan, subset.train)
    camera_means = torch.stack([means.get(item[2], means[-1]) for item in test])  # (N, 3, H, W)
    recon_l1 = (recon - real).abs().mean((1, 2, 3))  # (N,)
    camera_mean_l1 = (camera_means - real).abs().mean((1, 2, 3))  # (N,)
    result = {
        "test_ids": len({item[1] for item in test}), "query_images": len(subset.query),
        "gallery_images": len(subset.gallery), "pairs": len(subset.pairs), "train_images": len(subset.train),
        "recon_l1": recon_l1.mean().item(),
        "mean_image_l1": (means[-1] - real).abs().mean().item(),
        "camera_mean_l1": camera_mean_l1.mean().item(),
    }
    result["recon_vs_camera_mean"] = result["recon_l1"] / result["camera_mean_l1"]

    # swaps: a = query[i], b = query[j]
    qi = torch.tensor([i for i, _ in subset.pairs])
    qj = torch.tensor([j for _, j in subset.pairs])
    id_q, nu_q = identity[:len(subset.query)], nuisance[:len(subset.query)]
    auto = recon[qi]
    id_swap = gan.decode(id_q[qj], nu_q[qi]).cpu()  # G(id_b, nu_a)
    nu_swap = gan.decode(id_q[qi], nu_q[qj]).cpu()  # G(id_a, nu_b): a's identity in b's nuisance
    result["delta_identity_swap"] = (id_swap - auto).abs().mean().item()
    result["delta_nuisance_swap"] = (nu_swap - auto).abs().mean().item()

    # identity retention by E_R: gallery descriptors of the chosen identities
    q_pids = torch.tensor([item[1] for item in subset.query])
    g_pids = torch.tensor([item[1] for item in subset.gallery])
    gallery_desc = _descriptors(gan, real[len(subset.query):])
    dist_fake = torch.cdist(_descriptors(gan, nu_swap), gallery_desc)  # (P, G)
    dist_real = torch.cdist(_descriptors(gan, real[:len(subset.query)]), gallery_desc)  # (Q, G)
    pa, pb = q_pids[qi], q_pids[qj]
    inf = torch.tensor(float("inf"))
    ids = result["test_ids"]

    def nearer_a_than_b(dist):  # (P, G) -> (P,): the nearest gallery image of a is nearer than any of b
        nearest_a = torch.where(g_pids[None] == pa[:, None], dist, inf).min(1).values
        nearest_b = torch.where(g_pids[None] == pb[:, None], dist, inf).min(1).values
        return (nearest_a < nearest_b).float()

    er_retained = nearer_a_than_b(dist_fake)  # (P,)
    result["er_retention_vs_b"] = er_retained.mean().item()
    result["er_real_vs_b"] = nearer_a_than_b(dist_real[qi]).mean().item()
    result["er_auto_vs_b"] = nearer_a_than_b(torch.cdist(_descriptors(gan, auto), gallery_desc)).mean().item()
    result["er_retention_rank1"] = (g_pids[dist_fake.argmin(1)] == pa).float().mean().item()
    result["er_real_rank1"] = (g_pids[dist_real.argmin(1)] == q_pids).float().mean().item()
    result["er_rank1_chance"] = 1 / ids

    # the probe: trained on real images (identity: the chosen gallery's; camera and factors: also the training
    # images'), tested on the real query images and on the swaps
    nq = len(subset.query)
    images = test + subset.train
    labels = {"identity": [item[1] for item in test] + [None] * len(subset.train),
              "camera": [item[2] for item in images], **nuisance_factors([item[0] for item in images])}
    encoded = {name: _labels(values) for name, values in labels.items()}
    heads = {name: classes for name, (_, classes) in encoded.items() if classes >= 2}
    targets = {name: encoded[name][0] for name in heads}  # (N,) each: query, gallery, then training images
    probe = train_probe(torch.cat([Probe.prepare(real[nq:]), train_probe_input]),
                        {n: t[nq:] for n, t in targets.items()}, heads, settings.probe_steps, settings.seed, device)
    on_real = _probe_logits(probe, real[:nq], device)
    on_fake = _probe_logits(probe, nu_swap, device)
    on_auto = _probe_logits(probe, auto, device)
    on_auto_b = _probe_logits(probe, recon[qj], device)  # G(id_b, nu_b)
    rows = torch.arange(len(subset.pairs))

    def prefers(logits, rows, first, second):  # (P,) logits[row, first] > logits[row, second]
        return (logits[rows, first] > logits[rows, second]).float()

    ia, ib = targets["identity"][qi], targets["identity"][qj]
    result["probe_real_id_accuracy"] = (on_real["identity"].argmax(1) == targets["identity"][:nq]).float().mean().item()
    result["probe_real_id_vs_b"] = prefers(on_real["identity"], qi, ia, ib).mean().item()
    probe_retained = prefers(on_fake["identity"], rows, ia, ib)  # (P,)
    result["probe_retention_vs_b"] = probe_retained.mean().item()
    result["probe_auto_vs_b"] = prefers(on_auto["identity"], rows, ia, ib).mean().item()
    transfers = []
    for name in (n for n in heads if n != "identity"):
        va, vb = targets[name][qi], targets[name][qj]
        differ = (va >= 0) & (vb >= 0) & (va != vb)  # pairs whose values of this factor differ
        result[f"pairs_{name}"] = int(differ.sum())
        known = targets[name][:nq] >= 0
        hits = on_real[name].argmax(1) == targets[name][:nq]
        result[f"probe_real_{name}_accuracy"] = hits[known].float().mean().item()
        if differ.any():
            # on the real b: b's value above a's (the ceiling); on G(id_a, nu_b): the same verdict
            a_, b_ = va[differ], vb[differ]
            result[f"probe_real_{name}_vs_other"] = prefers(on_real[name], qj[differ], b_, a_).mean().item()
            result[f"transfer_{name}"] = prefers(on_fake[name], rows[differ], b_, a_).mean().item()
            result[f"probe_auto_{name}_vs_other"] = prefers(on_auto_b[name], rows[differ], b_, a_).mean().item()
            transfers.append(result[f"transfer_{name}"])
    if settings.cues:
        gallery_input = Probe.prepare(real[nq:])
        gallery_ids = {"identity": targets["identity"][nq:len(test)]}
        for cue, view in CUES.items():
            cue_probe = train_probe(view(gallery_input), gallery_ids, {"identity": heads["identity"]},
                                    settings.probe_steps, settings.seed, device)
            for what, imgs, at in (("real", real[:nq], qi), ("auto", auto, rows), ("retention", nu_swap, rows)):
                logits = _probe_logits(cue_probe, imgs, device, view)["identity"]
                result[f"cue_{cue}_{what}_vs_b"] = prefers(logits, at, ia, ib).mean().item()
    result["factors"] = [n for n in heads if n != "identity"]
    result["nuisance_transfer"] = sum(transfers) / len(transfers)
    for key in ("er_retention_vs_b", "probe_retention_vs_b", "nuisance_transfer"):
        result[f"{key}_corrected"] = _corrected(result[key], 0.5)
    cams = torch.tensor([item[2] for item in test])
    result["by_camera"] = by_camera_of(cams, recon_l1, camera_mean_l1, cams[qj], er_retained, probe_retained)
    return result


def by_camera_of(cams: Tensor, recon_l1: Tensor, camera_mean_l1: Tensor, nu_cams: Tensor, er_retained: Tensor,
                 probe_retained: Tensor) -> Dict[str, Dict[str, float]]:
    """Where G draws well, camera by camera: ``"camera c"`` (c = camid + 1) -> reconstruction of the test images
    that camera saw (their L1, the camera mean's, the ratio) and identity retention of the swaps G(id_a, nu_b)
    whose nuisance code b comes from it (by E_R and by the probe; ``None`` without such pairs). cams, recon_l1,
    camera_mean_l1: (N,) over the test images; nu_cams, er_retained, probe_retained: (P,) over the pairs."""
    out = {}
    for cam in sorted(set(cams.tolist())):
        seen, drawn = cams == cam, nu_cams == cam
        recon, mean = recon_l1[seen].mean().item(), camera_mean_l1[seen].mean().item()
        pairs = int(drawn.sum())
        out[f"camera {cam + 1}"] = {
            "images": int(seen.sum()), "recon_l1": recon, "camera_mean_l1": mean, "recon_vs_camera_mean": recon / mean,
            "pairs": pairs,
            "er_retention_vs_b": er_retained[drawn].mean().item() if pairs else None,
            "probe_retention_vs_b": probe_retained[drawn].mean().item() if pairs else None,
        }
    return out


def by_camera_table(by_camera: Dict[str, Dict[str, float]]) -> str:
    """:func:`by_camera_of`'s numbers as a printed table, a row per camera."""
    def rate(value):
        return "" if value is None else f"{value:.2f}"

    rows = [[name, r["images"], f"{r['recon_l1']:.3f}", f"{r['camera_mean_l1']:.3f}",
             f"{r['recon_vs_camera_mean']:.2f}", r["pairs"], rate(r["er_retention_vs_b"]),
             rate(r["probe_retention_vs_b"])] for name, r in by_camera.items()]
    return tabulate(rows, headers=["camera", "images", "recon L1", "camera mean L1", "recon / camera mean",
                                   "pairs with nu_b from it", "E_R: swap nearer a", "probe: swap is a"],
                    tablefmt="github", disable_numparse=True)


def disentangle_table(result: Dict[str, float]) -> str:
    """The numbers as a printed table: measure, value, chance or reference."""
    r = result
    rows = [
        ["reconstruction L1 of G(id_x, nu_x)", f"{r['recon_l1']:.3f}", ""],
        ["L1 of the mean training image", f"{r['mean_image_l1']:.3f}", "trivial"],
        ["L1 of the mean training image of x's camera", f"{r['camera_mean_l1']:.3f}", "trivial, to beat"],
        ["recon / camera mean", f"{r['recon_vs_camera_mean']:.2f}", "< 1: G knows the person"],
        ["|G(id_b, nu_a) - G(id_a, nu_a)|", f"{r['delta_identity_swap']:.3f}", "only identity swapped"],
        ["|G(id_a, nu_b) - G(id_a, nu_a)|", f"{r['delta_nuisance_swap']:.3f}", "only nuisance swapped"],
        ["E_R: G(id_a, nu_b) nearer a than b", f"{r['er_retention_vs_b']:.2f}",
         f"chance 0.50; real images {r['er_real_vs_b']:.2f}"],
        ["E_R: rank-1 of G(id_a, nu_b) is a", f"{r['er_retention_rank1']:.2f}",
         f"chance {r['er_rank1_chance']:.2f}; real images {r['er_real_rank1']:.2f}"],
        ["probe: G(id_a, nu_b) is a rather than b", f"{r['probe_retention_vs_b']:.2f}",
         f"chance 0.50; real images {r['probe_real_id_vs_b']:.2f}"],
        ["E_R / probe: G(id_a, nu_a) is a rather than b", f"{r['er_auto_vs_b']:.2f} / {r['probe_auto_vs_b']:.2f}",
         "G's own ceiling: no swap"],
    ]
    for cue in (c for c in CUES if f"cue_{c}_retention_vs_b" in r):
        rows.append([f"probe on {cue} only: G(id_a, nu_b) is a rather than b", f"{r[f'cue_{cue}_retention_vs_b']:.2f}",
                     f"chance 0.50; G(id_a, nu_a) {r[f'cue_{cue}_auto_vs_b']:.2f}; real images "
                     f"{r[f'cue_{cue}_real_vs_b']:.2f}"])
    for name in r["factors"]:
        if f"transfer_{name}" in r:
            rows.append([f"probe: G(id_a, nu_b) has b's {name}", f"{r[f'transfer_{name}']:.2f}",
                         f"chance 0.50; G(id_b, nu_b) {r[f'probe_auto_{name}_vs_other']:.2f}; real images "
                         f"{r[f'probe_real_{name}_vs_other']:.2f}; {r[f'pairs_{name}']} pairs"])
    rows.append(["nuisance transfer (mean over factors)", f"{r['nuisance_transfer']:.2f}", "chance 0.50"])
    return tabulate(rows, headers=["measure", "value", "chance / reference"], tablefmt="github")


def run_disentangle(run, opts, settings: Settings, out=None):
    """Measure ``run`` (OUTPUT_DIR or checkpoint), print the table, write the JSON (default RUN/disentangle.json,
    or beside the checkpoint); returns the result dict."""
    weights = find_checkpoint(run)
    gan, cfg, state = gan_from_checkpoint(weights, opts=opts)
    target = cfg.DATA.SOURCES[0]  # the test split of the data G learned from
    data = cfg.clone()
    data.defrost()
    data.DATA.SOURCES, data.DATA.TARGETS, data.DATA.WORKERS = [target], [target], 0
    data.freeze()
    dm = build_data(data).manager
    train = dm.train_loader.dataset.train
    if settings.identities == "train":
        query, gallery = training_split(train, settings.seed)
        held_out = {item[0] for item in query}
        train = [item for item in train if item[0] not in held_out]
    else:
        query, gallery = dm.fetch_test_loaders(target)
    subset = choose_subset(query, gallery, train, settings)
    result = {"weights": describe(weights, state), "dataset": target, **dataclasses.asdict(settings),
              **measure(gan, subset, settings)}
    whose = "test" if settings.identities == "test" else "training (held-out queries)"
    print(f"disentanglement of {result['weights']} on {target}: {result['test_ids']} {whose} identities "
          f"({result['query_images']} query, {result['gallery_images']} gallery images), {result['pairs']} pairs "
          f"(a, b) of different identities and cameras, {result['train_images']} training images for the means")
    print(disentangle_table(result))
    print(by_camera_table(result["by_camera"]))
    out = out or os.path.join(run if os.path.isdir(run) else os.path.dirname(weights), "disentangle.json")
    storage.write_json(out, result)
    print(f"=> wrote {out}")
    return result
