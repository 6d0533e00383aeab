"""Benchmarks printed as tables (speed/memory targets live here, never in unit tests)."""
import concurrent.futures
import multiprocessing
import os
import resource
import socket
import time

import numpy as np
import torch
import torchreid
from tabulate import tabulate

from isgan_torchreid.engine.evaluation import compute_distance_matrix, evaluate_rank
from isgan_torchreid.errors import ISGANError


def bench_evaluator(num_query=3368, num_gallery=15913, num_ids=750, num_cams=6, seed=0):
    """Time torchreid's pure-Python `evaluate_rank` against ours on a random Market-sized problem.

    Returns rows [name, seconds, speedup over torchreid, equal to torchreid].
    """
    gen = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(num_ids, (num_query,), generator=gen).numpy()
    g_pids = torch.randint(num_ids, (num_gallery,), generator=gen).numpy()
    q_camids = torch.randint(num_cams, (num_query,), generator=gen).numpy()
    g_camids = torch.randint(num_cams, (num_gallery,), generator=gen).numpy()
    qf = torch.randn(num_query, 64, generator=gen)  # (Q, D)
    gf = torch.randn(num_gallery, 64, generator=gen)  # (G, D)
    distmat = compute_distance_matrix(qf, gf).numpy()  # (Q, G)
    args = (distmat, q_pids, g_pids, q_camids, g_camids)

    start = time.perf_counter()
    ref_cmc, ref_map = torchreid.metrics.evaluate_rank(*args, use_cython=False)
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    cmc, mAP = evaluate_rank(*args)
    ours_s = time.perf_counter() - start

    equal = bool(np.array_equal(cmc, ref_cmc) and mAP == ref_map)
    return [
        ['torchreid evaluate_rank (python)', ref_s, 1.0, 'reference'],
        ['isgan_torchreid evaluate_rank', ours_s, ref_s / ours_s, equal],
    ]


class _NoData:
    """The minimum of a torchreid data manager that the engine reads when driven batch by batch."""

    def __init__(self, num_classes):
        self.train_loader = self.test_loader = None
        self.num_train_pids = num_classes
        self.sources = []


