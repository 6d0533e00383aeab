"""Drop-in comparison: IS-GAN, its stage-1 baseline, MGN and torchreid models under one setting.

Every method is a list of config overrides on top of one compare config, so all of them share
the data manager settings, the P x K sampler, the input size, the optimiser and the seed, and all
are trained by :class:`~isgan_torchreid.engine.staged.ISGANEngine` (stage 1 for everything but
IS-GAN) and evaluated by the same evaluator. Each run keeps its config, checkpoints, TensorBoard
events, results and ``log.txt`` in ``OUTPUT_DIR/<method>/``. The baseline is not trained again:
it is stage 1 of the IS-GAN run (the E_R network trained with L_R alone, paper Sec. 4.1).

Output: one table (printed), ``OUTPUT_DIR/comparison.csv`` and ``OUTPUT_DIR/comparison.json``.
"""
import contextlib
import csv
import json
import os
import sys
import time

import torch
from tabulate import tabulate

from . import cli, compat
from .config import load_config
from .engine import checkpoint as ckpt
from .engine.staged import ISGANEngine
from .errors import ISGANError
from .models import build_model

DEFAULT_METHODS = ("isgan", "baseline", "mgn", "pcb_p6")
BASELINE = "baseline"  # stage 1 of the isgan run, not a run of its own
# method -> config overrides; any other torchreid model name trains as MODEL.NAME <name>, TRAIN.STAGES [1]
METHOD_OVERRIDES = {
    "isgan": ["MODEL.NAME", "isgan", "TRAIN.STAGES", "[1, 2, 3]"],
    "mgn": ["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]"],
}
COLUMNS = ("method", "run", "target", "feature_dim", "params_test", "params_total", "rank1", "rank5", "mAP",
           "train_images_per_s", "test_images_per_s")


