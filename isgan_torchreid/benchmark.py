"""Benchmarks printed as tables (speed/memory targets live here, never in unit tests)."""
import time

import numpy as np
import torch
import torchreid

from isgan_torchreid.engine.evaluation import compute_distance_matrix, evaluate_rank


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
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_training(cfg, methods=("isgan", "mgn", "pcb_p6"), batch=16, iters=2, warmup=1, device=None):
    """ms/iteration and images/s of each IS-GAN stage, inference, MGN and torchreid's pcb_p6.

    Random inputs of the configured size; ``cfg`` provides the model, loss and optimiser settings.
    Returns rows [method, phase, ms/iter, images/s, peak memory MiB].
    """
    from isgan_torchreid.engine.staged import ISGANEngine
    from isgan_torchreid.models import build_model

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    num_classes, k = 751, cfg.SAMPLER.K
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, generator=gen)
    pids = torch.arange(batch) // k  # P x K layout
    data = {"img": imgs, "pid": pids}
    rows = []
    for method in methods:
        c = cfg.clone()
        c.defrost()
        c.MODEL.NAME, c.MODEL.PRETRAINED = method, False
        model = build_model(c, num_classes)
        engine = ISGANEngine(c, _NoData(num_classes), model, device)
        stages = (1, 2, 3) if method == "isgan" else (1,)
        for stage in stages:
            engine.stage = stage
            engine._build_optimizers(stage)
            engine.apply_stage_policy()
            engine.epoch = engine.batch_idx = 0
            sec, peak = _timed(lambda: engine.forward_backward(data), iters, warmup, device)
            phase = f"train stage {stage}" if method == "isgan" else "train"
            rows.append([method, phase, 1000 * sec, batch / sec, peak / 2**20])
        model.eval()
        with torch.no_grad():
            x = imgs.to(device)
            sec, peak = _timed(lambda: model(x), iters, warmup, device)
        rows.append([method, "inference", 1000 * sec, batch / sec, peak / 2**20])
        del engine, model
    return rows
