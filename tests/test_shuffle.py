"""Tests for positive-partner selection and the part-level shuffle operator S [Eq. 4]."""
import itertools

import pytest
import torch
import torchreid

from isgan_torchreid.losses.shuffle import part_shuffle, part_shuffle_mask, sample_partners, sample_strangers

LOCAL_SLOTS = [2, 3, 5, 6, 7]  # part entries of the K=8 feature order [g_p0, g_p1, p1 x2, g_p2, p2 x3]


def _pk_labels(p, k, generator):
    """Labels in the RandomIdentitySampler layout: K consecutive images of each of P random identities."""
    ids = torch.randperm(1000, generator=generator)[:p]
    return ids.repeat_interleave(k)


def _assert_valid_partners(labels, partners):
    batch = labels.numel()
    assert partners.shape == (batch,) and partners.dtype == torch.long
    assert torch.equal(labels[partners], labels)
    inverse = torch.unique(labels, return_inverse=True)[1]
    has_other = torch.bincount(inverse)[inverse] > 1
    idx = torch.arange(batch)
    assert torch.all(partners[has_other] != idx[has_other])
    assert torch.all(partners[~has_other] == idx[~has_other])


@pytest.mark.parametrize("p,k", [(4, 4), (8, 4), (16, 4), (4, 2), (1, 4)])
def test_partners_same_label_other_index(p, k):
    gen = torch.Generator().manual_seed(p * 100 + k)
    for _ in range(50):
        labels = _pk_labels(p, k, gen)
        _assert_valid_partners(labels, sample_partners(labels, generator=gen))


@pytest.mark.parametrize("p,k", [(4, 4), (8, 4), (4, 2)])
def test_partners_shuffled_batch(p, k):
    gen = torch.Generator().manual_seed(7)
    for _ in range(50):
        labels = _pk_labels(p, k, gen)
        labels = labels[torch.randperm(labels.numel(), generator=gen)]
        _assert_valid_partners(labels, sample_partners(labels, generator=gen))


def test_partners_with_torchreid_sampler():
    """Batches cut from torchreid's RandomIdentitySampler, including ids with fewer than K images."""
    data_source = [(f"img{i}.jpg", pid, 0, 0) for i, pid in enumerate([0] * 6 + [1] * 2 + [2] * 5 + [3] * 4 + [4] * 9)]
    sampler = torchreid.data.sampler.RandomIdentitySampler(data_source, batch_size=8, num_instances=4)
    order = list(iter(sampler))
    labels_all = torch.tensor([data_source[i][1] for i in order])
    gen = torch.Generator().manual_seed(0)
    for batch in labels_all.split(8):
        _assert_valid_partners(batch, sample_partners(batch, generator=gen))


def test_partners_singletons_map_to_self():
    labels = torch.tensor([5, 3, 3, 9, 1, 1, 1, 7])
    partners = sample_partners(labels, generator=torch.Generator().manual_seed(0))
    assert partners[0] == 0 and partners[3] == 3 and partners[7] == 7
    _assert_valid_partners(labels, partners)
    assert torch.equal(sample_partners(torch.tensor([4])), torch.tensor([0]))


def test_partners_uniform_over_candidates():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat_interleave(4)  # 4 x 4
    draws = 3000
    counts = torch.zeros(16, 16)
    for _ in range(draws):
        partners = sample_partners(labels, generator=gen)
        counts[torch.arange(16), partners] += 1
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(16, dtype=torch.bool)
    assert torch.all(counts[~same] == 0)
    # each of the 3 candidates expected 1000 times (std ~26)
    assert counts[same].min() > 880 and counts[same].max() < 1120


