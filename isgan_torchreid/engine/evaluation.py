"""Re-ID evaluation: flip-summed test features, distances, k-reciprocal re-ranking, exact CMC/mAP.

`evaluate_rank` returns exactly what torchreid's pure-Python evaluator
(`torchreid.metrics.evaluate_rank(..., use_cython=False)`) returns, but processes the queries in
vectorised chunks instead of one Python iteration per query (minutes -> seconds on Market-1501).

Memory stays bounded at any gallery size: `evaluate` computes the distances of one query chunk at a
time and ranks it, so no Q x G matrix is held unless it fits `max_bytes` (MSMT17's 11,659 x 82,161
float32 distances alone would be 3.8 GB). Where the gallery left to some query (after same-camera
removal) is shorter than the requested ranks, the CMC stops at that length and `evaluate` reports the
ranks beyond it as NaN (torchreid raises there).
"""
import numpy as np
import torch
import torch.nn.functional as F
import torchreid

from isgan_torchreid.console import progress
from isgan_torchreid.errors import ISGANError

__all__ = ['MAX_BYTES', 'chunk_rows', 'evaluate_rank', 'rank_chunks', 'rank_queries', 'distance_chunks',
           'compute_distance_matrix', 'descriptor', 'extract_features', 'rerank', 'evaluate']

# Default working-memory budget of one query chunk (distances + ranking); evaluate(max_bytes=...).
MAX_BYTES = 256 * 2 ** 20
# Working memory per (query, gallery) pair of a chunk, measured with tracemalloc (a test checks both):
# the int64 argsort, gathered pids/camids, kept positions, hit counts and float64 AP terms peak at
# 36-41 bytes (+4 for the float32 distances); CUHK03's draws (ten per query, repeat and gallery
# identity, in several int64 arrays) at up to ~770 bytes when every gallery image is its own identity.
_BYTES_PER_PAIR = 48
_CUHK03_BYTES_PER_PAIR = 800
_CUHK03_REPEATS = 10  # torchreid's eval_cuhk03 `num_repeats`
_FALLBACK_AVAILABLE_BYTES = 2 * 1024 ** 3  # used when /proc/meminfo cannot be read


