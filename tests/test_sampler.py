"""SAMPLER.EPOCH identities: every identity once per epoch with K images, in P x K batches."""
import random
from collections import Counter

import torch

from isgan_torchreid.data.build import build_data
from isgan_torchreid.data.sampler import IdentityOnceSampler, RandomIdentitySampler


def toy_source(images_per_id):
    return [(f"{pid}_{i}.jpg", pid, i % 2, 0) for pid, n in enumerate(images_per_id) for i in range(n)]


def test_each_identity_once_with_k_images():
    source = toy_source([6, 5, 4, 9, 2, 7, 4, 3])  # ids 4 and 7 have fewer than K=4 images
    sampler = IdentityOnceSampler(source, batch_size=8, num_instances=4)
    random.seed(0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 8 * 4
    batches = [indices[i:i + 8] for i in range(0, len(indices), 8)]
    for batch in batches:
        pids = [source[i][1] for i in batch]
        assert pids[:4] == [pids[0]] * 4 and pids[4:] == [pids[4]] * 4 and pids[0] != pids[4]
    per_id = Counter(source[i][1] for i in indices)
    assert per_id == {pid: 4 for pid in range(8)}
    for pid in (0, 1, 2, 3, 5):  # enough images: no repeats
        assert len({i for i in indices if source[i][1] == pid}) == 4
    assert list(sampler) != indices  # reshuffled every epoch


def test_leftover_identities_are_dropped_not_mixed():
    sampler = IdentityOnceSampler(toy_source([4] * 7), batch_size=8, num_instances=4)
    assert len(list(sampler)) == len(sampler) == 6 * 4


def test_datamanager_uses_the_configured_epoch(tiny_cfg):
    dm = build_data(tiny_cfg()).manager  # default SAMPLER.EPOCH identities
    assert isinstance(dm.train_loader.sampler.sampler.base, IdentityOnceSampler)
    assert len(dm.train_loader) == 8 // 2  # 8 identities, P=2 per batch
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape[0] == 8 and torch.all(batch["pid"].view(2, 4) == batch["pid"].view(2, 4)[:, :1])
    dm = build_data(tiny_cfg("SAMPLER.EPOCH", "images")).manager
    assert type(dm.train_loader.sampler.sampler.base) is RandomIdentitySampler


def test_epoch_is_shorter_than_torchreids_all_images_epoch():
    source = toy_source([9] * 8)
    assert len(list(RandomIdentitySampler(source, 8, 4))) == 8 * 8  # two chunks of 4 per identity
    assert len(list(IdentityOnceSampler(source, 8, 4))) == 8 * 4
