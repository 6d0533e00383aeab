"""Tests for the evaluation module: exact CMC/mAP, distances, flip-summed features, re-ranking, memory bounds."""
import os
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchreid
from torch import nn

from isgan_torchreid import compat
from isgan_torchreid.engine import evaluation
from isgan_torchreid.engine.evaluation import (compute_distance_matrix, evaluate, evaluate_rank,
                                               extract_features, rerank)
from isgan_torchreid.errors import ISGANError

from conftest import CONFIGS


@pytest.fixture
def numpy_global_rng(monkeypatch):
    """Seedable numpy global RNG (the CUHK03 protocol draws from it), restored after the test.

    Also lets torchreid's eval_cuhk03 run on numpy versions without `np.bool`.
    """
    monkeypatch.setattr(np, 'bool', bool, raising=False)
    state = np.random.get_state()
    yield np.random
    np.random.set_state(state)


def _problem(seed, num_q, num_g, num_ids, num_cams, ties):
    """Random distmat and labels; pids start at -1 so junk (-1) and distractor (0) ids occur.

    Query 0's identity is absent from the gallery and query 1's only gallery image shares its camera,
    so both kinds of query without a valid match occur.
    """
    gen = torch.Generator().manual_seed(seed)
    if ties:
        distmat = torch.randint(0, 4, (num_q, num_g), generator=gen).float()  # many equal distances
    else:
        distmat = torch.rand(num_q, num_g, generator=gen)
    q_pids = torch.randint(-1, num_ids, (num_q,), generator=gen).numpy()
    g_pids = torch.randint(-1, num_ids, (num_g,), generator=gen).numpy()
    q_camids = torch.randint(0, num_cams, (num_q,), generator=gen).numpy()
    g_camids = torch.randint(0, num_cams, (num_g,), generator=gen).numpy()
    q_pids[:2] = num_ids, num_ids + 1
    g_pids[0], g_camids[0] = num_ids + 1, q_camids[1]
    return distmat.numpy(), q_pids, g_pids, q_camids, g_camids


def _query_kinds(q_pids, g_pids, q_camids, g_camids):
    """Per query: has a same-camera same-id gallery entry; has a valid (other-camera) match."""
    same_id = q_pids[:, None] == g_pids[None, :]
    same_cam = q_camids[:, None] == g_camids[None, :]
    return (same_id & same_cam).any(1), (same_id & ~same_cam).any(1)


def _rows_budget(rows, num_g, cuhk03):
    """A max_bytes that makes evaluate_rank rank `rows` queries per chunk."""
    budget = rows * num_g * (evaluation._CUHK03_BYTES_PER_PAIR if cuhk03 else evaluation._BYTES_PER_PAIR)
    assert evaluation.chunk_rows(num_g, budget, cuhk03) == rows
    return budget


def _assert_same_as_torchreid(args, max_rank, cuhk03, rng, max_bytes=evaluation.MAX_BYTES):
    """Our evaluate_rank equals torchreid's python evaluator bit for bit (and leaves the RNG alike)."""
    rng.seed(0)
    ref_cmc, ref_map = torchreid.metrics.evaluate_rank(*args, max_rank=max_rank, use_metric_cuhk03=cuhk03,
                                                       use_cython=False)
    ref_next = rng.random_sample()
    rng.seed(0)
    cmc, mAP = evaluate_rank(*args, max_rank=max_rank, use_metric_cuhk03=cuhk03, max_bytes=max_bytes)
    assert rng.random_sample() == ref_next  # same number of draws from the global RNG
    assert cmc.dtype == np.float32 and cmc.shape == ref_cmc.shape
    np.testing.assert_array_equal(cmc, ref_cmc)
    assert mAP == ref_map
    assert isinstance(mAP, float)
    return cmc, mAP


PROBLEMS = {
    # name: (seed, num_q, num_g, num_ids, num_cams, ties, max_rank)
    'ties': (0, 40, 300, 12, 3, True, 50),
    'continuous': (1, 60, 400, 20, 4, False, 50),
    'many_ids_few_matches': (2, 50, 200, 60, 2, False, 20),
    'ties_small_rank': (3, 30, 150, 8, 2, True, 5),
    'few_ids': (4, 40, 300, 4, 3, False, 50),  # many matches per query: exercises AP summation order
}


