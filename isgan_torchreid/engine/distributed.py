"""Data-parallel training under torchrun: the process group, rank 0's privileges, DDP wrappers of a stage.

``torchrun --nproc_per_node N tools/train.py ...`` starts N processes with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` in their environment. :func:`process_group` joins them in one
``torch.distributed`` process group (NCCL on CUDA, gloo on CPU), each process on its ``LOCAL_RANK`` GPU.
A plain ``python tools/train.py`` (or torchrun with one process) has world size 1: no process group, and
every helper here does nothing, or returns its input. Who a process is and the collectives live in
:mod:`isgan_torchreid.comm`.

What is distributed and what is not:

* gradients: each module a stage trains runs in its own ``DistributedDataParallel`` (:func:`data_parallel`),
  because IS-GAN's steps call the trunk, E_R, E_U, G and D one by one, not one ``forward``;
* batches: :class:`~isgan_torchreid.data.sampler.DistributedIdentitySampler` gives each rank P / W of the
  P identities of every global batch;
* rank 0 alone writes files (checkpoints, results, TensorBoard, sample grids, config), prints, and
  evaluates; the others wait for it at a barrier or a broadcast.
"""
import contextlib
import datetime
import inspect
import os
import sys
import time
from typing import Dict, Iterable

import torch
import torch.distributed as dist
from torch import nn

from ..comm import env_world_size, get_world_size, group_initialized, is_main_process
from ..models import trains_triplet
from ..errors import ISGANError

__all__ = ["local_device", "select_device", "process_group", "check_config", "data_parallel", "ParallelView",
           "sync_batchnorm", "wait_for_main_to_report"]

# how long a rank other than 0 waits, after a user error, for rank 0 to print the same error and bring the
# job down (torchrun stops every rank as soon as one exits); after that it prints the error itself
report_grace_s = 10.0


# ------------------------------------------------------------------ the process group


def local_device(device: torch.device) -> torch.device:
    """The device of this process: under torchrun, a CUDA ``device`` becomes this process's LOCAL_RANK GPU."""
    if env_world_size() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ISGANError(f"DEVICE = {device} names one GPU, but under torchrun each process uses its LOCAL_RANK "
                         f"GPU; set DEVICE auto or cuda")
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env_world_size()))
    if per_node > torch.cuda.device_count():
        raise ISGANError(f"torchrun starts {per_node} processes on this node but it has "
                         f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node {torch.cuda.device_count()}, "
                         f"or DEVICE cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def select_device(cfg):
    """DEVICE 'auto' -> cuda when present, else cpu; under torchrun, CUDA means the LOCAL_RANK GPU."""
    if cfg.DEVICE == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ISGANError(f"DEVICE = {cfg.DEVICE} but no CUDA device is available; set DEVICE auto or cpu")
    return local_device(torch.device(cfg.DEVICE))


@contextlib.contextmanager
def process_group(device: torch.device, timeout_minutes: float):
    """Inside: torchrun's process group (NCCL on CUDA, gloo on CPU), when torchrun started more than one process.

    ``device`` is this process's device (:func:`local_device`). A collective that waits longer than
    ``timeout_minutes`` (e.g. on a rank that hangs) fails the job. Ranks other than 0 print nothing on
    stdout (their warnings and errors still reach stderr). A clean exit destroys the group; after an error
    the process leaves without (with a peer gone, destroying can hang).
    """
    if env_world_size() == 1 or group_initialized():  # a single process, or a group the caller manages
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    stdout = sys.stdout
    if is_main_process():
        print(f"=> {get_world_size()} processes ({backend}), rank 0 on {device}: each trains on its share of every "
              f"batch; rank 0 writes the files and evaluates")
    else:
        sys.stdout = open(os.devnull, "w")
    try:
        yield
        dist.destroy_process_group()
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout


def check_config(cfg, device: torch.device) -> None:
    """Raise ISGANError for settings that this world size cannot run (every rank alike, so rank 0 reports it)."""
    world = get_world_size()
    if world == 1:
        return
    p = cfg.SAMPLER.P
    if p % world:
        raise ISGANError(f"SAMPLER.P = {p} identities per batch (of all processes together) do not split over "
                         f"{world} processes; set SAMPLER.P to a multiple of {world}, or start a number of processes "
                         f"that divides {p}")
    if cfg.TRAIN.SYNC_BN and device.type != "cuda":
        raise ISGANError("TRAIN.SYNC_BN needs CUDA: torch's SyncBatchNorm does not run on CPU; set TRAIN.SYNC_BN "
                         "False")
    if trains_triplet(cfg) and cfg.LOSS.LAMBDA_TRIPLET > 0 and p // world < 2:
        raise ISGANError(f"the batch-hard triplet loss mines within each process's batch, which holds "
                         f"SAMPLER.P / processes = {p // world} identity: set SAMPLER.P >= {2 * world}")


# ------------------------------------------------------------------ DDP wrappers of one stage


def _ddp_kwargs() -> dict:
    """Buffers are synced once at wrapping, not before every forward: BatchNorm statistics may differ between
    ranks; rank 0's are the ones saved and evaluated (and with TRAIN.SYNC_BN they agree anyway)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in params:  # newer torch's name for broadcast_buffers (the old one warns there)
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class ParallelView:
    """Callables standing for a model and its submodules, some of them replaced by their DDP wrappers.

    ``view(x)`` calls the (wrapped) model, ``view.generator(...)`` the (wrapped) generator; any other
    attribute is the model's own. The model itself stays unwrapped, so its ``state_dict`` has no ``module.``
    prefixes.
    """

    def __init__(self, model: nn.Module, wrapped: Dict[str, nn.Module]):
        self._model = model
        self._wrapped = wrapped

    def __call__(self, *args, **kwargs):
        return self._wrapped.get("model", self._model)(*args, **kwargs)

    def __getattr__(self, name):
        wrapped = self.__dict__["_wrapped"]
        return wrapped[name] if name in wrapped else getattr(self.__dict__["_model"], name)


def data_parallel(model: nn.Module, names: Iterable[str], device: torch.device):
    """``model`` in one process; else a :class:`ParallelView` whose ``names`` (submodules of ``model``, or
    "model" for the whole) are wrapped, each in its own ``DistributedDataParallel``.

    Call it after setting requires_grad: DDP syncs the gradients of the parameters that require grad when it
    wraps, and refuses a module without any (frozen modules stay unwrapped).
    """
    if get_world_size() == 1:
        return model
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        device_ids = None
    wrapped = {}
    for name in names:
        module = model if name == "model" else getattr(model, name)
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"data_parallel: {name} has no trainable parameter; wrap only the modules a stage trains")
        wrapped[name] = nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **_ddp_kwargs())
    return ParallelView(model, wrapped)


def sync_batchnorm(model: nn.Module, enabled: bool) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm (same parameters and buffers, so checkpoints are interchangeable) when
    ``enabled`` and several processes train; else ``model`` unchanged."""
    if not enabled or get_world_size() == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wait_for_main_to_report() -> None:
    """After a user error on a rank other than 0: give rank 0, which meets the same error, time to print it
    and bring the job down (torchrun then stops this process)."""
    time.sleep(report_grace_s)