class TimedEngine(ISGANEngine):
    """ISGANEngine that counts the images of every training step and times every epoch.

    ``speed`` maps a stage to ``{"images", "seconds"}`` summed over the epochs run in this and any
    previous (resumed) session; it is kept in ``speed_path`` so a resumed comparison still reports it.
    """

    def __init__(self, cfg, datamanager, model, device, speed_path):
        super().__init__(cfg, datamanager, model, device)
        self.speed_path = speed_path
        self.speed = {}
        if os.path.isfile(speed_path):
            with open(speed_path) as f:
                self.speed = json.load(f)
        for stage in cfg.TRAIN.STAGES:  # a stage without a checkpoint starts from scratch: so does its timing
            if not os.path.isfile(ckpt.latest_path(cfg.OUTPUT_DIR, stage)):
                self.speed.pop(str(stage), None)
        self._images = 0

    def forward_backward(self, data):
        """Count the batch, then the engine's training step."""
        self._images += data["img"].size(0)
        return super().forward_backward(data)

    def train(self, *args, **kwargs):
        """One epoch (data loading included), timed; the stage's totals are saved after it."""
        self._images = 0
        start = time.perf_counter()
        super().train(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        entry = self.speed.setdefault(str(self.stage), {"images": 0, "seconds": 0.0})
        entry["images"] += self._images
        entry["seconds"] += time.perf_counter() - start
        ckpt.write_json(self.speed_path, self.speed)


class _Tee:
    """A text stream writing to several streams (the console and a run's log.txt)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def images_per_s(speed, stages):
    """Training throughput over ``stages`` (total images / total seconds); None if one was never timed."""
    entries = [speed[str(s)] for s in stages if str(s) in speed]
    if len(entries) < len(stages):
        return None
    return sum(e["images"] for e in entries) / max(sum(e["seconds"] for e in entries), 1e-9)


def method_overrides(method):
    """The config overrides that turn the compare config into ``method``'s run."""
    if method in METHOD_OVERRIDES:
        return list(METHOD_OVERRIDES[method])
    if method not in compat.model_factory():
        raise ISGANError(f"--methods: unknown method {method!r}; use isgan, baseline, mgn or a torchreid model name "
                         f"({', '.join(sorted(compat.model_factory()))})")
    return ["MODEL.NAME", method, "TRAIN.STAGES", "[1]"]


def runs_for(methods):
    """``--methods`` -> {run name: overrides}; the baseline alone runs IS-GAN's stage 1 only."""
    if not methods:
        raise ISGANError("--methods is empty; name at least one of isgan, baseline, mgn or a torchreid model")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ISGANError(f"--methods names {', '.join(repeated)} more than once; list each method once")
    runs = {}
    if "isgan" in methods or BASELINE in methods:
        runs["isgan"] = method_overrides("isgan")
        if "isgan" not in methods:
            runs["isgan"][-2:] = ["TRAIN.STAGES", "[1]"]
    runs.update({m: method_overrides(m) for m in methods if m not in ("isgan", BASELINE)})
    return runs


def check_part_pooling(cfg):
    """Fail when a part-pooled torchreid model (PCB) gets fewer feature-map rows than stripes."""
    builder = compat.model_factory().get(cfg.MODEL.NAME)
    if builder is None:  # isgan, mgn: built by the project, stripe pooling of any size
        return
    model = builder(num_classes=1, loss="softmax", pretrained=False, use_gpu=False)
    parts = getattr(model, "parts", None)
    if not isinstance(parts, int) or not hasattr(model, "featuremaps"):
        return
    with torch.no_grad():
        rows = model.eval().featuremaps(torch.zeros(1, 3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH)).shape[2]  # (1, C, h, w)
    if rows < parts:
        raise ISGANError(f"{cfg.MODEL.NAME} pools {parts} horizontal stripes but DATA.HEIGHT = {cfg.DATA.HEIGHT} "
                         f"gives a {rows}-row feature map, so stripes would repeat rows; use DATA.HEIGHT >= "
                         f"{16 * parts} (e.g. 128x64 or PCB's 384x128), or leave {cfg.MODEL.NAME} out of --methods")


def model_size(model, height, width, device):
    """(descriptor length, parameters the eval-mode descriptor depends on, all parameters) of ``model``.

    A parameter counts at test time when the descriptor's gradient reaches it, so heads that run in
    eval mode but do not feed the descriptor (e.g. classifiers) count only in the total.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            desc = model(torch.zeros(2, 3, height, width, device=device))  # (2, D)
            if not isinstance(desc, torch.Tensor) or desc.dim() != 2:
                raise ISGANError(f"{type(model).__name__} returns {type(desc).__name__} in eval mode, not a (B, D) "
                                 f"descriptor; a re-ID model's eval-mode forward must return one descriptor per image")
            grads = torch.autograd.grad(desc.sum(), params, allow_unused=True)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    used = sum(p.numel() for p, g in zip(params, grads) if g is not None)
    return desc.size(1), used, sum(p.numel() for p in params)


def train_run(cfg):
    """Set up, build, train and evaluate one run (stdout also goes to OUTPUT_DIR/log.txt); returns its summary.

    The summary holds what the table needs, so the engine, its model and optimiser states are freed
    before the next run starts: ``results``, ``speed``, ``size`` (:func:`model_size`) and
    ``stage1_params`` (parameters of the modules stage 1 trains).
    """
    cli.prepare_output_dir(cfg.OUTPUT_DIR)
    with open(os.path.join(cfg.OUTPUT_DIR, "log.txt"), "a") as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"=> {cfg.MODEL.NAME}: stages {list(cfg.TRAIN.STAGES)} in {cfg.OUTPUT_DIR}")
        device, dm = cli.setup(cfg)
        model = build_model(cfg, dm.num_train_pids)
        engine = TimedEngine(cfg, dm, model, device, os.path.join(cfg.OUTPUT_DIR, "train_speed.json"))
        results = engine.run_stages()
        print(cli.results_table(results, cfg.TEST.RANKS))
    return {
        "results": results,
        "speed": engine.speed,
        "size": model_size(model, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, device),
        "stage1_params": sum(p.numel() for m in engine.trainable_modules(1) for p in m.parameters()),
    }


def _rows(method, run, summary, stages, size):
    """One row per target for ``method``, read from the run's results of the last of ``stages``."""
    feature_dim, params_test, params_total = size
    return [{
        "method": method, "run": f"{run}/stage{stages[-1]}", "target": target, "feature_dim": feature_dim,
        "params_test": params_test, "params_total": params_total, "rank1": m["rank1"], "rank5": m["rank5"],
        "mAP": m["mAP"], "train_images_per_s": images_per_s(summary["speed"], stages),
        "test_images_per_s": m["test_images_per_s"],
    } for target, m in summary["results"][stages[-1]].items()]


def compare(config_file, opts=(), methods=DEFAULT_METHODS):
    """Train and evaluate every method; write OUTPUT_DIR/comparison.{csv,json}; return the rows."""
    methods = list(methods)
    runs = runs_for(methods)
    base = load_config(config_file, list(opts) + next(iter(runs.values())))  # OUTPUT_DIR, TEST.RANKS
    ranks = str(sorted(set(base.TEST.RANKS) | {1, 5}))  # the table reports rank-1 and rank-5
    cfgs = {run: load_config(config_file, list(opts) + overrides + [
        "TEST.RANKS", ranks, "OUTPUT_DIR", os.path.join(base.OUTPUT_DIR, run)]) for run, overrides in runs.items()}
    for cfg in cfgs.values():  # every setting is checked before anything is written or trained
        check_part_pooling(cfg)
    cli.prepare_output_dir(base.OUTPUT_DIR)
    summaries = {run: train_run(cfg) for run, cfg in cfgs.items()}

    rows = []
    for method in methods:
        run = "isgan" if method == BASELINE else method
        summary, stages = summaries[run], list(cfgs[run].TRAIN.STAGES)
        size = summary["size"]
        if method == BASELINE:  # the E_R network alone: what stage 1 trains and evaluates
            stages, size = [1], size[:2] + (summary["stage1_params"],)
        rows += _rows(method, run, summary, stages, size)
    write_comparison(rows, base.OUTPUT_DIR, config_file, runs)
    return rows


def comparison_table(rows):
    """Rows -> a github-style table (ranks and mAP in percent, parameters in millions)."""
    def rate(v):
        return "n/a" if v is None else f"{v:.1f}"

    body = [[r["method"], r["run"], r["target"], r["feature_dim"], f"{r['params_test'] / 1e6:.2f}",
             f"{r['params_total'] / 1e6:.2f}", f"{100 * r['rank1']:.1f}", f"{100 * r['rank5']:.1f}",
             f"{100 * r['mAP']:.1f}", rate(r["train_images_per_s"]), rate(r["test_images_per_s"])] for r in rows]
    headers = ["method", "checkpoint", "target", "feat. dim", "params at test (M)", "params total (M)", "R-1", "R-5",
               "mAP", "train img/s", "test img/s"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def write_comparison(rows, output_dir, config_file, runs):
    """OUTPUT_DIR/comparison.csv (the rows) and comparison.json (the rows plus each run's overrides)."""
    with open(os.path.join(output_dir, "comparison.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    ckpt.write_json(os.path.join(output_dir, "comparison.json"),
                {"config_file": os.path.abspath(config_file), "overrides": runs, "rows": rows})
    print(f"=> wrote {os.path.join(output_dir, 'comparison.csv')} and comparison.json")


@cli.reports_errors
def compare_main(argv):
    """tools/compare.py: train and evaluate each method under one config; print, CSV and JSON the table."""
    p = cli.parser("Compare IS-GAN, its stage-1 baseline, MGN and torchreid models under one setting.")
    p.add_argument("--methods", metavar="NAME", help="isgan, baseline (= stage 1 of the isgan run), mgn or "
                   f"torchreid model names, e.g. --methods isgan mgn (default: {' '.join(DEFAULT_METHODS)})")
    argv, methods = cli.pop_list_flag(argv, "--methods", cli.is_name, "isgan baseline mgn pcb_p6")
    methods = methods or list(DEFAULT_METHODS)
    args = p.parse_args(argv)
    rows = compare(args.config_file, args.opts, methods)
    print(comparison_table(rows))
    print("baseline = stage 1 of the isgan run (E_R trained with L_R only; not trained again). params at test: "
          "those the test descriptor depends on; train img/s: isgan over all its stages, data loading included.")
    return rows
