"""Does the class discriminator D_C generalise? Held-out accuracy of class heads on real synthetic identities.

L_C [Eq. 7] asks D_C to name the identity of GENERATED images, which it never saw, so a D_C that only
memorises its training images gives G no useful signal. This benchmark trains D (trunk + class head) with
the class term of D's loss alone on real images of 'synthperson', with a per-identity split: of every
train identity, some images train D_C and the rest are held out. It prints train and held-out accuracy
against chance for each class head of :data:`CLASS_HEADS`::

    python tools/benchmark.py --config-file isgan_synthetic --dc [--dc-seeds 0,1]

Images are in D's input space for LOSS.TARGET_SPACE rgb ([-1, 1] RGB) at DATA.HEIGHT x DATA.WIDTH;
the dataset's size comes from DATA.SYNTH; D's optimiser is SGD with TRAIN.D_MOMENTUM/D_WEIGHT_DECAY.
"""
import glob
import os

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate
from torch import nn

from ..console import progress
from ..data.synthetic.generation import ensure
from ..data.build import synth_spec
from ..losses.isgan import class_loss
from ..models.discriminator import Discriminator

__all__ = ["CLASS_HEADS", "with_class_head", "load_identity_images", "split_per_identity", "train_class_head",
           "class_accuracy", "bench_class_heads", "dc_table"]

# Class heads of D compared by bench_class_heads, all on the same trunk and class conv (same parameters):
# name -> (InstanceNorm between the class conv and its LeakyReLU, global pool over the map).
# LReLU-avg is Discriminator's head; IN-LReLU-avg was its head before (models/discriminator.py says why).
CLASS_HEADS = {
    "IN-LReLU-avg": (True, nn.AdaptiveAvgPool2d),
    "LReLU-avg": (False, nn.AdaptiveAvgPool2d),
    "IN-LReLU-max": (True, nn.AdaptiveMaxPool2d),
    "LReLU-max": (False, nn.AdaptiveMaxPool2d),
}


def with_class_head(disc, name):
    """Give ``disc`` the class head ``name`` of :data:`CLASS_HEADS`, keeping its class conv and FC weights."""
    norm, pool = CLASS_HEADS[name]
    conv = disc.class_conv[0]
    channels = disc.class_fc.in_features
    disc.class_conv = nn.Sequential(conv, *([nn.InstanceNorm2d(channels)] if norm else []), nn.LeakyReLU(0.2))
    disc.class_pool = pool(1)
    return disc


def load_identity_images(root, spec, height, width):
    """The train identities of 'synthperson' made from ``spec`` under ``root``, resized to ``height`` x ``width``.

    Returns images in D's input space for LOSS.TARGET_SPACE rgb, [-1, 1] RGB (N, 3, H, W), and labels 0..P-1 (N,).
    """
    train_dir = os.path.join(ensure(root, "synthperson", spec), "bounding_box_train")
    paths = sorted(glob.glob(os.path.join(train_dir, "*.jpg")))  # {pid:04d}_c{cam}s1_{frame:06d}_00.jpg
    pids = torch.tensor([int(os.path.basename(path)[:4]) for path in paths])
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))
                       for path in paths])  # (N, H, W, 3) uint8
    imgs = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
    return imgs, torch.unique(pids, return_inverse=True)[1]


def split_per_identity(labels, train_per_id, seed):
    """Indices (train, held_out): ``train_per_id`` random images of every identity train, the rest are held out."""
    gen = torch.Generator().manual_seed(seed)
    train, held_out = [], []
    for label in labels.unique():
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if len(idx) <= train_per_id:
            raise ValueError(f"identity {int(label)} has {len(idx)} images; need more than train_per_id={train_per_id}")
        train.append(idx[:train_per_id])
        held_out.append(idx[train_per_id:])
    return torch.cat(train), torch.cat(held_out)


def train_class_head(disc, imgs, labels, train_idx, steps, batch, lr, momentum, weight_decay, seed, device):
    """Train D (trunk + class head) with the class term of D's loss [Eq. 7] alone on real images.

    SGD with momentum as D's optimiser in training (the patch head gets no gradient, so SGD leaves it alone);
    random batches of ``train_idx``, random horizontal flips.
    """
    gen = torch.Generator().manual_seed(seed)
    disc.to(device).train()
    opt = torch.optim.SGD(disc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in progress(range(steps), desc=f"training D_C's class head ({seed=})", unit="step"):
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=gen)]
        x = imgs[idx]  # (B, 3, H, W)
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x).to(device)
        loss = class_loss(disc(x)[1], labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return disc


@torch.no_grad()
def class_accuracy(disc, imgs, labels, idx, device, batch=128):
    """Top-1 accuracy of D_C's logits on ``imgs[idx]`` (InstanceNorm has no running statistics: no train/eval gap)."""
    correct = 0
    for chunk in idx.split(batch):
        logits = disc(imgs[chunk].to(device))[1]
        correct += int((logits.argmax(1).cpu() == labels[chunk]).sum())
    return correct / len(idx)


def bench_class_heads(cfg, heads=tuple(CLASS_HEADS), seeds=(0, 1), steps=300, batch=32, lr=0.01, train_per_id=8,
                      device=None):
    """Train/held-out accuracy of D_C on real synthetic identities for each class head and seed.

    Same seed -> same split, same initial weights and the same batches for every head (a paired comparison).
    Returns rows [head, seed, train acc, held-out acc, chance].
    """
    device = device or torch.device("cpu")
    imgs, labels = load_identity_images(cfg.DATA.ROOT, synth_spec(cfg, "synthperson"), cfg.DATA.HEIGHT,
                                        cfg.DATA.WIDTH)
    num_classes = int(labels.max()) + 1
    rows = []
    for seed in seeds:
        train_idx, held_idx = split_per_identity(labels, train_per_id, seed)
        for head in heads:
            torch.manual_seed(seed)
            disc = with_class_head(Discriminator(num_classes), head)
            train_class_head(disc, imgs, labels, train_idx, steps, batch, lr, cfg.TRAIN.D_MOMENTUM,
                             cfg.TRAIN.D_WEIGHT_DECAY, seed, device)
            rows.append([head, seed, class_accuracy(disc, imgs, labels, train_idx, device),
                         class_accuracy(disc, imgs, labels, held_idx, device), 1 / num_classes])
    return rows


def dc_table(rows):
    """Rows of :func:`bench_class_heads` as a table."""
    return tabulate([[h, s, f"{tr:.3f}", f"{ho:.3f}", f"{ch:.3f}", f"{ho / ch:.1f}x"] for h, s, tr, ho, ch in rows],
                    headers=["class head", "seed", "train acc", "held-out acc", "chance", "held-out / chance"],
                    tablefmt="github", disable_numparse=True)