def test_partners_reproducible():
    labels = torch.arange(8).repeat_interleave(4)
    a = sample_partners(labels, generator=torch.Generator().manual_seed(123))
    b = sample_partners(labels, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)
    draws = [sample_partners(labels, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_partners_rejects_non_vector():
    with pytest.raises(ValueError):
        sample_partners(torch.zeros(2, 2, dtype=torch.long))


def test_mask_proper_nonempty_subset_of_local_slots():
    gen = torch.Generator().manual_seed(0)
    mask = part_shuffle_mask(4096, 8, LOCAL_SLOTS, generator=gen)
    assert mask.shape == (4096, 8) and mask.dtype == torch.bool
    other = [s for s in range(8) if s not in LOCAL_SLOTS]
    assert not mask[:, other].any()
    sizes = mask[:, LOCAL_SLOTS].sum(dim=1)
    assert sizes.min() >= 1 and sizes.max() <= len(LOCAL_SLOTS) - 1
    assert set(sizes.tolist()) == {1, 2, 3, 4}
    # every one of the 2^5 - 2 = 30 subsets occurs, each about 4096/30 ~ 137 times
    codes = (mask[:, LOCAL_SLOTS].long() * (2 ** torch.arange(5))).sum(dim=1)
    freq = torch.bincount(codes, minlength=32)
    assert freq[0] == 0 and freq[31] == 0
    assert freq[1:31].min() > 80 and freq[1:31].max() < 200


def test_mask_all_slots_and_two_slots():
    gen = torch.Generator().manual_seed(3)
    mask = part_shuffle_mask(500, 8, list(range(8)), generator=gen)
    sizes = mask.sum(dim=1)
    assert sizes.min() >= 1 and sizes.max() <= 7 and mask[:, [0, 1, 4]].any()
    pair = part_shuffle_mask(200, 3, [0, 2], generator=gen)
    assert not pair[:, 1].any()
    assert torch.all(pair[:, 0] ^ pair[:, 2])  # exactly one of the two swapped


def test_mask_reproducible():
    a = part_shuffle_mask(64, 8, LOCAL_SLOTS, generator=torch.Generator().manual_seed(9))
    b = part_shuffle_mask(64, 8, LOCAL_SLOTS, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("slots", [[], [3], [3, 3], [2, 8], [-1, 2]])
def test_mask_errors(slots):
    with pytest.raises(ValueError):
        part_shuffle_mask(4, 8, slots)


def test_mask_error_names_the_config():
    with pytest.raises(ValueError, match="fewer than 2 stripes"):
        part_shuffle_mask(4, 3, [2])


@pytest.mark.parametrize("three_d", [False, True])
def test_part_shuffle_swaps_masked_slots(three_d):
    gen = torch.Generator().manual_seed(0)
    b, k, d = 6, 8, 5
    feat = torch.randn(b, k, d, generator=gen)
    partner = torch.randn(b, k, d, generator=gen)
    mask = part_shuffle_mask(b, k, LOCAL_SLOTS, generator=gen)
    if three_d:
        out = part_shuffle(feat, partner, mask)
    else:
        out = part_shuffle(feat.flatten(1), partner.flatten(1), mask)
        assert out.shape == (b, k * d)
        out = out.view(b, k, d)
    for row, slot in itertools.product(range(b), range(k)):
        expected = partner[row, slot] if mask[row, slot] else feat[row, slot]
        assert torch.equal(out[row, slot], expected)


def test_part_shuffle_with_partners_and_grad():
    labels = torch.arange(4).repeat_interleave(4)
    gen = torch.Generator().manual_seed(2)
    feat = torch.randn(16, 8 * 3, generator=gen, requires_grad=True)
    partners = sample_partners(labels, generator=gen)
    mask = part_shuffle_mask(16, 8, LOCAL_SLOTS, generator=gen)
    out = part_shuffle(feat, feat[partners], mask)
    out.sum().backward()
    # slot k of row i is used once if not swapped out, plus once per row j that takes it as its partner's slot
    uses = (~mask).float()  # (B, K)
    uses.index_add_(0, partners, mask.float())
    assert torch.equal(feat.grad.view(16, 8, 3), uses[:, :, None].expand(16, 8, 3))


def test_part_shuffle_shape_errors():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    with pytest.raises(ValueError):
        part_shuffle(torch.zeros(2, 16), torch.zeros(2, 24), mask)
    with pytest.raises(ValueError):
        part_shuffle(torch.zeros(2, 20), torch.zeros(2, 20), mask)
    with pytest.raises(ValueError):
        part_shuffle(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), mask)


def test_strangers_have_another_label_and_are_uniform():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(6, 6)
    for _ in range(600):
        strangers = sample_strangers(labels, generator=gen)
        assert (labels[strangers] != labels).all()
        counts[torch.arange(6), strangers] += 1
    assert counts[0, 2:].min() > 100 and counts[0, :2].sum() == 0  # ~150 each of the 4 candidates
    assert torch.equal(sample_strangers(torch.tensor([3, 3])), torch.tensor([0, 1]))  # one identity: itself
