"""Where does an identity encoder fail? Rank-1 and mAP per group of queries, for one or more encoders.

``tools/benchmark.py --by-factor W1 [W2 ...] --data-dir DIR`` embeds the query and gallery images of a
Market-layout folder (``query/``, ``bounding_box_test/``; junk images, pid -1, left out of the gallery as
torchreid's Market-1501 does) with each encoder (any file :func:`~isgan_torchreid.deploy.load_encoder` reads,
with its run's flip and normalisation), ranks the whole gallery for each query under the Market protocol by
``--metric`` (TEST.METRIC's choices, default Euclidean as TEST.METRIC's; an encoder file does not record its
run's metric), in chunks of queries whose memory is bounded as the evaluator's
(:func:`~isgan_torchreid.engine.evaluation.rank_queries`),
and averages rank-1 and AP over each group of queries: all of them, each query camera, and each value of every
nuisance factor a ``factors.json`` beside the split folders names (synthperson writes view and occlusion;
:func:`~.disentangle.nuisance_factors`). As in torchreid, a query whose identity has no gallery image from
another camera is left out; a group's count is of the queries that remain. A robust encoder [paper, Sec. 1]
loses little on the hard groups (occluded queries, say); two encoders trained alike show there where they differ.
``tools/compare.py --by-factor`` measures each run of a comparison so, on torchreid's test lists of each target
(:func:`split_from_lists`) under the runs' TEST.METRIC.
"""
import os
from typing import Dict, List, Sequence

import numpy as np
from tabulate import tabulate

from .. import storage
from ..deploy.embedding import embed, list_images, market_labels
from ..deploy.encoder import load_encoder
from ..engine.evaluation import MAX_BYTES, chunk_rows, distance_chunks, rank_queries
from ..errors import ISGANError
from .disentangle import nuisance_factors

__all__ = ["read_test_split", "split_from_lists", "query_groups", "measure_by_factor", "by_factor", "short_names",
           "by_factor_table", "run_by_factor"]

QUERY, GALLERY = "query", "bounding_box_test"


def read_test_split(root: str) -> Dict[str, dict]:
    """{"query" | "gallery": {"paths", "pids", "camids"}} of a Market-layout folder; the gallery without junk."""
    split = {}
    for name, folder in (("query", QUERY), ("gallery", GALLERY)):
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            raise ISGANError(f"--data-dir {root}: no {folder}/ folder; pass a dataset in Market-1501 layout "
                             f"(query/ and bounding_box_test/)")
        paths = list_images(path)
        labels = market_labels(paths)
        if labels is None:
            raise ISGANError(f"--data-dir {root}: the images of {folder}/ are not named as Market-1501's "
                             f"(<pid>_c<camera>...); rename them or use tools/test.py with a torchreid dataset")
        pids, camids = labels
        keep = pids != -1
        split[name] = {"paths": [p for p, k in zip(paths, keep) if k], "pids": pids[keep], "camids": camids[keep]}
    return split


def query_groups(paths: Sequence[str], camids: np.ndarray) -> Dict[str, np.ndarray]:
    """Group name -> (Q,) bool mask: all queries, each camera, each value of each nuisance factor."""
    groups = {"all queries": np.ones(len(paths), dtype=bool)}
    for cam in sorted(set(camids.tolist())):
        groups[f"camera {cam + 1}"] = camids == cam
    for factor, values in nuisance_factors(paths).items():
        for value in sorted({v for v in values if v is not None}, key=str):
            groups[f"{factor} = {str(value).lower()}"] = np.array([v == value for v in values])
    return groups


def split_from_lists(query, gallery) -> Dict[str, dict]:
    """:func:`read_test_split`'s dict from torchreid's test lists (a data manager's ``fetch_test_loaders(name)``:
    items (path, pid, camid, ...)), e.g. for a torchreid dataset whose folder layout is not Market's."""
    return {name: {"paths": [item[0] for item in items], "pids": np.array([item[1] for item in items]),
                   "camids": np.array([item[2] for item in items])}
            for name, items in (("query", query), ("gallery", gallery))}


