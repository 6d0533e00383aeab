"""Drop-in comparison: IS-GAN, its E_R baseline, MGN and torchreid models under one setting.

Every method is a list of config overrides on top of one compare config, so all of them share the data
manager settings, the P x K sampler, the input size, the optimiser, the seed and the evaluator, and all
are trained by :class:`~isgan_torchreid.engine.staged.StagedEngine`. Every method gets IS-GAN's E_R
schedule: the stage-1 epochs, then the stage-3 epochs at the stage-3 learning rate. IS-GAN runs stages
[1, 2, 3] (E_R is frozen in stage 2); every other method runs stages [1, 3], its stage 3 continuing its
own identity objective. The baseline is IS-GAN's E_R network trained that way with L_R alone (paper
Sec. 3.2), so IS-GAN's gain over it is what the GAN stages add, not the learning-rate drop.
Each run keeps its config, checkpoints, TensorBoard events, results and ``train.log`` in
``OUTPUT_DIR/<method>/``; with several ``--seeds`` (each overrides SEED), every method runs once per seed,
in ``OUTPUT_DIR/<method>/seed<k>/``. Running the same command again resumes: finished stages are skipped.
With ``--start-from DIR`` (another comparison's OUTPUT_DIR, the same methods and seeds) each run trains its
method's last stage alone, from the finished stage before it in DIR's run of the same method and seed: an
ablation of stage-3 settings reuses IS-GAN's stages 1-2 instead of training them again (:func:`last_stage_from`).

Without ``--methods`` the methods are :data:`DEFAULT_METHODS`, less, when the runs would train on the CPU,
those with a ResNet-50 trunk (:func:`resnet50_trunk`: torchreid's pcb_p6, or ours under MODEL.BACKBONE
resnet50); one printed line names them, and ``--methods`` runs them anyway.

Output: one table (printed), ``OUTPUT_DIR/comparison.csv``, ``OUTPUT_DIR/comparison.json`` and a bar chart of
rank-1 and mAP per method, ``OUTPUT_DIR/comparison.png``. With several seeds the table gives each method's
mean ± sample standard deviation (n - 1) over the seeds, the chart's error bars that standard deviation, and
the CSV and JSON hold every seed's row followed by a ``mean`` and a ``std`` row per method and target. With the
baseline among several seeds' methods, a second table (and the JSON's ``differences``) pairs each method's runs with
the baseline's of the same seed: the mean ± std of the per-seed differences, the 95% confidence interval of the
mean mAP difference, and in how many seeds it is ahead.
With ``--by-factor`` each run's final encoder is also measured per group of queries (each camera, each nuisance
factor the data names) and paired the same way per group (:func:`by_factor_runs`): where a gain comes from.
"""
import csv
import importlib.util
import os
import statistics
from typing import List, NamedTuple, Optional

import scipy.stats
import torch
from tabulate import tabulate

from . import cli, comm, compat, storage
from .benchmarks.robustness import measure_by_factor, split_from_lists
from .config import config_changes, hashed_config, load_config, resolve_config_file
from .data.build import build_data
from .console import console_log
from .engine import distributed
from .engine.hooks import EpochTimer
from .engine.lock import output_dir_lock
from .engine.plan import RunLayout
from .errors import ISGANError

DEFAULT_METHODS = ("isgan", "isgan_tri", "baseline", "mgn", "pcb_p6")
# method -> config overrides; any other torchreid model name trains as MODEL.NAME <name> on stages [1, 3]
METHOD_OVERRIDES = {
    "isgan": ["MODEL.NAME", "isgan", "TRAIN.STAGES", "[1, 2, 3]"],
    "isgan_tri": ["MODEL.NAME", "isgan", "LOSS.ISGAN_TRIPLET", "True", "TRAIN.STAGES", "[1, 2, 3]"],
    "baseline": ["MODEL.NAME", "baseline", "TRAIN.STAGES", "[1, 3]"],
    "mgn": ["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1, 3]"],
}
# seed: the run's SEED, or "mean" / "std" in the summary rows of several seeds, which alone have seeds (their count)
COLUMNS = ("method", "seed", "seeds", "run", "target", "feature_dim", "params_test", "params_total", "rank1", "rank5",
           "mAP", "train_images_per_s", "test_images_per_s")