@pytest.mark.parametrize('cuhk03', [False, True], ids=['market', 'cuhk03'])
@pytest.mark.parametrize('name', list(PROBLEMS))
def test_evaluate_rank_equals_torchreid(name, cuhk03, numpy_global_rng):
    seed, num_q, num_g, num_ids, num_cams, ties, max_rank = PROBLEMS[name]
    args = _problem(seed, num_q, num_g, num_ids, num_cams, ties)
    same_cam, valid = _query_kinds(*args[1:])
    assert same_cam.any() and valid.any() and not valid.all()  # every situation occurs
    assert (args[2] == 0).any() and (args[2] == -1).any()
    budget = _rows_budget(7, num_g, cuhk03)  # several chunks, of 7 or fewer queries
    cmc, mAP = _assert_same_as_torchreid(args, max_rank, cuhk03, numpy_global_rng, budget)
    assert np.all(np.diff(cmc) >= 0) and 0 < mAP <= 1


@pytest.mark.parametrize('cuhk03', [False, True], ids=['market', 'cuhk03'])
def test_gallery_smaller_than_max_rank(cuhk03, numpy_global_rng):
    distmat, q_pids, g_pids, q_camids, g_camids = _problem(4, 25, 12, 5, 3, True)
    g_camids = g_camids + 3  # no same-camera removal: every query keeps all 12 entries
    cmc, _ = _assert_same_as_torchreid((distmat, q_pids, g_pids, q_camids, g_camids), 50, cuhk03,
                                       numpy_global_rng)
    expected = 12 if not cuhk03 else len(np.unique(g_pids))  # CUHK03 ranks gallery identities
    assert len(cmc) == expected and cmc[-1] == 1


def test_ragged_cmc_rows_stop_at_the_shortest_list(numpy_global_rng):
    """torchreid crashes stacking CMC rows of unequal length; ours stops the CMC at the shortest row.

    (Under the CUHK03 protocol every valid query ranks all gallery identities: rows never differ.)
    """
    args = _problem(5, 30, 10, 3, 2, False)
    with pytest.raises(ValueError):
        torchreid.metrics.evaluate_rank(*args, use_cython=False)
    cmc, _ = evaluate_rank(*args)
    assert 1 <= len(cmc) < 10
    # where torchreid works (max_rank = that length) the results are identical
    _assert_same_as_torchreid(args, len(cmc), False, numpy_global_rng)
    with pytest.raises(ValueError):  # one rank more and torchreid fails again: the length is the largest
        torchreid.metrics.evaluate_rank(*args, max_rank=len(cmc) + 1, use_cython=False)
    if compat.has_cython_evaluator():  # the compiled one reads past short rows: a CMC that goes down
        compiled, _ = torchreid.metrics.evaluate_rank(*args)
        assert (np.diff(compiled) < 0).any()


def test_tiny_gallery_evaluates_with_nan_beyond_its_ranks(capsys):
    """26 gallery images: evaluate() must not fail after training; ranks it cannot reach are NaN."""
    gen = torch.Generator().manual_seed(14)
    g_pids, g_camids = np.repeat(np.arange(13), 2), np.tile([0, 1], 13)  # 13 ids x 2 cameras
    q_pids, q_camids = np.arange(13), np.zeros(13, dtype=np.int64)
    qf, gf = torch.randn(13, 8, generator=gen), torch.randn(26, 8, generator=gen)
    results = evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, ranks=(1, 5, 10, 30))
    assert len(results['cmc']) == 26 - 1  # each query loses its same-camera image
    assert [np.isnan(results[f'rank{r}']) for r in (1, 5, 10, 30)] == [False, False, False, True]
    assert results['rank10'] == float(results['cmc'][9]) and results['cmc'][-1] == 1
    assert 'rank-30 reported as NaN' in capsys.readouterr().out


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('cuhk03', [False, True], ids=['market', 'cuhk03'])
def test_chunked_evaluate_equals_whole_matrix(metric, cuhk03, numpy_global_rng):
    """Distances computed and ranked chunk by chunk give the CMC/mAP of the whole matrix, bit for bit."""
    gen = torch.Generator().manual_seed(15)
    q_pids = torch.randint(0, 12, (70,), generator=gen).numpy()
    g_pids = torch.randint(0, 12, (300,), generator=gen).numpy()
    q_camids = torch.randint(0, 3, (70,), generator=gen).numpy()
    g_camids = torch.randint(0, 3, (300,), generator=gen).numpy()
    qf, gf = torch.randn(70, 16, generator=gen), torch.randn(300, 16, generator=gen)
    budget = _rows_budget(8, 300, cuhk03)
    numpy_global_rng.seed(0)
    chunked = evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, use_metric_cuhk03=cuhk03,
                       max_bytes=budget)
    numpy_global_rng.seed(0)
    ref_cmc, ref_map = torchreid.metrics.evaluate_rank(compute_distance_matrix(qf, gf, metric).numpy(), q_pids,
                                                       g_pids, q_camids, g_camids, use_metric_cuhk03=cuhk03,
                                                       use_cython=False)
    np.testing.assert_array_equal(chunked['cmc'], ref_cmc)
    assert chunked['mAP'] == ref_map


