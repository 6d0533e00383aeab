"""Data-parallel scaling: IS-GAN's training images/s per stage in one process and in N processes (weak scaling).

Each process trains on ``batch`` random images through the engine as torchrun runs it (DDP over NCCL on GPUs,
one GPU each; gloo on CPU, where the processes share the cores), so one step covers N x ``batch`` images.
"""
import os
import socket

import torch
from tabulate import tabulate

from ..errors import ISGANError
from .common import NUM_CLASSES, NoData, timed

__all__ = ["bench_scaling", "scaling_table"]


def bench_scaling(cfg, nproc, batch=16, iters=2, warmup=1, device=None):
    """Rows [phase, images/s in 1 process, images/s in ``nproc``, speed-up, efficiency = speed-up / nproc]."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ISGANError(f"--nproc {nproc} needs {nproc} GPUs, this machine has {torch.cuda.device_count()}; lower "
                         f"--nproc, or set DEVICE cpu")
    context = torch.multiprocessing.get_context("spawn")
    speeds = {}
    for n in sorted({1, nproc}):
        queue = context.SimpleQueue()
        torch.multiprocessing.start_processes(_worker, args=(n, _free_port(), cfg, batch, iters, warmup,
                                                             device.type, queue), nprocs=n, start_method="spawn")
        speeds[n] = queue.get()  # {phase: images/s}, from rank 0
    return [[phase, speeds[1][phase], speeds[nproc][phase], speeds[nproc][phase] / speeds[1][phase],
             speeds[nproc][phase] / speeds[1][phase] / nproc] for phase in speeds[1]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, cfg, batch, iters, warmup, device_type, queue):
    import torch.distributed as dist

    import isgan_torchreid  # noqa: F401  (registration in the fresh process)
    from isgan_torchreid.engine.staged import StagedEngine
    from isgan_torchreid.models import build_model

    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.NAME, cfg.MODEL.PRETRAINED = "isgan", False
        torch.manual_seed(cfg.SEED)
        engine = StagedEngine(cfg, NoData(NUM_CLASSES), build_model(cfg, NUM_CLASSES), device, hooks=[])
        gen = torch.Generator().manual_seed(rank)
        data = {"img": torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen),
                "pid": torch.arange(batch) // cfg.SAMPLER.K}  # P x K layout
        speeds = {}
        for stage in (1, 2, 3):
            engine.enter_stage(stage)
            sec, _ = timed(lambda: engine.forward_backward(data), iters, warmup, device)
            speeds[f"train stage {stage}"] = world_size * batch / sec
        if rank == 0:
            queue.put(speeds)
        if world_size > 1:
            dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def scaling_table(rows, nproc):
    """Rows of :func:`bench_scaling` as a table."""
    many = f"images/s, {nproc} process{'es' * (nproc > 1)}"
    return tabulate([[phase, f"{one:.2f}", f"{n:.2f}", f"{up:.2f}x", f"{100 * eff:.0f}%"]
                     for phase, one, n, up, eff in rows],
                    headers=["phase", "images/s, 1 process", many, "speed-up", "scaling efficiency"],
                    tablefmt="github", disable_numparse=True)
