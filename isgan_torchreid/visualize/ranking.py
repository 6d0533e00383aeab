"""Ranked retrieval lists of several models side by side (the paper's Fig. 4), drawn by torchreid.

Each model ranks the whole gallery for each chosen query with the evaluation's descriptor and distance
(TEST.FLIP, TEST.NORMALIZE, TEST.METRIC; no re-ranking). torchreid's ``visualize_ranked_results`` draws
each list (query, then the top k, green border: same identity, red: another; gallery images of the query's
identity from the query's camera are skipped, as in evaluation); this module stacks the lists of all models
for each query into one labelled sheet.
"""
import contextlib
import io
import os
import tempfile
from typing import List, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .. import compat
from ..engine.evaluation import compute_distance_matrix, extract_features
from .canvas import Tile, market_label, sheet

__all__ = ["RankedModel", "rank_lists", "ranking_figure"]


class _Images(Dataset):
    """torchreid items (path, pid, camid, ...) -> the dicts ``extract_features`` reads."""

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform
        self.read = compat.torchreid_base().utils.read_image

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, pid, camid = self.items[index][:3]
        return {"img": self.transform(self.read(path)), "pid": pid, "camid": camid}


class RankedModel:
    """A model to rank with: the module (on ``device``), its test transform and its name in the figure."""

    def __init__(self, name: str, model, transform, device):
        self.name = name
        self.model = model
        self.transform = transform
        self.device = device


def rank_lists(ranked: RankedModel, queries: Sequence, gallery: Sequence, test_cfg, topk: int, size):
    """For each query: (torchreid's picture of its top-``topk`` list, correct matches among them).

    ``queries``, ``gallery``: torchreid items (path, pid, camid, ...); ``size``: (width, height) of each image.
    """
    def features(items, split):
        loader = DataLoader(_Images(items, ranked.transform), batch_size=test_cfg.BATCH_SIZE, num_workers=0)
        return extract_features(ranked.model, loader, ranked.device, test_cfg.FLIP, test_cfg.NORMALIZE,
                                desc=f"{ranked.name}: {split} features")

    qf, q_pids, q_cams = features(queries, "query")
    gf, g_pids, g_cams = features(gallery, "gallery")
    dist = compute_distance_matrix(qf, gf, test_cfg.METRIC).cpu().numpy()  # (Q, G)
    draw = compat.torchreid_base().utils.visualize_ranked_results
    lists = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in range(len(queries)):
            folder = os.path.join(tmp, str(q))
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                draw(dist[q:q + 1], ([queries[q]], gallery), "image", width=size[0], height=size[1],
                     save_dir=folder, topk=topk)
            (name,) = os.listdir(folder)
            with Image.open(os.path.join(folder, name)) as picture:
                strip = picture.convert("RGB")
            order = np.argsort(dist[q], kind="stable")
            kept = order[~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))][:topk]
            lists.append((strip, int((g_pids[kept] == q_pids[q]).sum())))
    return lists


def ranking_figure(models: List[RankedModel], queries: Sequence, gallery: Sequence, test_cfg, topk: int, size,
                   target: str, font_size: int):
    """One block per query, one row per model: the query, then its top-``topk`` gallery images."""
    per_model = [rank_lists(m, queries, gallery, test_cfg, topk, size) for m in models]
    rows, labels = [], []
    for q, item in enumerate(queries):
        for m, ranked in enumerate(models):
            strip, correct = per_model[m][q]
            rows.append([Tile(strip)])
            head = f"query {q + 1}: {market_label(item[0])}\n" if m == 0 else ""
            labels.append(f"{head}{ranked.name}\n{correct}/{topk} correct")
    title = (f"Top-{topk} retrieval on {target} ({len(gallery)} gallery images), "
             f"{len(models)} model{'s' if len(models) > 1 else ''} per query")
    caption = (f"Each row: the query (left), then the {topk} nearest gallery images, nearest first, by the model's "
               f"test descriptor (flip {'on' if test_cfg.FLIP else 'off'}, {test_cfg.METRIC} distance, no "
               f"re-ranking). Green border: same identity as the query; red: another identity. Gallery images of "
               f"the query's identity taken by the query's camera are skipped, as in evaluation. Drawn by "
               f"torchreid's visualize_ranked_results.")
    return sheet(rows, title=title, row_labels=labels, caption=caption, font_size=font_size)