@pytest.mark.parametrize('cuhk03,distinct_ids', [(False, False), (True, False), (True, True)])
def test_ranking_memory_stays_within_budget(cuhk03, distinct_ids):
    """tracemalloc's peak while ranking stays under max_bytes, and uses at least half of it where the
    estimate is tight (CUHK03 with several images per identity needs far less than its worst case)."""
    gen = torch.Generator().manual_seed(16)
    num_q, num_g = 120, 4000
    distmat = torch.rand(num_q, num_g, generator=gen).numpy()
    if distinct_ids:  # CUHK03's worst case: one draw per gallery image
        g_pids, q_pids = np.arange(num_g), np.arange(num_q)
    else:
        g_pids = torch.randint(0, 300, (num_g,), generator=gen).numpy()
        q_pids = torch.randint(0, 300, (num_q,), generator=gen).numpy()
    q_camids, g_camids = np.zeros(num_q, dtype=np.int64), np.ones(num_g, dtype=np.int64)
    budget = _rows_budget(20, num_g, cuhk03)
    tracemalloc.start()
    try:
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, use_metric_cuhk03=cuhk03, max_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= budget
    if not cuhk03 or distinct_ids:
        assert peak >= budget / 2


needs_cython = pytest.mark.skipif(not compat.has_cython_evaluator(),
                                  reason="torchreid's compiled evaluator is built by a 1.4.0 source install only")


def _float32_bound(num_q, num_g):
    """Worst-case error of torchreid's compiled evaluator, which sums in float32 one term at a time:
    per query up to num_g AP terms (or 10 CUHK03 repeats), then num_q queries, a rounding each."""
    return (num_g + num_q + 2) * 2.0 ** -24


def _cython_and_ours(args, max_rank, cuhk03, rng):
    rng.seed(0)
    ref = torchreid.metrics.evaluate_rank(*args, max_rank=max_rank, use_metric_cuhk03=cuhk03)  # default: compiled
    ref_next = rng.random_sample()
    rng.seed(0)
    ours = evaluate_rank(*args, max_rank=max_rank, use_metric_cuhk03=cuhk03)
    assert rng.random_sample() == ref_next  # the compiled CUHK03 protocol draws the same numbers
    return ref, ours


@needs_cython
@pytest.mark.parametrize('cuhk03', [False, True], ids=['market', 'cuhk03'])
@pytest.mark.parametrize('name', list(PROBLEMS))
def test_evaluate_rank_agrees_with_torchreid_cython(name, cuhk03, numpy_global_rng):
    """torchreid's compiled evaluator (its default in a 1.4.0 source install) equals ours up to its float32
    sums: the Market CMC (sums of 0/1) exactly, the CUHK03 CMC (tenths) and the mAP within float32 rounding."""
    seed, num_q, num_g, num_ids, num_cams, ties, max_rank = PROBLEMS[name]
    args = _problem(seed, num_q, num_g, num_ids, num_cams, ties)
    (ref_cmc, ref_map), (cmc, mAP) = _cython_and_ours(args, max_rank, cuhk03, numpy_global_rng)
    bound = _float32_bound(num_q, num_g)
    if cuhk03:
        # past the number of gallery identities the compiled evaluator pads the CMC with zeros; ours ends there
        assert len(cmc) == min(max_rank, len(np.unique(args[2])))
        assert not ref_cmc[len(cmc):].any()
        np.testing.assert_allclose(ref_cmc[:len(cmc)], cmc, rtol=0, atol=bound)
    else:
        np.testing.assert_array_equal(ref_cmc, cmc)
    assert mAP == pytest.approx(ref_map, rel=bound)