def _to_numpy(x):
    """A numpy view of a tensor (detached, on CPU) or array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _average_precision(hits, kept_pos, num_kept):
    """Non-interpolated AP of each query row, bit-identical to torchreid's per-query computation.

    hits: (C, G) bool, true at kept correct matches in distance order; kept_pos: (C, G) position of
    each entry in the query's kept list; num_kept: (C,) kept-list lengths.
    """
    rows, cols = np.nonzero(hits)
    ranks = kept_pos[rows, cols]  # 0-based rank of each correct match among kept entries
    precision = np.cumsum(hits, axis=1, dtype=np.int64)[rows, cols] / (ranks + 1.0)
    # torchreid sums precision over the compacted kept list, whose length fixes numpy's pairwise
    # summation tree, so rows are summed in groups of equal kept length to get the same floats.
    terms = np.zeros(hits.shape, dtype=np.float64)  # (C, G)
    terms[rows, ranks] = precision
    sums = np.empty(len(hits), dtype=np.float64)
    for length in np.unique(num_kept):
        same = num_kept == length
        sums[same] = terms[same, :length].sum(axis=1)
    return sums / hits.sum(axis=1)


def _market_cmc(hits, kept_pos, max_rank):
    """(C, max_rank) 0/1 CMC rows: 1 from the rank of the first kept correct match on."""
    first = kept_pos[np.arange(len(hits)), hits.argmax(axis=1)]  # (C,)
    return (np.arange(max_rank) >= first[:, None]).astype(np.float32)


def _cuhk03_cmc(hits, keep, kept_pos, sorted_gid, num_gids, max_rank):
    """(C, max_rank) CMC rows and (C,) gallery-id counts under CUHK03's single-gallery-shot protocol.

    For each query and each of 10 repeats one kept gallery image per identity is drawn, in the same
    order and with the same `np.random` calls' consumption as torchreid's `eval_cuhk03`
    (`np.random.choice(idxs)` is `np.random.randint(0, len(idxs))`), so the result is identical under
    the same `np.random.seed`.
    """
    num_rows = len(hits)
    rows, cols = np.nonzero(keep)  # kept entries, in (query, distance) order
    pos = kept_pos[rows, cols]
    # group the kept entries by (query, gallery id); a stable sort keeps each group in rank order
    key = rows * num_gids + sorted_gid[rows, cols]
    by_group = np.argsort(key, kind='stable')
    key = key[by_group]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # first entry of each group
    sizes = np.diff(np.r_[starts, len(key)])
    group_row = key[starts] // num_gids
    group_first = pos[by_group[starts]]
    group_is_query_id = hits[rows[by_group[starts]], cols[by_group[starts]]]
    # torchreid visits the identities of a query in order of first appearance in its ranking
    visit = np.lexsort((group_first, group_row))
    groups_per_row = np.bincount(group_row, minlength=num_rows)  # (C,)
    row_offset = np.cumsum(groups_per_row) - groups_per_row

    # one draw per (query, repeat, identity), laid out in torchreid's loop order
    draws_per_row = _CUHK03_REPEATS * groups_per_row
    draw_row = np.repeat(np.arange(num_rows), draws_per_row)
    step = np.arange(len(draw_row)) - np.repeat(np.cumsum(draws_per_row) - draws_per_row, draws_per_row)
    repeat = step // groups_per_row[draw_row]
    group = visit[row_offset[draw_row] + step % groups_per_row[draw_row]]
    pick = np.random.randint(0, sizes[group])  # global RNG: part of the protocol being reproduced
    chosen = pos[by_group[starts[group] + pick]]  # kept rank of the sampled image

    # rank of the sampled true match = number of sampled images ranked before it
    trial = draw_row * _CUHK03_REPEATS + repeat  # (query, repeat) id
    is_match = group_is_query_id[group]
    match_pos = np.empty(num_rows * _CUHK03_REPEATS, dtype=chosen.dtype)
    match_pos[trial[is_match]] = chosen[is_match]
    before = chosen < match_pos[trial]
    first = np.bincount(trial[before], minlength=num_rows * _CUHK03_REPEATS)
    first = first.reshape(num_rows, _CUHK03_REPEATS)  # (C, 10)
    found = (first[:, :, None] <= np.arange(max_rank)).sum(axis=1)  # (C, max_rank) repeats found by rank r
    return found.astype(np.float32) / _CUHK03_REPEATS, groups_per_row


def chunk_rows(num_gallery, max_bytes=MAX_BYTES, use_metric_cuhk03=False):
    """Query rows per chunk so that ranking one chunk against ``num_gallery`` entries fits ``max_bytes``."""
    per_row = max(num_gallery, 1) * (_CUHK03_BYTES_PER_PAIR if use_metric_cuhk03 else _BYTES_PER_PAIR)
    return max(1, int(max_bytes) // per_row)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  max_bytes=MAX_BYTES):
    """CMC curve and mAP, equal to `torchreid.metrics.evaluate_rank(..., use_cython=False)`.

    Gallery images with the query's pid and camid are discarded; queries left without a correct
    match are skipped. `max_rank` is clipped to the gallery size, and further to the shortest list left
    to a valid query (gallery identities for CUHK03), where torchreid fails stacking rows of unequal
    length. Rows are ordered with the same `np.argsort(distmat, axis=1)` as torchreid, so ties in
    `distmat` break the same way. The CMC of the CUHK03 protocol reproduces torchreid's draws from
    numpy's global RNG one for one, so it is identical under the same `np.random.seed` (and advances
    the RNG state the same way). Queries are ranked in chunks whose working memory fits `max_bytes`.

    Returns:
        (cmc, mAP): float32 array of length <= max_rank, and a float.
    """
    distmat = _to_numpy(distmat)
    rows = chunk_rows(distmat.shape[1], max_bytes, use_metric_cuhk03)
    chunks = (distmat[start:start + rows] for start in range(0, distmat.shape[0], rows))
    return rank_chunks(chunks, q_pids, g_pids, q_camids, g_camids, max_rank, use_metric_cuhk03)


def rank_chunks(chunks, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False):
    """`evaluate_rank` on distances given as successive (C, G) row blocks covering every query in order."""
    valid, cmc, listed, aps = rank_queries(chunks, q_pids, g_pids, q_camids, g_camids, max_rank, use_metric_cuhk03)
    if not valid.any():
        raise ISGANError(
            f'evaluate_rank: none of the {len(valid)} query identities has a gallery image from another camera '
            '(torchreid asserts "all query identities do not appear in gallery"); check that query and '
            'gallery come from the same dataset split and that pids/camids are parsed correctly'
        )
    length = int(listed.min())  # every row has at least this many ranks
    all_cmc = np.ascontiguousarray(cmc[:, :length])  # (num_valid, length)
    return all_cmc.sum(0) / float(len(all_cmc)), float(np.mean(aps))


def rank_queries(chunks, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False):
    """Each query's ranking, from distances given as successive (C, G) row blocks covering every query in order.

    Returns (valid, cmc, listed, aps): ``valid`` (Q,) bool, the queries whose identity appears in the gallery
    from another camera (the others are skipped, as torchreid does); for the valid ones in order, ``cmc``
    (num_valid, max_rank) 0/1 rows, ``listed`` (num_valid,) how many of their ranks are defined, and ``aps``
    (num_valid,) average precisions. `evaluate_rank` averages them over the queries.
    """
    q_pids, g_pids, q_camids, g_camids = (_to_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = len(q_pids), len(g_pids)
    if q_pids.shape != (num_q,) or q_camids.shape != (num_q,) or g_pids.shape != (num_g,) \
            or g_camids.shape != (num_g,):
        raise ValueError(
            f'evaluate_rank: got {q_pids.shape}/{q_camids.shape} query and {g_pids.shape}/{g_camids.shape} '
            'gallery pids/camids; pass one pid and camid per query and per gallery image'
        )
    max_rank = min(max_rank, num_g)
    gallery_ids, sorted_ids = np.unique(g_pids, return_inverse=True)  # dense gallery identity ids

    valid_rows, cmc_rows, lengths, aps = [], [], [], []
    start = 0
    for dist in chunks:
        dist = _to_numpy(dist)
        stop = start + len(dist)
        if dist.ndim != 2 or dist.shape[1] != num_g or stop > num_q:
            raise ValueError(
                f'evaluate_rank: distmat is {num_q}x{num_g} by its labels but rows {start}-{stop} have shape '
                f'{dist.shape}; pass one pid and camid per row/column'
            )
        order = np.argsort(dist, axis=1)  # (C, G), the same call as torchreid
        matches = g_pids[order] == q_pids[start:stop, None]
        keep = ~(matches & (g_camids[order] == q_camids[start:stop, None]))
        hits = matches & keep
        valid = hits.any(axis=1)  # queries whose identity still appears in the gallery
        valid_rows.append(valid)
        start = stop
        if not valid.any():
            continue
        order, keep, hits = order[valid], keep[valid], hits[valid]
        kept_pos = np.cumsum(keep, axis=1, dtype=np.int64) - 1  # (C, G) rank among kept entries
        num_kept = kept_pos[:, -1] + 1
        aps.append(_average_precision(hits, kept_pos, num_kept))
        if use_metric_cuhk03:
            cmc, num_listed = _cuhk03_cmc(hits, keep, kept_pos, sorted_ids[order], len(gallery_ids), max_rank)
        else:
            cmc, num_listed = _market_cmc(hits, kept_pos, max_rank), num_kept
        cmc_rows.append(cmc)
        lengths.append(np.minimum(num_listed, max_rank))
    if start != num_q:
        raise ValueError(f'evaluate_rank: distmat has {start} rows but {num_q} query pids/camids; pass one pid '
                         'and camid per row/column')
    valid = np.concatenate(valid_rows) if valid_rows else np.zeros(0, dtype=bool)
    if not cmc_rows:
        return valid, np.zeros((0, max_rank), np.float32), np.zeros(0, np.int64), np.zeros(0)
    return valid, np.concatenate(cmc_rows), np.concatenate(lengths), np.concatenate(aps)


def distance_chunks(qf, gf, metric='euclidean', chunk_size=1024):
    """(start, (C, G) distances) for successive chunks of ``chunk_size`` queries, on the features' device.

    'euclidean' is the squared Euclidean distance and 'cosine' is 1 - cosine similarity, as in
    `torchreid.metrics.compute_distance_matrix`.
    """
    if qf.dim() != 2 or gf.dim() != 2 or qf.size(1) != gf.size(1):
        raise ValueError(
            f'compute_distance_matrix: expected (Q, D) and (G, D) features, got {tuple(qf.shape)} and '
            f'{tuple(gf.shape)}; flatten the descriptors to one row per image'
        )
    if metric == 'euclidean':  # (G,) squared norms, a chunk of rows at a time: no (G, D) temporary
        g_sq = torch.cat([gf.new_empty(0)] + [gf[i:i + chunk_size].pow(2).sum(dim=1)
                                              for i in range(0, gf.size(0), chunk_size)])
    elif metric == 'cosine':  # normalised copies of the features (Q x D and G x D)
        qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
    else:
        raise ValueError(
            f'compute_distance_matrix: unknown metric {metric!r}; use "euclidean" or "cosine" (TEST.METRIC)'
        )

    def chunks():
        for start in range(0, qf.size(0), chunk_size):
            q = qf[start:start + chunk_size]  # (C, D)
            if metric == 'euclidean':
                sq = q.pow(2).sum(dim=1, keepdim=True) + g_sq  # (C, G)
                yield start, sq.addmm_(q, gf.t(), beta=1, alpha=-2)
            else:
                yield start, 1 - q @ gf.t()

    return chunks()


def compute_distance_matrix(qf, gf, metric='euclidean', chunk_size=1024):
    """(Q, G) distances on the features' device (see `distance_chunks`)."""
    chunks = distance_chunks(qf, gf, metric, chunk_size)  # validates the inputs
    distmat = qf.new_empty((qf.size(0), gf.size(0)))  # (Q, G)
    for start, dist in chunks:
        distmat[start:start + len(dist)] = dist
    return distmat


