"""P x K identity sampling: the authors' epoch, and one epoch's batches shared out between processes.

torchreid's ``RandomIdentitySampler`` makes an epoch of every image once (grouped K per identity):
about 12,900 images, ~800 batches of 16 on Market-1501. The authors' epoch takes every identity
once with K images (751 x 4 = 3,004 images, 187 batches), and the paper's 300/200/100 epochs count
those. ``SAMPLER.EPOCH identities`` selects :class:`IdentityOnceSampler` so that the schedules mean the same.

Either sampler draws the whole epoch as a list of global batches of P identities x K images.
:class:`DistributedIdentitySampler` draws it from (SEED, stage, epoch) alone, the same list in every
process, and gives process r of W the identities r*P/W .. (r+1)*P/W - 1 of each global batch, with their
K images: the processes' batches are disjoint, together they are the one-process batch, and each still
holds K images of each of its identities (identity and part shuffling find their partners locally).
SAMPLER.P counts the identities of a batch over all processes.
"""
import contextlib
import copy
import random

import numpy as np
import torch

from .. import compat
from ..comm import epoch_seed
from ..errors import ISGANError
from .images import ReplacingUnreadable

RandomIdentitySampler = compat.torchreid_base().data.sampler.RandomIdentitySampler


class IdentityOnceSampler(RandomIdentitySampler):
    """Every identity once per epoch with K images (repeats only when it has fewer than K), in P x K batches."""

    def __iter__(self):
        pids = copy.copy(self.pids)
        random.shuffle(pids)  # python RNG, like torchreid's sampler
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


@contextlib.contextmanager
def _seeded(seed: int):
    """Python's and numpy's global RNGs seeded with ``seed`` inside (torchreid's samplers draw from both),
    and restored on leaving."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class DistributedIdentitySampler(torch.utils.data.Sampler):
    """Process ``rank``'s share of the P x K batches that ``base`` draws for one epoch (see the module doc).

    ``base`` yields global batches of ``num_pids_per_batch`` (P) identities x ``num_instances`` (K) images
    from Python's/numpy's RNG; here they are seeded by (``seed``, stage, epoch) of :meth:`set_epoch`, so the
    epoch is identical on every rank, is reproduced on resume, and does not depend on the number of processes.
    Identities that do not fill a last global batch are left out of that epoch, as the one-process samplers
    leave them out (a different random set each epoch).
    """

    def __init__(self, base, num_pids_per_batch: int, num_instances: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if num_pids_per_batch % world_size:
            raise ISGANError(f"SAMPLER.P = {num_pids_per_batch} identities per batch do not split over {world_size} "
                             f"processes; set SAMPLER.P to a multiple of {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"DistributedIdentitySampler: rank {rank} is not in [0, {world_size})")
        self.base = base
        self.global_batch = num_pids_per_batch * num_instances  # P x K images
        self.local_batch = self.global_batch // world_size  # P/W x K images
        self.seed = seed
        self.rank = rank
        self.stage = self.epoch = 0

    def set_epoch(self, epoch: int, stage: int = 0) -> None:
        """Draw the batches of ``epoch`` of ``stage`` next (call it before each epoch, on every rank)."""
        self.epoch, self.stage = epoch, stage

    def __iter__(self):
        with _seeded(epoch_seed(self.seed, self.stage, self.epoch)):
            indices = list(self.base)  # global batches of P x K
        start = self.rank * self.local_batch
        mine = []
        for b in range(0, len(indices) - self.global_batch + 1, self.global_batch):
            mine += indices[b + start: b + start + self.local_batch]
        return iter(mine)

    def __len__(self):
        return len(self.base) // self.global_batch * self.local_batch


class SampleKeys(torch.utils.data.Sampler):
    """``sampler``'s indices as keys (index, seed, stage) for :class:`SeededSamples`: each sample's seed comes
    from (SEED, stage, epoch, rank) of :meth:`set_epoch` and its place in the epoch, nothing else."""

    def __init__(self, sampler: DistributedIdentitySampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int, stage: int = 0) -> None:
        self.sampler.set_epoch(epoch, stage)

    def __iter__(self):
        s = self.sampler
        first = epoch_seed(s.seed, s.stage, s.epoch, s.rank) * len(s)  # the seeds of two epochs do not overlap
        return ((index, (first + place) % 2**63, s.stage) for place, index in enumerate(s))

    def __len__(self):
        return len(self.sampler)


class SeededSamples(torch.utils.data.Dataset):
    """torchreid's training dataset read by the keys of :class:`SampleKeys`: each sample goes through its
    stage's transform (``transforms``: stage -> transform) with Python's, numpy's and torch's random draws
    seeded by its key (and restored after: without workers the dataset runs in the trainer's process). Before
    any :meth:`SampleKeys.set_epoch` (stage 0) it keeps the dataset's own transform, torchreid's. A plain index
    reads the dataset as it is.

    So a sample's augmentation depends on (SEED, stage, epoch, rank, place) alone, not on which worker reads it
    or what that worker read before: the loader's workers persist through the whole run, all stages included,
    and a resumed run still draws what the uninterrupted run drew.
    """

    def __init__(self, dataset, transforms):
        self.dataset = dataset
        self.transforms = {0: dataset.transform, **transforms}
        self.train = dataset.train  # the (path, pid, camid, ...) items, as torchreid's dataset has them

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.dataset[key]
        index, seed, stage = key
        self.dataset.transform = self.transforms[stage]
        with torch.random.fork_rng(devices=[]), _seeded(seed % 2**32):
            torch.manual_seed(seed)
            return self.dataset[index]


def identity_loader(loader, epoch: str, seed: int, transforms, rank: int = 0, world_size: int = 1,
                    replace_unreadable: bool = False):
    """A copy of torchreid's train loader (P x K batches of its ``RandomIdentitySampler``) that gives this
    process its P/W x K share of each batch (:class:`DistributedIdentitySampler`), drawn by torchreid's
    sampler for ``epoch`` "images" or by :class:`IdentityOnceSampler` for "identities", each image through its
    stage's transform of ``transforms`` (stage -> transform) with seeded draws (:class:`SeededSamples`), by
    workers that persist through the run; with ``replace_unreadable`` (DATA.ON_BAD_IMAGE skip), an image that
    fails to load is replaced by another of its identity (:class:`~.images.ReplacingUnreadable`)."""
    base = loader.sampler
    if epoch == "identities":
        base = IdentityOnceSampler(base.data_source, base.batch_size, base.num_instances)
    sampler = DistributedIdentitySampler(base, base.num_pids_per_batch, base.num_instances, seed, rank, world_size)
    dataset = ReplacingUnreadable(loader.dataset) if replace_unreadable else loader.dataset
    return torch.utils.data.DataLoader(
        SeededSamples(dataset, transforms),
        sampler=SampleKeys(sampler),
        batch_size=sampler.local_batch,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=True,
        persistent_workers=loader.num_workers > 0,
    )