def test_torch_distmat_and_no_valid_query():
    distmat, q_pids, g_pids, q_camids, g_camids = _problem(6, 20, 100, 6, 3, False)
    ref = torchreid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, use_cython=False)
    cmc, mAP = evaluate_rank(torch.from_numpy(distmat), q_pids, g_pids, q_camids, g_camids)
    np.testing.assert_array_equal(cmc, ref[0])
    assert mAP == ref[1]
    q_same, g_same = np.zeros_like(q_camids), np.zeros_like(g_camids)  # one camera: no valid match
    with pytest.raises(AssertionError):
        torchreid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_same, g_same, use_cython=False)
    with pytest.raises(ISGANError, match='same dataset split'):
        evaluate_rank(distmat, q_pids, g_pids, q_same, g_same)


def test_evaluate_rank_rejects_mismatched_labels():
    distmat, q_pids, g_pids, q_camids, g_camids = _problem(7, 10, 30, 4, 2, False)
    with pytest.raises(ValueError, match='one pid and camid'):
        evaluate_rank(distmat, q_pids[:-1], g_pids, q_camids, g_camids)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_compute_distance_matrix_equals_torchreid(metric):
    gen = torch.Generator().manual_seed(8)
    qf, gf = torch.randn(23, 16, generator=gen), torch.randn(41, 16, generator=gen)
    ours = compute_distance_matrix(qf, gf, metric, chunk_size=5)
    ref = torchreid.metrics.compute_distance_matrix(qf, gf, metric)
    assert ours.shape == (23, 41) and ours.device == qf.device
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_compute_distance_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match='unknown metric'):
        compute_distance_matrix(torch.zeros(2, 3), torch.zeros(4, 3), 'manhattan')
    with pytest.raises(ValueError, match='flatten'):
        compute_distance_matrix(torch.zeros(2, 3), torch.zeros(4, 5))