def descriptor(model, imgs, flip=True, normalize=True):
    """The test descriptor of a batch: f(x) + f(hflip(x)) (with flip), then L2-normalised (with normalize)."""
    f = model(imgs)  # (B, D)
    if flip:
        f = f + model(torch.flip(imgs, dims=[3]))
    if normalize:
        f = F.normalize(f, p=2, dim=1)
    return f


def extract_features(model, loader, device, flip=True, normalize=True, desc='extracting features'):
    """Test descriptors of a loader: f(x) + f(hflip(x)) (with flip), then L2-normalised (with normalize).

    The model (already on `device`) runs in eval mode under `torch.no_grad()`; its previous
    train/eval mode is restored afterwards. The loader yields torchreid dicts with 'img', 'pid', 'camid'.
    Its progress (images of `loader.dataset`) is shown as `desc` (`isgan_torchreid.console.progress`).

    Returns:
        (features (N, D) float32 on CPU, pids int64 array, camids int64 array).
    """
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    try:
        total = len(loader.dataset) if hasattr(getattr(loader, 'dataset', None), '__len__') else None
        with torch.no_grad(), progress(total=total, desc=desc, unit='img') as bar:
            for batch in loader:
                f = descriptor(model, batch['img'].to(device), flip, normalize)  # (B, D)
                feats.append(f.float().cpu())
                pids.append(np.asarray(batch['pid'], dtype=np.int64).reshape(-1))
                camids.append(np.asarray(batch['camid'], dtype=np.int64).reshape(-1))
                bar.update(len(f))
    finally:
        model.train(was_training)
    if not feats:
        raise ISGANError('extract_features: the loader yielded no batch; check the query/gallery dataset paths')
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def rerank_peak_bytes(num_query, num_gallery):
    """Peak memory of `torchreid.utils.re_ranking` on float32 distances, inputs included.

    With N = num_query + num_gallery, re_ranking holds at its peak (the `argsort` of the N x N
    matrix): the normalised distances (4 N^2 bytes), V (4 N^2), the int64 argsort (8 N^2) and its
    int32 copy (4 N^2), next to the three input matrices (4 (Q^2 + QG + G^2)).
    """
    n = num_query + num_gallery
    inputs = 4 * (num_query ** 2 + num_query * num_gallery + num_gallery ** 2)
    return 20 * n * n + inputs


