"""Identity shuffling for IS-GAN: positive-partner selection and the part-level shuffle S [Eq. 3, 4].

The paper trains on (anchor, positive) pairs. Here every sample of a P x K batch gets a positive partner
drawn from the batch *labels* (not from the batch layout, which is what broke the reference code for K not a
multiple of P and hung at P=1), and the region-wise operator S swaps a random non-empty proper subset of the
candidate feature slots (by default the local stripes) with the partner's.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor


__all__ = ["sample_partners", "sample_strangers", "part_shuffle_mask", "part_shuffle"]

# Subsets are drawn as the bits of one int64 per row, so at most 62 candidate slots.
_MAX_SLOTS = 62


def sample_partners(labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Index of a uniformly drawn same-label, different-index partner per sample (itself for singletons)."""
    if labels.dim() != 1:
        raise ValueError(
            f"sample_partners: labels must be a 1-D tensor of identity labels, got shape {tuple(labels.shape)}; "
            "pass the (B,) label vector of the batch"
        )
    batch_size = labels.numel()
    eye = torch.eye(batch_size, dtype=torch.bool, device=labels.device)  # (B, B)
    candidates = (labels[:, None] == labels[None, :]) & ~eye  # (B, B)
    singleton = ~candidates.any(dim=1)  # (B,)
    candidates = candidates | (eye & singleton[:, None])  # a singleton's only candidate is itself
    return torch.multinomial(candidates.float(), 1, generator=generator).squeeze(1)  # (B,)


def sample_strangers(labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Index of a uniformly drawn sample of another label per sample (itself when the batch has one label)."""
    eye = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)  # (B, B)
    candidates = labels[:, None] != labels[None, :]  # (B, B)
    candidates = candidates | (eye & ~candidates.any(dim=1, keepdim=True))
    return torch.multinomial(candidates.float(), 1, generator=generator).squeeze(1)  # (B,)


def part_shuffle_mask(
    batch_size: int,
    num_slots: int,
    slots: Sequence[int],
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Per row, a uniformly random non-empty proper subset of `slots` set True: which slots S swaps [Eq. 4]."""
    slots = [int(s) for s in slots]
    if len(set(slots)) != len(slots) or any(not 0 <= s < num_slots for s in slots):
        raise ValueError(
            f"part shuffle: candidate slots {slots} must be distinct indices in [0, {num_slots}); "
            "check the part-shuffle slot list against the number of features K"
        )
    n = len(slots)
    if n < 2:
        raise ValueError(
            f"part shuffle: {n} candidate slot(s) {slots}, but a non-empty proper subset needs at least 2; "
            "this happens when the parts have fewer than 2 stripes in total: add stripes to the part branches, "
            "include the global slots, or set the part-shuffle loss weight (LAMBDA_PS) to 0"
        )
    if n > _MAX_SLOTS:
        raise ValueError(f"part shuffle: {n} candidate slots, at most {_MAX_SLOTS} are supported; use fewer stripes")
    # An integer uniform in [1, 2^n - 2] is, read as n bits, a uniform non-empty proper subset (no rejection loop).
    code = torch.randint(1, 2**n - 1, (batch_size,), generator=generator, device=device)  # (B,)
    bit = 2 ** torch.arange(n, device=device)  # (n,)
    chosen = (code[:, None] & bit[None, :]) != 0  # (B, n)
    mask = torch.zeros(batch_size, num_slots, dtype=torch.bool, device=device)  # (B, num_slots)
    for i, slot in enumerate(slots):  # column by column: no index tensor copied from the host
        mask[:, slot] = chosen[:, i]
    return mask


def part_shuffle(feat: Tensor, partner_feat: Tensor, mask: Tensor) -> Tensor:
    """Region-wise shuffling operator S [Eq. 4]: slot k of row b comes from the partner where mask[b, k]."""
    if feat.shape != partner_feat.shape:
        raise ValueError(
            f"part shuffle: anchor features {tuple(feat.shape)} and partner features {tuple(partner_feat.shape)} "
            "differ; pass the partner rows of the same feature tensor (feat[partners])"
        )
    batch_size, num_slots = mask.shape
    splits = (feat.dim() == 2 and feat.shape[1] % num_slots == 0) or (feat.dim() == 3 and feat.shape[1] == num_slots)
    if feat.shape[0] != batch_size or not splits:
        raise ValueError(
            f"part shuffle: features {tuple(feat.shape)} do not split into the mask's {num_slots} slots "
            f"for {batch_size} rows; the mask must be (B, K) for features (B, K*D) or (B, K, D)"
        )
    anchor = feat.reshape(batch_size, num_slots, -1)  # (B, K, D)
    partner = partner_feat.reshape(batch_size, num_slots, -1)  # (B, K, D)
    return torch.where(mask[:, :, None], partner, anchor).reshape(feat.shape)