METRICS = ("rank1", "rank5", "mAP", "train_images_per_s", "test_images_per_s")  # averaged over seeds
SAME_ACROSS_SEEDS = ("feature_dim", "params_test", "params_total")  # the architecture's: in the mean row
STD_NOTE = "sample standard deviation (n - 1) over the seeds"
RESNET50_STAGES = [3, 4, 6, 3]  # bottleneck blocks in layer1-4 of a ResNet-50 trunk


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


def check_seeds(seeds):
    """``--seeds`` values -> ints; None (no --seeds) stays None. SEED's range is checked as the config loads."""
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ISGANError(f"--seeds names {', '.join(map(str, repeated))} more than once; list each seed once")
    return seeds


def resnet50_trunk(cfg):
    """Whether ``cfg``'s model has a ResNet-50 trunk: MODEL.BACKBONE for the project's models (isgan, baseline,
    mgn); for a torchreid model, its layout, built without weights: layer1-4 of 3, 4, 6 and 3 bottleneck blocks
    (resnet50, pcb_p6, resnet50_fc512, se_resnet50, resnext50_32x4d, ...)."""
    builder = compat.model_factory().get(cfg.MODEL.NAME)
    if builder is None:  # isgan, baseline, mgn: built by the project from MODEL.BACKBONE
        return cfg.MODEL.BACKBONE == "resnet50"
    model = builder(num_classes=1, loss="softmax", pretrained=False, use_gpu=False)
    layers = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if not all(isinstance(layer, torch.nn.Sequential) for layer in layers):
        return False
    return [len(layer) for layer in layers] == RESNET50_STAGES and all(hasattr(block, "conv3") for block in layers[0])


def cpu_default(cfgs):
    """The default methods' configs {method: cfg} -> those to run: on the CPU (DEVICE as training resolves it),
    those without a ResNet-50 trunk, with one printed line naming the others; every one on a GPU."""
    if distributed.select_device(next(iter(cfgs.values()))).type != "cpu":
        return list(cfgs)
    left_out = [m for m, cfg in cfgs.items() if resnet50_trunk(cfg)]
    kept = [m for m in cfgs if m not in left_out]
    if not kept:
        raise ISGANError(f"on the CPU the default methods leave out those with a ResNet-50 trunk, and here every one "
                         f"has one ({', '.join(left_out)}); name those to train on the CPU anyway with --methods, "
                         f"e.g. --methods {' '.join(cfgs)}, or set MODEL.BACKBONE resnet18")
    print(f"=> on the CPU the default methods leave out {', '.join(left_out)} (ResNet-50 trunk); to train "
          f"{'it' if len(left_out) == 1 else 'them'} anyway, name every method: --methods {' '.join(cfgs)}")
    return kept


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
            console_log(RunLayout(cfg.OUTPUT_DIR).train_log, f"tools/compare.py: run {cfg.MODEL.NAME}"):
        print(f"=> {cfg.MODEL.NAME}: stages {list(cfg.TRAIN.STAGES)} in {cfg.OUTPUT_DIR}")
        device, data = cli.setup(cfg)
        timer = EpochTimer(os.path.join(cfg.OUTPUT_DIR, "train_speed.json"))
        engine = cli.build_engine(cfg, data, device, extra_hooks=[timer])
        results = engine.run_stages()
        print(cli.results_table(results, cfg.TEST.RANKS))
    size = model_size(engine.model, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, device)
    return {"results": results, "speed": timer.speed, "size": size}


def _rows(method, seed, folder, summary, stages):
    """One row per target for ``method``'s run of ``seed`` in OUTPUT_DIR/``folder``, read from the run's results of
    its last stage."""
    feature_dim, params_test, params_total = summary["size"]
    return [{
        "method": method, "seed": seed, "seeds": None, "run": f"{folder}/stage{stages[-1]}", "target": target,
        "feature_dim": feature_dim, "params_test": params_test, "params_total": params_total, "rank1": m["rank1"],
        "rank5": m["rank5"], "mAP": m["mAP"], "train_images_per_s": images_per_s(summary["speed"], stages),
        "test_images_per_s": m["test_images_per_s"],
    } for target, m in summary["results"][stages[-1]].items()]


