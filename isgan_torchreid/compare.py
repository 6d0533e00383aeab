"""Drop-in comparison: IS-GAN, its E_R baseline, MGN and torchreid models under one setting.

Every method is a list of config overrides on top of one compare config, so all of them share the data
manager settings, the P x K sampler, the input size, the optimiser, the seed and the evaluator, and all
are trained by :class:`~isgan_torchreid.engine.staged.ISGANEngine`. Every method gets IS-GAN's E_R
schedule: the stage-1 epochs, then the stage-3 epochs at the stage-3 learning rate. IS-GAN runs stages
[1, 2, 3] (E_R is frozen in stage 2); every other method runs stages [1, 3], its stage 3 continuing its
own identity objective. The baseline is IS-GAN's E_R network trained that way with L_R alone (paper
Sec. 3.2), so IS-GAN's gain over it is what the GAN stages add, not the learning-rate drop.
Each run keeps its config, checkpoints, TensorBoard events, results and ``train.log`` in
``OUTPUT_DIR/<method>/``.

Output: one table (printed), ``OUTPUT_DIR/comparison.csv`` and ``OUTPUT_DIR/comparison.json``.
"""
import csv
import os

import torch
from tabulate import tabulate

from . import cli, compat
from .config import load_config, resolve_config_file
from .engine import checkpoint as ckpt
from .engine import distributed
from .engine.hooks import EpochTimer, default_hooks
from .engine.lock import output_dir_lock
from .errors import ISGANError

DEFAULT_METHODS = ("isgan", "isgan_tri", "baseline", "mgn", "pcb_p6")
# method -> config overrides; any other torchreid model name trains as MODEL.NAME <name> on stages [1, 3]
METHOD_OVERRIDES = {
    "isgan": ["MODEL.NAME", "isgan", "TRAIN.STAGES", "[1, 2, 3]"],
    "isgan_tri": ["MODEL.NAME", "isgan", "LOSS.ISGAN_TRIPLET", "True", "TRAIN.STAGES", "[1, 2, 3]"],
    "baseline": ["MODEL.NAME", "baseline", "TRAIN.STAGES", "[1, 3]"],
    "mgn": ["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1, 3]"],
}
COLUMNS = ("method", "run", "target", "feature_dim", "params_test", "params_total", "rank1", "rank5", "mAP",
           "train_images_per_s", "test_images_per_s")


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
        raise ISGANError(f"--methods: unknown method {method!r}; use isgan, isgan_tri, baseline, mgn or a torchreid "
                         f"model name ({', '.join(sorted(compat.model_factory()))})")
    return ["MODEL.NAME", method, "TRAIN.STAGES", "[1, 3]"]


def runs_for(methods):
    """``--methods`` -> {run name: overrides}."""
    if not methods:
        raise ISGANError("--methods is empty; name at least one of isgan, baseline, mgn or a torchreid model")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ISGANError(f"--methods names {', '.join(repeated)} more than once; list each method once")
    return {m: method_overrides(m) for m in methods}


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
    """Set up, build, train and evaluate one run (the console also goes to OUTPUT_DIR/train.log); returns its summary.

    The summary holds what the table needs, so the engine, its model and optimiser states are freed
    before the next run starts: ``results``, ``speed`` ({stage: images, seconds}) and ``size``
    (:func:`model_size`).
    """
    cli.prepare_output_dir(cfg.OUTPUT_DIR)
    with output_dir_lock(cfg.OUTPUT_DIR), \
            cli.console_log(os.path.join(cfg.OUTPUT_DIR, "train.log"), f"tools/compare.py: run {cfg.MODEL.NAME}"):
        print(f"=> {cfg.MODEL.NAME}: stages {list(cfg.TRAIN.STAGES)} in {cfg.OUTPUT_DIR}")
        device, dm = cli.setup(cfg)
        timer = EpochTimer(os.path.join(cfg.OUTPUT_DIR, "train_speed.json"))
        engine = cli.build_engine(cfg, dm, device, hooks=default_hooks(cfg) + [timer])
        results = engine.run_stages()
        print(cli.results_table(results, cfg.TEST.RANKS))
    size = model_size(engine.model, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, device)
    return {"results": results, "speed": timer.speed, "size": size}


def _rows(method, summary, stages):
    """One row per target for ``method``, read from the run's results of its last stage."""
    feature_dim, params_test, params_total = summary["size"]
    return [{
        "method": method, "run": f"{method}/stage{stages[-1]}", "target": target, "feature_dim": feature_dim,
        "params_test": params_test, "params_total": params_total, "rank1": m["rank1"], "rank5": m["rank5"],
        "mAP": m["mAP"], "train_images_per_s": images_per_s(summary["speed"], stages),
        "test_images_per_s": m["test_images_per_s"],
    } for target, m in summary["results"][stages[-1]].items()]


def compare(config_file, opts=(), methods=DEFAULT_METHODS):
    """Train and evaluate every method; write OUTPUT_DIR/comparison.{csv,json}; return the rows."""
    config_file = resolve_config_file(config_file)  # a packaged name -> its file, whose path comparison.json records
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
    rows = [row for m in methods for row in _rows(m, summaries[m], list(cfgs[m].TRAIN.STAGES))]
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
    path = os.path.join(output_dir, "comparison.csv")
    with ckpt.output_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    ckpt.write_json(os.path.join(output_dir, "comparison.json"),
                {"config_file": os.path.abspath(config_file), "overrides": runs, "rows": rows})
    print(f"=> wrote {os.path.join(output_dir, 'comparison.csv')} and comparison.json")


@cli.reports_errors
def compare_main(argv):
    """tools/compare.py: train and evaluate each method under one config; print, CSV and JSON the table."""
    distributed.single_process_only("tools/compare.py", "to train one method on several GPUs, run tools/train.py "
                                    "under torchrun with the method's overrides")
    p = cli.parser("Compare IS-GAN, its E_R baseline, MGN and torchreid models under one setting.")
    p.add_argument("--methods", metavar="NAME", help="isgan, isgan_tri (IS-GAN + MGN's triplet term), baseline "
                   "(IS-GAN's E_R trained with L_R only), mgn or "
                   f"torchreid model names, e.g. --methods isgan mgn (default: {' '.join(DEFAULT_METHODS)})")
    argv, methods = cli.pop_list_flag(argv, "--methods", cli.is_name, "isgan baseline mgn pcb_p6")
    methods = methods or list(DEFAULT_METHODS)
    args = cli.parse_args(p, argv)
    rows = compare(args.config_file, args.opts, methods)
    print(comparison_table(rows))
    print("Every method: stage-1 epochs, then stage-3 epochs at the stage-3 learning rate (IS-GAN's E_R schedule; "
          "isgan adds its stage 2). isgan_tri = IS-GAN with MGN's triplet term in L_R (LOSS.ISGAN_TRIPLET). "
          "baseline = IS-GAN's E_R trained with L_R only. params at test: those the test descriptor depends on; "
          "train img/s: over all stages of the run, data loading included.")
    return rows
