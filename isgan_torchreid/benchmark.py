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
