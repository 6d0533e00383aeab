"""Process-group helpers: who this process is, and the collectives the package uses (no-ops in one process).

Part of the bottom layer (with :mod:`.storage` and :mod:`.image_files`): it imports nothing of the package but
its errors. The group itself is joined by :func:`isgan_torchreid.engine.distributed.process_group`; a plain
``python`` run has world size 1, where every helper here does nothing or returns its input.
"""
import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

from .errors import ISGANError

__all__ = ["env_rank", "env_world_size", "group_initialized", "get_rank", "get_world_size", "is_main_process",
           "single_process_only", "barrier", "main_process_first", "broadcast_object", "all_gather_object",
           "any_rank", "mean_over_ranks", "epoch_seed"]


# ------------------------------------------------------------------ who am I


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun); readable before the group exists."""
    return int(os.environ.get("RANK", 0))


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def group_initialized() -> bool:
    """Whether this process is in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank in the process group (0 without one)."""
    return dist.get_rank() if group_initialized() else 0


def get_world_size() -> int:
    """Processes in the process group (1 without one)."""
    return dist.get_world_size() if group_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files, prints and evaluates."""
    return get_rank() == 0


def single_process_only(tool: str, why: str) -> None:
    """Refuse to run ``tool`` under torchrun (the same error on every rank), saying ``why``."""
    if env_world_size() > 1:
        raise ISGANError(f"{tool} runs in one process ({why}); start it with python, not torchrun")


# ------------------------------------------------------------------ collectives


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: NCCL needs them on this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank arrives here."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. generating a synthetic dataset), the others after it.

    When rank 0 fails inside, it alone reports the error; the others, still waiting, stop quietly (torchrun
    stops them, or they raise a user error that :func:`~isgan_torchreid.cli.reports_errors` holds back).
    """
    if not is_main_process():
        try:
            barrier()
        except RuntimeError as e:  # gloo notices at once that rank 0 has gone; a timeout also lands here
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ISGANError(f"rank 0 stopped or timed out before the others could follow ({reason}); its error "
                             f"comes first in the log") from None
    yield
    if is_main_process():
        barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a picklable value)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def all_gather_object(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """Whether the 0-d bool ``flag`` holds on any rank, as a tensor on its device (no host synchronisation)."""
    if get_world_size() == 1:
        return flag
    t = flag.to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.reshape(()) > 0


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor; ``t`` is not modified)."""
    if get_world_size() == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / get_world_size()


# ------------------------------------------------------------------ seeds


def epoch_seed(seed: int, stage: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one stage on one rank, from SEED alone (no RNG state to save).

    Each epoch of a run reseeds its random streams with this, so a run resumed at any epoch draws what the
    uninterrupted run drew, for any number of processes; ``rank`` gives each process its own draws.
    """
    return int(np.random.SeedSequence([seed, stage, epoch, rank]).generate_state(1)[0])