def measure_by_factor(weights: Sequence[str], split: Dict[str, dict], device: str = "auto",
                      max_bytes: int = MAX_BYTES, metric: str = "euclidean") -> dict:
    """{"groups": {group: valid queries}, "results": {weights: {group: {"rank1", "mAP"}}}} on ``split``
    (:func:`read_test_split`, :func:`split_from_lists`); a group without valid queries (none with a gallery match
    from another camera) is left out of the results. ``max_bytes``: the working memory of one chunk of queries;
    ``metric``: TEST.METRIC's choices."""
    repeated = sorted({w for w in weights if list(weights).count(w) > 1})
    if repeated:
        raise ISGANError(f"--by-factor names {', '.join(repeated)} more than once; list each encoder once")
    q, g = split["query"], split["gallery"]
    groups = query_groups(q["paths"], q["camids"])
    results, valid = {}, None
    for path in weights:
        encoder = load_encoder(path, device=device)
        chunks = distance_chunks(embed(encoder, q["paths"]), embed(encoder, g["paths"]), metric,
                                 chunk_size=chunk_rows(len(g["paths"]), max_bytes))  # (C, G) blocks
        valid, cmc, _, aps = rank_queries((d.cpu() for _, d in chunks), q["pids"], g["pids"], q["camids"],
                                          g["camids"], max_rank=1)  # (Q,); (V, 1), (V,) of the V valid ones
        rows = {}
        for group, mask in groups.items():
            inside = mask[valid]  # (V,)
            if inside.any():
                rows[group] = {"rank1": float(cmc[inside, 0].mean()), "mAP": float(aps[inside].mean())}
        results[path] = rows
    counts = {group: int((mask & valid).sum()) for group, mask in groups.items()}  # the labels decide validity
    return {"groups": counts, "results": results}


def by_factor(weights: Sequence[str], root: str, device: str = "auto", max_bytes: int = MAX_BYTES,
              metric: str = "euclidean") -> dict:
    """:func:`measure_by_factor` on the test split of the Market-layout folder ``root``, with ``data_dir`` and
    ``metric``."""
    return {"data_dir": root, "metric": metric,
            **measure_by_factor(weights, read_test_split(root), device, max_bytes, metric)}


def short_names(paths: Sequence[str]) -> List[str]:
    """The paths less the folders they all share (a single path: its last two parts)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    shared = 0
    while len(parts) > 1 and all(len(p) > shared + 1 for p in parts) and len({p[shared] for p in parts}) == 1:
        shared += 1
    shared = shared if len(parts) > 1 else max(len(parts[0]) - 2, 0)
    return ["/".join(p[shared:]) for p in parts]


def by_factor_table(result: dict) -> str:
    """Rows: groups; columns: each encoder's R-1 / mAP (%), then, for two or more, each later one minus the
    first. Encoders are named by their paths less the folders they share."""
    weights = list(result["results"])
    names = short_names(weights)
    headers = ["queries", "n"] + [f"R-1 / mAP: {n}" for n in names]
    headers += [f"{n} - {names[0]}" for n in names[1:]]
    rows = []
    for group, count in result["groups"].items():
        cells = [result["results"][w].get(group) for w in weights]
        row = [group, count] + [f"{100 * c['rank1']:.1f} / {100 * c['mAP']:.1f}" if c else "-" for c in cells]
        for c in cells[1:]:
            row.append(f"{100 * (c['rank1'] - cells[0]['rank1']):+.1f} / {100 * (c['mAP'] - cells[0]['mAP']):+.1f}"
                       if c and cells[0] else "-")
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github")


def run_by_factor(weights: List[str], root: str, out=None, metric: str = "euclidean") -> dict:
    """Measure, print the table, write the JSON when ``out`` is given; returns the result."""
    result = by_factor(weights, root, metric=metric)
    print(f"re-identification by query group on {root}: {len(result['groups'])} groups, Market protocol over the "
          f"whole gallery, {metric} distance (n: the group's queries with a gallery match from another camera)")
    print(by_factor_table(result))
    if out:
        storage.write_json(out, result)
        print(f"=> wrote {out}")
    return result