def _timed(fn, iters, warmup, device):
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls; peak memory in bytes."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()
    return float(np.median(times)), peak


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_training(cfg, methods=("isgan", "mgn", "pcb_p6"), batch=16, iters=2, warmup=1, device=None):
    """ms/iteration and images/s of each IS-GAN stage, inference, MGN and torchreid's pcb_p6.

    Random inputs of the configured size; ``cfg`` provides the model, loss and optimiser settings.
    Each method runs in a fresh process, so the CPU peak (max RSS) is per method.
    Returns rows [method, phase, ms/iter, images/s, peak memory MiB].
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    context = multiprocessing.get_context("spawn")
    for method in methods:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            rows += pool.submit(_bench_method, cfg, method, batch, iters, warmup, str(device)).result()
    return rows


def _bench_method(cfg, method, batch, iters, warmup, device):
    import isgan_torchreid  # noqa: F401  (registration in the fresh process)
    from isgan_torchreid.engine.staged import ISGANEngine
    from isgan_torchreid.models import build_model

    device = torch.device(device)
    num_classes = 751
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
    data = {"img": imgs, "pid": torch.arange(batch) // cfg.SAMPLER.K}  # P x K layout
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.NAME, cfg.MODEL.PRETRAINED = method, False
    model = build_model(cfg, num_classes)
    engine = ISGANEngine(cfg, _NoData(num_classes), model, device)
    rows = []
    for stage in (1, 2, 3) if method == "isgan" else (1,):
        engine.enter_stage(stage)
        sec, peak = _timed(lambda: engine.forward_backward(data), iters, warmup, device)
        rows.append([method, f"train stage {stage}" if method == "isgan" else "train", 1000 * sec, batch / sec,
                     peak / 2**20])
    model.eval()
    with torch.no_grad():
        x = imgs.to(device)
        sec, peak = _timed(lambda: model(x), iters, warmup, device)
    rows.append([method, "inference", 1000 * sec, batch / sec, peak / 2**20])
    return rows


# The authors' code, measured on this project's 2-core CPU (torch 2.14.1), ResNet-50, 384x128,
# batch 16 (reference notes 1.9): seconds per training iteration of each stage.
REFERENCE_CPU_SECONDS = {"train stage 1": 27.0, "train stage 2": 37.6, "train stage 3": 54.2}


def training_table(rows, cfg, batch, device):
    """Rows of :func:`bench_training` as a table, with the speed-up over the authors' code where comparable."""
    comparable = (device.type == "cpu" and batch == 16 and cfg.MODEL.BACKBONE == "resnet50"
                  and (cfg.DATA.HEIGHT, cfg.DATA.WIDTH) == (384, 128))
    table = []
    for method, phase, ms, ips, mib in rows:
        ref = REFERENCE_CPU_SECONDS.get(phase) if comparable and method == "isgan" else None
        table.append([method, phase, f"{ms:.0f}", f"{ips:.2f}", f"{mib:.0f}",
                      f"{ref:.1f}" if ref else "-", f"{ref * 1000 / ms:.2f}x" if ref else "-"])
    headers = ["method", "phase", "ms/iter", "images/s", "peak MiB" + (" (GPU)" if device.type == "cuda" else
               " (max RSS)"), "authors' s/iter", "speed-up"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def bench_scaling(cfg, nproc, batch=16, iters=2, warmup=1, device=None):
    """IS-GAN's training images/s per stage in one process and in ``nproc`` data-parallel processes.

    Each process trains on ``batch`` random images (weak scaling: ``nproc`` x ``batch`` per step), through the
    engine as torchrun runs it (DDP over NCCL on GPUs, gloo on CPU; ``nproc`` GPUs needed on CUDA). On CPU the
    cores are divided between the processes. Returns rows [stage, images/s (1), images/s (nproc), speed-up,
    scaling efficiency = speed-up / nproc].
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ISGANError(f"--nproc {nproc} needs {nproc} GPUs, this machine has {torch.cuda.device_count()}; lower "
                         f"--nproc, or set DEVICE cpu")
    context = torch.multiprocessing.get_context("spawn")
    speeds = {}
    for n in sorted({1, nproc}):
        queue = context.SimpleQueue()
        torch.multiprocessing.start_processes(_scaling_worker, args=(n, _free_port(), cfg, batch, iters, warmup,
                                                                     device.type, queue), nprocs=n,
                                              start_method="spawn")
        speeds[n] = queue.get()  # {stage: images/s}, from rank 0
    return [[stage, speeds[1][stage], speeds[nproc][stage], speeds[nproc][stage] / speeds[1][stage],
             speeds[nproc][stage] / speeds[1][stage] / nproc] for stage in speeds[1]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scaling_worker(rank, world_size, port, cfg, batch, iters, warmup, device_type, queue):
    import torch.distributed as dist

    import isgan_torchreid  # noqa: F401  (registration in the fresh process)
    from isgan_torchreid.engine.staged import ISGANEngine
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
        model = build_model(cfg, 751)
        engine = ISGANEngine(cfg, _NoData(751), model, device, hooks=[])
        gen = torch.Generator().manual_seed(rank)
        data = {"img": torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen),
                "pid": torch.arange(batch) // cfg.SAMPLER.K}  # P x K layout
        speeds = {}
        for stage in (1, 2, 3):
            engine.enter_stage(stage)
            sec, _ = _timed(lambda: engine.forward_backward(data), iters, warmup, device)
            speeds[f"train stage {stage}"] = world_size * batch / sec
        if rank == 0:
            queue.put(speeds)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def scaling_table(rows, nproc):
    """Rows of :func:`bench_scaling` as a table."""
    many = f"images/s, {nproc} process{'es' * (nproc > 1)}"
    return tabulate([[stage, f"{one:.2f}", f"{n:.2f}", f"{up:.2f}x", f"{100 * eff:.0f}%"]
                     for stage, one, n, up, eff in rows],
                    headers=["phase", "images/s, 1 process", many, "speed-up", "scaling efficiency"],
                    tablefmt="github", disable_numparse=True)


def benchmark_main(argv=None):
    """tools/benchmark.py: training/inference speed and memory tables, and the evaluator benchmark."""
    from isgan_torchreid.cli import parser, reports_errors, select_device
    from isgan_torchreid.config import load_config
    from isgan_torchreid.engine import distributed

    @reports_errors
    def main(argv):
        p = parser("Print speed/memory tables: IS-GAN stages 1-3 and inference, MGN, torchreid's pcb_p6; "
                   "and the fast evaluator against torchreid's.")
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--iters", type=int, default=2, help="timed iterations (median reported)")
        p.add_argument("--methods", default="isgan,mgn,pcb_p6")
        p.add_argument("--skip-training", action="store_true")
        p.add_argument("--skip-evaluator", action="store_true")
        p.add_argument("--nproc", type=int, default=0, help="also time IS-GAN's stages in 1 and N data-parallel "
                       "processes (N GPUs on CUDA) and print the scaling efficiency")
        args = p.parse_args(argv)
        distributed.single_process_only("tools/benchmark.py", "--nproc N starts its own processes")
        cfg = load_config(args.config_file, args.opts)
        device = select_device(cfg)
        torch.manual_seed(cfg.SEED)
        print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"{cfg.MODEL.BACKBONE} {cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, batch {args.batch}")
        if not args.skip_training:
            rows = bench_training(cfg, methods=args.methods.split(","), batch=args.batch, iters=args.iters,
                                  device=device)
            print(training_table(rows, cfg, args.batch, device))
        if args.nproc:
            rows = bench_scaling(cfg, args.nproc, batch=args.batch, iters=args.iters, device=device)
            print(f"data-parallel scaling: {args.batch} images per process and step")
            print(scaling_table(rows, args.nproc))
        if not args.skip_evaluator:
            rows = bench_evaluator()
            print(tabulate([[n, f"{s:.2f}", f"{x:.1f}x", e] for n, s, x, e in rows],
                           headers=["evaluator (3368 x 15913)", "seconds", "speed-up", "equal"],
                           tablefmt="github", disable_numparse=True))

    return main(argv)