class _RecordingNet(nn.Module):
    """A flip-sensitive linear descriptor that records the train flag and grad mode it ran under."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 6, 5)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.fc(x.flatten(1))


def _loader(gen):
    return [{'img': torch.randn(b, 3, 4, 6, generator=gen), 'pid': torch.arange(b) + i, 'camid': torch.full((b,), i),
             'impath': ['x'] * b} for i, b in enumerate([3, 2])]


@pytest.mark.parametrize('flip,normalize', [(True, True), (False, False), (True, False)])
def test_extract_features(flip, normalize):
    gen = torch.Generator().manual_seed(9)
    model, loader = _RecordingNet(), _loader(gen)
    model.train()
    feats, pids, camids = extract_features(model, loader, torch.device('cpu'), flip=flip, normalize=normalize)

    imgs = torch.cat([b['img'] for b in loader])
    with torch.no_grad():
        expected = model.fc(imgs.flatten(1))
        if flip:
            expected = expected + model.fc(imgs.flip(3).flatten(1))
        if normalize:
            expected = F.normalize(expected, dim=1)
    assert feats.shape == (5, 5) and feats.dtype == torch.float32 and feats.device.type == 'cpu'
    torch.testing.assert_close(feats, expected)
    if normalize:
        torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    assert all(seen == (False, False) for seen in model.seen)  # eval mode, no autograd
    assert len(model.seen) == (4 if flip else 2)
    assert model.training  # the caller's mode is restored
    assert pids.dtype == np.int64 and camids.dtype == np.int64
    np.testing.assert_array_equal(pids, [0, 1, 2, 1, 2])
    np.testing.assert_array_equal(camids, [0, 0, 0, 1, 1])


def test_flip_changes_descriptor():
    """The flipped view contributes: f(x) + f(hflip x) differs from 2 f(x) for a flip-sensitive model."""
    gen = torch.Generator().manual_seed(10)
    model, loader = _RecordingNet(), _loader(gen)
    flipped, _, _ = extract_features(model, loader, 'cpu', flip=True, normalize=True)
    plain, _, _ = extract_features(model, loader, 'cpu', flip=False, normalize=True)
    assert not torch.allclose(flipped, plain, atol=1e-3)


def test_extract_features_empty_loader():
    with pytest.raises(ISGANError, match='no batch'):
        extract_features(_RecordingNet(), [], 'cpu')


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_rerank_equals_torchreid(metric):
    gen = torch.Generator().manual_seed(11)
    qf, gf = torch.randn(12, 8, generator=gen), torch.randn(40, 8, generator=gen)
    dist = torchreid.metrics.compute_distance_matrix
    ref = torchreid.utils.re_ranking(dist(qf, gf, metric).numpy(), dist(qf, qf, metric).numpy(),
                                     dist(gf, gf, metric).numpy(), k1=6, k2=3, lambda_value=0.3)
    ours = rerank(qf, gf, metric, k1=6, k2=3, lambda_value=0.3)
    assert ours.shape == (12, 40)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    plain = compute_distance_matrix(qf, gf, metric).numpy()
    assert not np.allclose(ours, plain)  # re-ranking changed the distances


def test_rerank_guard_refuses():
    qf, gf = torch.zeros(3, 4), torch.zeros(9, 4)
    with pytest.raises(ISGANError) as err:
        rerank(qf, gf, max_bytes=1)
    message = str(err.value)
    need = evaluation.rerank_peak_bytes(3, 9)
    assert f'{need / 1024 ** 3:.2f} GiB' in message and '3 query + 9 gallery' in message
    assert 'without TEST.RERANK' in message and 'more memory' in message


def test_rerank_peak_estimate_matches_measurement():
    """The guard's estimate is within 10% of re_ranking's traced peak (inputs included)."""
    gen = torch.Generator().manual_seed(12)
    num_q, num_g = 30, 150
    qf, gf = torch.randn(num_q, 8, generator=gen), torch.randn(num_g, 8, generator=gen)
    tracemalloc.start()
    try:
        q_g = compute_distance_matrix(qf, gf).numpy().copy()  # numpy copies so tracemalloc sees the inputs
        q_q = compute_distance_matrix(qf, qf).numpy().copy()
        g_g = compute_distance_matrix(gf, gf).numpy().copy()
        torchreid.utils.re_ranking(q_g, q_q, g_g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.9 <= peak / evaluation.rerank_peak_bytes(num_q, num_g) <= 1.1


@pytest.mark.parametrize('use_rerank', [False, True])
def test_evaluate_wires_the_parts(use_rerank):
    gen = torch.Generator().manual_seed(13)
    q_pids = torch.randint(0, 5, (15,), generator=gen).numpy()
    g_pids = torch.randint(0, 5, (60,), generator=gen).numpy()
    q_camids, g_camids = np.zeros(15, dtype=np.int64), np.ones(60, dtype=np.int64)
    qf, gf = torch.randn(15, 8, generator=gen), torch.randn(60, 8, generator=gen)
    qf[:, 0] += torch.from_numpy(q_pids).float() * 3  # identity signal so the metrics are non-trivial
    gf[:, 0] += torch.from_numpy(g_pids).float() * 3
    results = evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, rerank=use_rerank)

    distmat = rerank(qf, gf) if use_rerank else compute_distance_matrix(qf, gf)
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert set(results) == {'mAP', 'rank1', 'rank5', 'rank10', 'cmc'}
    assert results['mAP'] == mAP
    np.testing.assert_array_equal(results['cmc'], cmc)
    assert [results[f'rank{r}'] for r in (1, 5, 10)] == [float(cmc[0]), float(cmc[4]), float(cmc[9])]
    for key in ('mAP', 'rank1', 'rank5', 'rank10'):
        assert isinstance(results[key], float) and 0 <= results[key] <= 1
    assert results['rank1'] > 0.5  # the identity signal is found


def test_gallery_benchmark_runs_at_a_small_size(capsys):
    """tools/benchmark.py --gallery Q G: time and peak memory of evaluate() on random features, in a fresh process."""
    from isgan_torchreid.benchmarks import benchmark_main

    benchmark_main(['--config-file', os.path.join(CONFIGS, 'isgan_synthetic.yaml'), '--gallery', '300', '2000',
                    '--max-mib', '4'])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[0] == '300 x 2,000' and float(cells[1]) > 0 and cells[5] == '4'
    assert cells[6] == f'{300 * 2000 * 4 / 2 ** 20:.0f}'  # the matrix that is never held
