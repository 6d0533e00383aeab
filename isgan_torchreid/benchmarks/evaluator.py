"""Evaluation speed: our exact evaluator against torchreid's on a Market-sized problem, and time and peak
memory of evaluate() at gallery scale (MSMT17's size by default)."""
import time

import numpy as np
import torch
import torchreid
from tabulate import tabulate

from ..engine import evaluation
from ..engine.evaluation import compute_distance_matrix, evaluate_rank
from .common import current_rss, in_fresh_process, peak_rss

__all__ = ["bench_evaluator", "evaluator_table", "MSMT17_SIZE", "bench_gallery", "gallery_table"]

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


def evaluator_table(rows):
    """Rows of :func:`bench_evaluator` as a table."""
    return tabulate([[n, f"{s:.2f}", f"{x:.1f}x", e] for n, s, x, e in rows],
                    headers=["evaluator (3368 x 15913)", "seconds", "speed-up", "equal"], tablefmt="github",
                    disable_numparse=True)


# MSMT17's test split: 11,659 queries and 82,161 gallery images of 3,060 identities from 15 cameras
MSMT17_SIZE = (11659, 82161, 3060, 15)


def bench_gallery(num_query=MSMT17_SIZE[0], num_gallery=MSMT17_SIZE[1], num_ids=MSMT17_SIZE[2],
                  num_cams=MSMT17_SIZE[3], dim=2048, max_bytes=None):
    """Time and peak memory of ``evaluate()`` on random L2-normalised features, in a fresh process.

    Returns {'seconds', 'features_mib', 'peak_rss_mib', 'evaluation_peak_mib' (peak RSS above the resident
    memory once the features existed), 'full_distmat_mib' (what a Q x G float32 matrix would take), 'mAP',
    'budget_mib'}.
    """
    return in_fresh_process(_bench_gallery, num_query, num_gallery, num_ids, num_cams, dim, max_bytes)


def _bench_gallery(num_query, num_gallery, num_ids, num_cams, dim, max_bytes):
    gen = torch.Generator().manual_seed(0)
    qf = torch.nn.functional.normalize(torch.randn(num_query, dim, generator=gen), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(num_gallery, dim, generator=gen), dim=1)
    labels = [torch.randint(high, (n,), generator=gen).numpy()
              for high, n in ((num_ids, num_query), (num_ids, num_gallery), (num_cams, num_query),
                              (num_cams, num_gallery))]
    before = current_rss()
    start = time.perf_counter()
    result = evaluation.evaluate(qf, gf, *labels, max_bytes=max_bytes or evaluation.MAX_BYTES)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    return {"seconds": seconds, "features_mib": (num_query + num_gallery) * dim * 4 / 2 ** 20,
            "peak_rss_mib": peak / 2 ** 20, "evaluation_peak_mib": (peak - before) / 2 ** 20,
            "full_distmat_mib": num_query * num_gallery * 4 / 2 ** 20, "mAP": result["mAP"],
            "budget_mib": (max_bytes or evaluation.MAX_BYTES) / 2 ** 20}


def gallery_table(num_query, num_gallery, result):
    """One row of :func:`bench_gallery`."""
    row = [f"{num_query:,} x {num_gallery:,}", f"{result['seconds']:.3g}", f"{result['features_mib']:.0f}",
           f"{result['evaluation_peak_mib']:.0f}", f"{result['peak_rss_mib']:.0f}", f"{result['budget_mib']:.0f}",
           f"{result['full_distmat_mib']:.0f}"]
    return tabulate([row], headers=["query x gallery", "seconds", "features MiB", "evaluation peak MiB (RSS above "
                                    "features)", "process peak MiB", "budget MiB", "full Q x G matrix MiB"],
                    tablefmt="github", disable_numparse=True)
