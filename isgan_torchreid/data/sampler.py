"""The authors' epoch on top of torchreid's RandomIdentitySampler.

torchreid's ``RandomIdentitySampler`` makes an epoch of every image once (grouped K per identity):
about 12,900 images, ~800 batches of 16 on Market-1501. The authors' epoch takes every identity
once with K images (751 x 4 = 3,004 images, 187 batches), and the paper's 300/200/100 epochs count
those. ``SAMPLER.EPOCH identities`` selects this sampler so that the schedules mean the same.
"""
import copy
import random

import torch

from .. import compat

RandomIdentitySampler = compat.torchreid_base().data.sampler.RandomIdentitySampler


class IdentityOnceSampler(RandomIdentitySampler):
    """Every identity once per epoch with K images (repeats only when it has fewer than K), in P x K batches."""

    def __iter__(self):
        pids = copy.copy(self.pids)
        random.shuffle(pids)  # python RNG, like torchreid's sampler (saved in checkpoints)
        indices = []
        for pid in pids[: len(pids) - len(pids) % self.num_pids_per_batch]:
            pool = self.index_dic[pid]
            if len(pool) >= self.num_instances:
                indices += random.sample(pool, self.num_instances)
            else:
                indices += [random.choice(pool) for _ in range(self.num_instances)]
        return iter(indices)

    def __len__(self):
        return (len(self.pids) - len(self.pids) % self.num_pids_per_batch) * self.num_instances


def identity_once_loader(loader):
    """A copy of torchreid's train loader that samples with :class:`IdentityOnceSampler`."""
    sampler = loader.sampler
    return torch.utils.data.DataLoader(
        loader.dataset,
        sampler=IdentityOnceSampler(sampler.data_source, sampler.batch_size, sampler.num_instances),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=True,
    )