def _mean_std(values):
    if any(v is None for v in values):  # a throughput that was not timed in some run
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows):
    """Per-seed rows -> per method and target (in the rows' order), a ``mean`` row and a ``std`` row (seed "mean" /
    "std"; seeds: how many) of :data:`METRICS`: the mean and the sample standard deviation (n - 1) over the seeds.
    The mean row also carries the architecture's columns (feature dim, parameters)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    summary = []
    for (method, target), group in groups.items():
        mean = {k: None for k in COLUMNS} | {"method": method, "seed": "mean", "seeds": len(group), "target": target}
        std = dict(mean, seed="std")
        mean.update({k: group[0][k] for k in SAME_ACROSS_SEEDS})
        for key in METRICS:
            mean[key], std[key] = _mean_std([r[key] for r in group])
        summary += [mean, std]
    return summary


def t_interval(deltas, level=0.95):
    """The ``level`` confidence interval of the mean of paired differences (Student's t, n - 1 degrees of freedom:
    a paired t-test rejects no difference at 1 - level where it leaves out 0); None for fewer than two."""
    if len(deltas) < 2:
        return None
    mean, half = statistics.fmean(deltas), 0.0
    if statistics.stdev(deltas) > 0:
        half = float(scipy.stats.t.ppf((1 + level) / 2, len(deltas) - 1)) * statistics.stdev(deltas) / len(
            deltas) ** 0.5
    return [mean - half, mean + half]


def _paired_stats(entry, key, deltas):
    """Into ``entry``: ``key`` and ``key_std``, the mean and sample standard deviation (n - 1; None for one) of the
    per-seed ``deltas``; for mAP also their 95% interval (:func:`t_interval`) and the seeds ahead."""
    entry[key] = statistics.fmean(deltas)
    entry[f"{key}_std"] = statistics.stdev(deltas) if len(deltas) > 1 else None
    if key == "mAP":
        entry["mAP_ci95"], entry["mAP_ahead"] = t_interval(deltas), sum(d > 0 for d in deltas)


def paired_differences(rows, reference="baseline"):
    """Per-seed rows -> for each other method and target that ran on the same seeds as ``reference``, the differences
    method - reference of R-1, R-5 and mAP seed by seed (the two runs of a seed share the stage-1 batches, so the
    pairing takes out what the seed does to both): their mean, sample standard deviation (n - 1), the 95%
    confidence interval of the mAP difference (:func:`t_interval`) and the number of seeds in which the method is
    ahead on mAP. Empty without ``reference`` or with fewer than two seeds."""
    runs = [r for r in rows if r["seed"] not in ("mean", "std")]
    by_key = {(r["method"], r["target"], r["seed"]): r for r in runs}
    differences = []
    for method in dict.fromkeys(r["method"] for r in runs if r["method"] != reference):
        for target in dict.fromkeys(r["target"] for r in runs if r["method"] == method):
            seeds = [s for (m, t, s) in by_key if m == method and t == target and (reference, t, s) in by_key]
            if len(seeds) < 2:
                continue
            entry = {"method": method, "reference": reference, "target": target, "seeds": len(seeds)}
            for key in ("rank1", "rank5", "mAP"):
                _paired_stats(entry, key, [by_key[method, target, s][key] - by_key[reference, target, s][key]
                                           for s in seeds])
            differences.append(entry)
    return differences


def by_factor_runs(cfg, rows, output_dir):
    """``--by-factor``: each run's final identity encoder (``encoder.safetensors`` of its last stage) re-identifies
    each target's test split per group of queries (:func:`~isgan_torchreid.benchmarks.robustness.measure_by_factor`:
    all, each camera, each nuisance factor the data names; the Market protocol under TEST.METRIC, without
    re-ranking), and each other method is paired with the baseline seed by seed per group
    (:func:`paired_group_differences`). ``cfg``: any run's config (the data and targets). Returns
    {"skipped": methods without an encoder file (torchreid's own models), "targets": {target: {"groups": {group:
    queries}, "runs": {method: {seed: {group: {"rank1", "mAP"}}}}, "differences": [...]}}}."""
    runs = [r for r in rows if r["seed"] not in ("mean", "std")]
    files = {(r["method"], r["seed"]): os.path.join(output_dir, r["run"], "encoder.safetensors") for r in runs}
    skipped = list(dict.fromkeys(m for (m, _), path in files.items() if not os.path.isfile(path)))
    files = {key: path for key, path in files.items() if key[0] not in skipped}
    if not files:
        return {"skipped": skipped, "targets": {}}
    data = cfg.clone()
    data.defrost()
    data.DATA.WORKERS = 0
    data.freeze()
    manager = build_data(data).manager
    targets = {}
    for target in dict.fromkeys(r["target"] for r in runs):
        split = split_from_lists(*manager.fetch_test_loaders(target))
        by_method = {}
        for seed in dict.fromkeys(s for _, s in files):
            paths = {m: path for (m, s), path in files.items() if s == seed}
            result = measure_by_factor(list(paths.values()), split, device=cfg.DEVICE, metric=cfg.TEST.METRIC)
            for method, path in paths.items():
                by_method.setdefault(method, {})[str(seed)] = result["results"][path]
        targets[target] = {"groups": result["groups"], "runs": by_method,  # the labels alone give the counts
                           "differences": paired_group_differences(by_method)}
    return {"skipped": skipped, "targets": targets}


def paired_group_differences(runs, reference="baseline"):
    """{method: {seed: {group: {"rank1", "mAP"}}}} -> for each other method and group measured on the same seeds as
    ``reference`` (one at least): the differences method - reference of R-1 and mAP seed by seed, their mean, sample
    standard deviation (n - 1; None for one seed) and the number of seeds in which the method is ahead on mAP."""
    if reference not in runs:
        return []
    differences = []
    for method, seeds_of in runs.items():
        if method == reference:
            continue
        for group in dict.fromkeys(g for groups in seeds_of.values() for g in groups):
            seeds = [s for s, groups in seeds_of.items() if group in groups and group in runs[reference].get(s, {})]
            if not seeds:
                continue
            entry = {"method": method, "reference": reference, "group": group, "seeds": len(seeds)}
            for key in ("rank1", "mAP"):
                deltas = [seeds_of[s][group][key] - runs[reference][s][group][key] for s in seeds]
                entry[f"{key}_per_seed"] = deltas
                _paired_stats(entry, key, deltas)
            differences.append(entry)
    return differences


def by_factor_table(target_result):
    """One target of :func:`by_factor_runs` -> a github-style table: per group of queries, each method's R-1 / mAP
    (%, the mean over the seeds), then each other method's paired mAP difference to the baseline (mean ± std, in how
    many seeds it is ahead)."""
    runs, differences = target_result["runs"], target_result["differences"]
    pairs = list(dict.fromkeys((d["method"], d["reference"]) for d in differences))
    headers = ["queries", "n"] + [f"R-1 / mAP: {m}" for m in runs] + [f"mAP: {m} - {r}" for m, r in pairs]
    body = []
    for group, count in target_result["groups"].items():
        row = [group, count]
        for seeds_of in runs.values():
            cells = [groups[group] for groups in seeds_of.values() if group in groups]
            row.append(f"{100 * statistics.fmean(c['rank1'] for c in cells):.1f} / "
                       f"{100 * statistics.fmean(c['mAP'] for c in cells):.1f}" if cells else "-")
        for method, reference in pairs:
            d = next((d for d in differences if (d["method"], d["reference"], d["group"]) == (method, reference,
                                                                                          group)), None)
            spread = "" if d is None or d["mAP_std"] is None else f" ± {100 * d['mAP_std']:.1f}"
            row.append("-" if d is None else f"{100 * d['mAP']:+.1f}{spread} ({d['mAP_ahead']} of {d['seeds']})")
        body.append(row)
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def print_by_factor(result):
    """Print :func:`by_factor_runs`'s tables, one per target."""
    if result["skipped"]:
        print(f"=> by query group: {', '.join(result['skipped'])} left out (no identity encoder file; torchreid's "
              f"own models are measured as a whole)")
    for target, measured in result["targets"].items():
        print(f"By query group on {target}'s test split (n: the group's queries with a gallery match from another "
              f"camera; R-1 / mAP: the mean over the seeds; the differences paired by seed, mean ± sample std "
              f"(n - 1), in how many seeds ahead):")
        print(by_factor_table(measured))