def _available_bytes():
    """MemAvailable from /proc/meminfo, or a conservative constant where it cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_AVAILABLE_BYTES


def rerank(qf, gf, metric='euclidean', k1=20, k2=6, lambda_value=0.3, max_bytes=None):
    """(Q, G) k-reciprocal re-ranked distances via `torchreid.utils.re_ranking` (numpy, float32).

    Refuses with ISGANError when the estimated peak memory (`rerank_peak_bytes`) exceeds `max_bytes`
    (default: MemAvailable).
    """
    num_q, num_g = qf.size(0), gf.size(0)
    need = rerank_peak_bytes(num_q, num_g)
    available = _available_bytes() if max_bytes is None else max_bytes
    if need > available:
        raise ISGANError(
            f'rerank: k-reciprocal re-ranking of {num_q} query + {num_g} gallery images needs about '
            f'{need / 1024 ** 3:.2f} GiB (several {num_q + num_g}^2 matrices) but only '
            f'{available / 1024 ** 3:.2f} GiB is available; evaluate without TEST.RERANK, or on a machine '
            'with more memory / a smaller gallery'
        )
    qf, gf = qf.float(), gf.float()
    q_g = compute_distance_matrix(qf, gf, metric).cpu().numpy()
    q_q = compute_distance_matrix(qf, qf, metric).cpu().numpy()
    g_g = compute_distance_matrix(gf, gf, metric).cpu().numpy()
    return torchreid.utils.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)


_rerank = rerank  # evaluate()'s `rerank` flag shadows the function's name


def evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, metric='euclidean', rerank=False,
             use_metric_cuhk03=False, ranks=(1, 5, 10), max_bytes=MAX_BYTES):
    """mAP and CMC of query against gallery features: {'mAP', 'rank1', 'rank5', 'rank10', 'cmc'}.

    Without re-ranking, distances are computed and ranked one query chunk at a time within
    ``max_bytes`` (re-ranking needs the full matrices; `rerank` guards its memory). A rank beyond what
    the gallery allows (see `evaluate_rank`) is reported as NaN, with a printed note.
    """
    max_rank = max(50, *ranks)
    if rerank:
        cmc, mAP = evaluate_rank(_rerank(qf, gf, metric), q_pids, g_pids, q_camids, g_camids, max_rank,
                                 use_metric_cuhk03, max_bytes)
    else:
        rows = chunk_rows(len(gf), max_bytes, use_metric_cuhk03)
        chunks = (dist.cpu().numpy() for _, dist in distance_chunks(qf, gf, metric, rows))
        cmc, mAP = rank_chunks(chunks, q_pids, g_pids, q_camids, g_camids, max_rank, use_metric_cuhk03)
    beyond = [r for r in ranks if r > len(cmc)]
    if beyond:
        print(f'=> rank-{", ".join(map(str, beyond))} reported as NaN: the CMC has {len(cmc)} ranks, the shortest '
              f'gallery list left to a query (of {len(g_pids)} gallery images, same-camera matches removed)')
    results = {'mAP': mAP, 'cmc': cmc}
    results.update({f'rank{r}': float(cmc[r - 1]) if r <= len(cmc) else float('nan') for r in ranks})
    return results