def differences_table(differences):
    """:func:`paired_differences` -> a github-style table, in percentage points."""
    def spread(d, key):
        return f"{100 * d[key]:+.1f} ± {100 * d[key + '_std']:.1f}"

    body = [[f"{d['method']} - {d['reference']}", d["target"], d["seeds"], spread(d, "rank1"), spread(d, "rank5"),
             spread(d, "mAP"), "[{:+.1f}, {:+.1f}]".format(*(100 * v for v in d["mAP_ci95"])),
             f"{d['mAP_ahead']} of {d['seeds']}"] for d in differences]
    headers = ["difference", "target", "seeds", "R-1", "R-5", "mAP", "mAP: 95% CI", "seeds ahead on mAP"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def check_plotting():
    """The chart needs matplotlib: refuse before anything is trained when it is missing (an install older than the
    requirement)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ISGANError("tools/compare.py draws OUTPUT_DIR/comparison.png with matplotlib, which is not installed; "
                         "pip install 'matplotlib>=3.5' (an isgan-torchreid requirement)")


def last_stage_from(cfg, source_root, folder):
    """``--start-from``: the overrides that make a run (``cfg``) train its method's last stage alone, from the stage
    before it as the run of the same method and seed in ``source_root`` finished it (its ``folder`` there), as
    TRAIN.INIT_WEIGHTS. Prints the trained keys in which the two runs' configs differ. ISGANError when that stage
    is missing there or trained another number of epochs than ``cfg`` says."""
    *_, before, last = cfg.TRAIN.STAGES  # every method has two stages at least
    source = os.path.join(source_root, folder, f"stage{before}", "latest.pth.tar")
    if not os.path.isfile(source):
        raise ISGANError(f"--start-from {source_root}: {source} does not exist; give the OUTPUT_DIR of a comparison "
                         f"of the same methods and seeds whose stage {before} has finished")
    state = storage.load_checkpoint(source)
    key, epochs = f"TRAIN.STAGE{before}.EPOCHS", cfg.TRAIN[f"STAGE{before}"].EPOCHS
    if state.get("epoch") != epochs:
        raise ISGANError(f"--start-from {source_root}: {source} is at epoch {state.get('epoch')} of stage {before}, "
                         f"{key} is {epochs} here; set {key} {state.get('epoch')} if that stage has finished there, "
                         f"or finish it there first")
    recorded = state.get("config")
    changes = config_changes(recorded, hashed_config(cfg)) if isinstance(recorded, dict) else ["(not recorded)"]
    print(f"=> {folder}: stage {last} starts from {source}; the trained keys that differ from that run's: "
          f"{'; '.join(changes) or 'none'}")
    return ["TRAIN.STAGES", f"[{last}]", "TRAIN.INIT_WEIGHTS", source]


class Comparison(NamedTuple):
    """What :func:`compare` wrote into comparison.json: the rows, the paired differences (:func:`paired_differences`)
    and, with ``by_factor``, :func:`by_factor_runs`'s result (else None)."""

    rows: List[dict]
    differences: List[dict]
    by_factor: Optional[dict]


def compare(config_file, opts=(), methods=None, seeds=None, start_from=None, by_factor=False) -> Comparison:
    """Train and evaluate every method once per seed; write OUTPUT_DIR/comparison.{csv,json,png}; return them.

    ``methods`` None: :data:`DEFAULT_METHODS`, less those with a ResNet-50 trunk on the CPU (:func:`cpu_default`).
    ``seeds`` None: the config's SEED. One seed: every run in OUTPUT_DIR/<method>/; several: in
    OUTPUT_DIR/<method>/seed<k>/, and each method's rows (one per seed and target) are followed by its mean and
    std rows (:func:`summarize`). Runs go seed by seed, so that an interrupted comparison has whole seeds.
    ``start_from``: another comparison's OUTPUT_DIR whose runs' earlier stages each run starts its last stage from
    (:func:`last_stage_from`). ``by_factor``: measure each run per group of queries too (:func:`by_factor_runs`),
    in comparison.json.
    """
    config_file = resolve_config_file(config_file)  # a packaged name -> its file, whose path comparison.json records
    runs = runs_for(list(DEFAULT_METHODS if methods is None else methods))
    seeds = check_seeds(seeds)
    check_plotting()
    base = load_config(config_file, list(opts) + next(iter(runs.values())))  # OUTPUT_DIR, TEST.RANKS, SEED
    if methods is None:
        runs = {m: runs[m] for m in cpu_default({m: load_config(config_file, list(opts) + overrides)
                                                  for m, overrides in runs.items()})}
    seeds = seeds or [base.SEED]
    folders = {(run, seed): os.path.join(run, f"seed{seed}") if len(seeds) > 1 else run
               for run in runs for seed in seeds}
    ranks = str(sorted(set(base.TEST.RANKS) | {1, 5}))  # the table reports rank-1 and rank-5
    run_opts = {(run, seed): list(opts) + overrides + [
        "SEED", str(seed), "TEST.RANKS", ranks, "OUTPUT_DIR", os.path.join(base.OUTPUT_DIR, folders[run, seed])]
        for seed in seeds for run, overrides in runs.items()}
    cfgs = {key: load_config(config_file, o) for key, o in run_opts.items()}
    if start_from is not None:
        if os.path.realpath(start_from) == os.path.realpath(base.OUTPUT_DIR):
            raise ISGANError(f"--start-from {start_from} is OUTPUT_DIR itself, whose runs resume there anyway; drop "
                             f"--start-from, or give this comparison another OUTPUT_DIR")
        cfgs = {key: load_config(config_file, run_opts[key] + last_stage_from(cfg, start_from, folders[key]))
                for key, cfg in cfgs.items()}
    for cfg in cfgs.values():  # every setting is checked before anything is written or trained
        check_part_pooling(cfg)
    cli.prepare_output_dir(base.OUTPUT_DIR)
    summaries = {key: train_run(cfg) for key, cfg in cfgs.items()}
    per_seed = {m: [row for seed in seeds for row in _rows(m, seed, folders[m, seed], summaries[m, seed],
                                                           list(cfgs[m, seed].TRAIN.STAGES))] for m in runs}
    rows = [row for m in runs for row in per_seed[m] + (summarize(per_seed[m]) if len(seeds) > 1 else [])]
    result = Comparison(rows, paired_differences(rows), by_factor_runs(base, rows, base.OUTPUT_DIR) if by_factor
                        else None)
    write_comparison(result, base.OUTPUT_DIR, config_file, runs, seeds, start_from)
    return result


def _rate(v):
    return "n/a" if v is None else f"{v:.1f}"


def _params(v):
    return f"{v / 1e6:.2f}"


def comparison_table(rows):
    """The rows of single runs -> a github-style table (ranks and mAP in percent, parameters in millions), with a
    seed column when they come from several seeds."""
    runs = [r for r in rows if r["seed"] not in ("mean", "std")]
    several = len({r["seed"] for r in runs}) > 1
    body = [[r["method"]] + ([r["seed"]] if several else []) + [
        r["run"], r["target"], r["feature_dim"], _params(r["params_test"]), _params(r["params_total"]),
        f"{100 * r['rank1']:.1f}", f"{100 * r['rank5']:.1f}", f"{100 * r['mAP']:.1f}", _rate(r["train_images_per_s"]),
        _rate(r["test_images_per_s"])] for r in runs]
    headers = ["method"] + (["seed"] if several else []) + [
        "checkpoint", "target", "feat. dim", "params at test (M)", "params total (M)", "R-1", "R-5", "mAP",
        "train img/s", "test img/s"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def summary_table(rows):
    """The mean and std rows -> a github-style table of mean ± std (ranks and mAP in percent) per method and target,
    with the number of seeds and the mean throughputs; empty without them (one seed)."""
    means = [r for r in rows if r["seed"] == "mean"]
    stds = [r for r in rows if r["seed"] == "std"]
    if not means:
        return ""

    def spread(mean, std, key):
        return f"{100 * mean[key]:.1f} ± {100 * std[key]:.1f}"

    body = [[m["method"], m["target"], m["seeds"], m["feature_dim"], _params(m["params_test"]),
             _params(m["params_total"])] + [spread(m, s, key) for key in ("rank1", "rank5", "mAP")]
            + [_rate(m["train_images_per_s"]), _rate(m["test_images_per_s"])] for m, s in zip(means, stds)]
    headers = ["method", "target", "seeds", "feat. dim", "params at test (M)", "params total (M)", "R-1", "R-5", "mAP",
               "train img/s", "test img/s"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def plot_comparison(rows, path, title=""):
    """A bar chart of rank-1 and mAP (percent) per method (per method and target when there are several targets),
    written to ``path`` atomically; returns the matplotlib Figure. With several seeds the bars are the means and the
    error bars the sample standard deviations (n - 1).

    matplotlib is imported here, not with the package, and drawn on its Agg canvas without pyplot: no display and
    no global backend are touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    means = [r for r in rows if r["seed"] == "mean"]
    stds = [r for r in rows if r["seed"] == "std"]
    bars = means or [r for r in rows if r["seed"] != "std"]
    several_targets = len({r["target"] for r in bars}) > 1
    labels = [f"{r['method']}\n{r['target']}" if several_targets else r["method"] for r in bars]
    fig = Figure(figsize=(max(6.0, 1.2 * len(bars) + 2.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.38
    for offset, key, name in ((-width / 2, "rank1", "rank-1"), (width / 2, "mAP", "mAP")):
        errors = [100 * s[key] for s in stds] if stds else None
        ax.bar([i + offset for i in range(len(bars))], [100 * r[key] for r in bars], width, yerr=errors,
               capsize=4 if errors else 0, label=name)
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels(labels)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("rank-1, mAP (%)" + (": mean ± sample std over the seeds" if stds else ""))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, off the bars
    with storage.output_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")  # the temp name has no .png to go by
    return fig


def write_comparison(result: Comparison, output_dir, config_file, runs, seeds, start_from=None):
    """OUTPUT_DIR/comparison.csv (the rows), comparison.json (the rows, the seeds, each method's overrides, the
    comparison the runs started from if any, the differences to the baseline paired by seed and the by-factor
    result if any) and comparison.png (:func:`plot_comparison`), each written atomically."""
    rows = result.rows
    path = os.path.join(output_dir, "comparison.csv")
    with storage.output_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    storage.write_json(os.path.join(output_dir, "comparison.json"),
                    {"config_file": os.path.abspath(config_file), "seeds": seeds,
                     **({"std": STD_NOTE} if len(seeds) > 1 else {}), "overrides": runs,
                     **({"start_from": os.path.abspath(start_from)} if start_from else {}), "rows": rows,
                     "differences": result.differences,
                     **({"by_factor": result.by_factor} if result.by_factor is not None else {})})
    name = os.path.splitext(os.path.basename(config_file))[0]
    plot_comparison(rows, os.path.join(output_dir, "comparison.png"),
                    f"{name}: mean ± sample std (n - 1) over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1
                    else f"{name}, seed {seeds[0]}")
    print(f"=> wrote {os.path.join(output_dir, 'comparison.csv')}, comparison.json and comparison.png")


@cli.reports_errors
def compare_main(argv):
    """tools/compare.py: train and evaluate each method under one config, once per seed; print the table, write it
    as CSV and JSON, and draw it."""
    comm.single_process_only("tools/compare.py", "to train one method on several GPUs, run tools/train.py "
                                    "under torchrun with the method's overrides")
    p = cli.parser("Compare IS-GAN, its E_R baseline, MGN and torchreid models under one setting: one table "
                   "(printed, OUTPUT_DIR/comparison.csv and .json) and a bar chart of rank-1 and mAP "
                   "(OUTPUT_DIR/comparison.png).")
    p.add_argument("--methods", metavar="NAME", help="isgan, isgan_tri (IS-GAN + MGN's triplet term), baseline "
                   "(IS-GAN's E_R trained with L_R only), mgn or "
                   f"torchreid model names, e.g. --methods isgan mgn (default: {' '.join(DEFAULT_METHODS)}; when "
                   f"training on the CPU, less those with a ResNet-50 trunk, e.g. pcb_p6: name them to train them)")
    p.add_argument("--seeds", metavar="N", help="train every method once per seed (each overrides SEED), e.g. "
                   "--seeds 0 1 2: the runs go to OUTPUT_DIR/<method>/seed<N>/ and the table and chart give the mean "
                   "± sample standard deviation (n - 1) of R-1, R-5 and mAP over the seeds (default: the config's "
                   "SEED, runs in OUTPUT_DIR/<method>/)")
    p.add_argument("--start-from", metavar="DIR", help="another comparison's OUTPUT_DIR (the same methods and "
                   "seeds): each run trains its method's last stage alone, from the finished stage before it in "
                   "DIR's run of the same method and seed (IS-GAN's stage 2, the others' stage 1), e.g. to compare "
                   "stage-3 settings without training stages 1-2 again; each run prints the trained keys that "
                   "differ from DIR's, and train img/s covers the last stage alone")
    p.add_argument("--by-factor", action="store_true", help="after the runs, re-identify each target's test split "
                   "with each run's final encoder per group of queries (all, each camera, each nuisance factor the "
                   "data names, as tools/benchmark.py --by-factor) and pair each method with the baseline seed by "
                   "seed per group: printed and in comparison.json (by_factor); on a finished comparison it trains "
                   "nothing")
    by_factor = "--by-factor" in argv
    argv = [a for a in argv if a != "--by-factor"]
    argv, methods = cli.pop_list_flag(argv, "--methods", cli.is_name, "isgan baseline mgn pcb_p6")
    argv, seeds = cli.pop_list_flag(argv, "--seeds", str.isdigit, "0 1 2")
    argv, start = cli.pop_list_flag(argv, "--start-from", cli.is_value, "output/compare_demo")
    if start is not None and len(start) > 1:
        raise ISGANError(f"--start-from takes one folder, got {len(start)} ({' '.join(start)})")
    args = cli.parse_args(p, argv)
    result = compare(args.config_file, args.opts, methods, seeds, start and start[0], by_factor)
    rows = result.rows
    print(comparison_table(rows))
    summary = summary_table(rows)
    if summary:
        seeds = len({r["seed"] for r in rows} - {"mean", "std"})
        print(f"Mean ± {STD_NOTE} ({seeds} seeds); every seed's row is in comparison.csv and comparison.json:")
        print(summary)
    if result.differences:
        print("Paired by seed (each seed's runs share the stage-1 batches): the mean ± sample standard deviation "
              "(n - 1) of the per-seed differences, in points, and the 95% confidence interval of the mean mAP "
              "difference (Student's t; a paired t-test finds a difference at 5% where it leaves out 0):")
        print(differences_table(result.differences))
    print("Every method: stage-1 epochs, then stage-3 epochs at the stage-3 learning rate (IS-GAN's E_R schedule; "
          "isgan adds its stage 2). isgan_tri = IS-GAN with MGN's triplet term in L_R (LOSS.ISGAN_TRIPLET). "
          "baseline = IS-GAN's E_R trained with L_R only. params at test: those the test descriptor depends on; "
          "train img/s: over all stages of the run, data loading included.")
    if start:
        print(f"Started from {start[0]}: each run trained its last stage alone, and its train img/s is that "
              f"stage's.")
    if result.by_factor is not None:
        print_by_factor(result.by_factor)
    return rows
