"""Benchmarks printed as tables (speed and memory targets live here, never in unit tests).

* :mod:`.training`: per-stage training speed and peak memory (IS-GAN, MGN, torchreid models); the same-run
  comparison with the authors' code (:mod:`.authors`); profiles of our stages (:mod:`.profiling`);
* :mod:`.evaluator`: our evaluator against torchreid's; evaluation at gallery scale;
* :mod:`.inference`: the identity encoder in PyTorch eager, TorchScript and onnxruntime; its file sizes;
* :mod:`.dc`: does the class discriminator D_C generalise to held-out images;
* :mod:`.scaling`: IS-GAN's training throughput in 1 and N data-parallel processes;
* :mod:`.disentangle`: does a trained IS-GAN disentangle: reconstruction against trivial predictors, swaps,
  identity retention and nuisance transfer on a run's test split;
* :mod:`.robustness`: rank-1 and mAP per group of queries (camera, nuisance factor) for one or more encoders;
* :mod:`.events`: a stage's TensorBoard scalars (the training diagnostics) of one or more runs, summarised;
* :mod:`.common`: timing, memory and process helpers they share.

``tools/benchmark.py`` is :func:`benchmark_main`.
"""
import os

import torch

from ..errors import ISGANError

__all__ = ["benchmark_main"]


def _parser():
    from ..cli import parser
    from ..defaults import _C, CHOICES
    from .disentangle import IDENTITIES

    p = parser("Print speed/memory tables: IS-GAN stages 1-3 and inference, MGN, torchreid's pcb_p6, and the fast "
               "evaluator against torchreid's (default); or the authors' code timed in the same run, profiles, "
               "the encoder's inference, evaluation at gallery scale, D_C's generalisation.")
    config = next(a for a in p._actions if a.dest == "config_file")
    config.required = False
    config.help += "; every table but --disentangle, --by-factor and --scalars needs it"
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, help="timed iterations (default 2; with --reference 5 per stage and "
                   "implementation; with --inference 3)")
    p.add_argument("--methods", metavar="NAME", help="methods to time, e.g. --methods isgan mgn or --methods "
                   "isgan,mgn (default: isgan mgn pcb_p6)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-evaluator", action="store_true")
    p.add_argument("--reference", metavar="DIR", help="a checkout of the authors' code (git clone "
                   "https://github.com/cvlab-yonsei/ISGAN): time it against ours in the same run, interleaved, per "
                   "stage")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of one iteration of each of our "
                   "stages: module groups (forward/backward) and top operators")
    p.add_argument("--nproc", type=int, default=0, help="also time IS-GAN's stages in 1 and N data-parallel "
                   "processes (N GPUs on CUDA) and print the scaling efficiency")
    only = p.add_argument_group("other tables (each replaces the default tables)")
    only.add_argument("--inference", action="store_true", help="the identity encoder's inference table (eager / "
                      "TorchScript / onnxruntime, CPU) and its file sizes")
    only.add_argument("--inference-batches", default="1,64")
    only.add_argument("--threads", type=int, help="CPU threads for --inference (default: torch's)")
    only.add_argument("--gallery", nargs="*", type=int, metavar="N", help="evaluation of random features at gallery "
                      "scale: [QUERIES GALLERY] (default: MSMT17's 11659 82161)")
    only.add_argument("--max-mib", type=int, help="evaluation memory budget for --gallery (default: evaluate's)")
    only.add_argument("--dc", action="store_true", help="train D_C alone on real synthetic identities and print "
                      "train and held-out accuracy per class head and seed")
    only.add_argument("--dc-seeds", default="0,1", help="comma-separated seeds (split, init and batches)")
    only.add_argument("--dc-steps", type=int, default=300)
    only.add_argument("--dc-batch", type=int, default=32)
    only.add_argument("--dc-lr", type=float, default=0.01, help="SGD learning rate of D")
    only.add_argument("--dc-train-per-id", type=int, default=8, help="training images per identity")
    only.add_argument("--dc-heads", default="IN-LReLU-avg,LReLU-avg,IN-LReLU-max,LReLU-max")
    only.add_argument("--disentangle", metavar="RUN", help="an IS-GAN run's OUTPUT_DIR (its stage-3, else stage-2 "
                      "latest checkpoint) or a stage-2/3 checkpoint: reconstruction against the mean (camera) "
                      "image, swaps, identity retention and nuisance transfer on its test split; table + JSON "
                      "(--config-file not needed)")
    only.add_argument("--ids", type=int, default=50, help="--disentangle: identities measured")
    only.add_argument("--pairs", type=int, default=200, help="--disentangle: swap pairs (a, b)")
    only.add_argument("--train-images", type=int, default=2000, help="--disentangle: training images averaged "
                      "into the mean images, on which the probe's camera and factor heads also train")
    only.add_argument("--probe-steps", type=int, default=1000, help="--disentangle: training steps of the probe")
    only.add_argument("--seed", type=int, default=0, help="--disentangle: choice of identities and pairs, probe")
    only.add_argument("--identities", choices=IDENTITIES, default="test", help="--disentangle: measure the test "
                      "split's identities (default) or the training identities, one held-out query image per "
                      "camera each: does G disentangle the identities it learned, and not unseen ones?")
    only.add_argument("--cues", action="store_true", help="--disentangle: also two probes that read one kind of "
                      "cue each (grey level: shapes and brightness; band colours: the colours by height): which of "
                      "a's cues the swap keeps")
    only.add_argument("--out", metavar="FILE.json", help="--disentangle, --by-factor, --scalars: where the JSON "
                      "goes (--disentangle's default RUN/disentangle.json; the others write none by default)")
    only.add_argument("--by-factor", nargs="+", metavar="WEIGHTS", help="identity encoders (checkpoints or "
                      "encoder files): rank-1 and mAP per group of the queries of --data-dir (all, each camera, "
                      "each value of each nuisance factor its factors.json names), side by side")
    only.add_argument("--data-dir", metavar="DIR", help="--by-factor: a test split in Market-1501 layout (query/, "
                      "bounding_box_test/), e.g. reid-data/synthperson")
    only.add_argument("--metric", choices=CHOICES["TEST.METRIC"], default=_C.TEST.METRIC,
                      help="--by-factor: the distance the gallery is ranked by (TEST.METRIC of the encoders' runs; "
                      "default %(default)s)")
    only.add_argument("--scalars", nargs="+", metavar="RUN", help="runs' OUTPUT_DIRs: each TensorBoard scalar of one "
                      "stage (the diagnostics: each loss term's gradient norm, D's probabilities, E_U's KL, ...), "
                      "the mean of its last points and its range, side by side")
    only.add_argument("--stage", type=int, help="--scalars: the stage (default: the last one every run has)")
    only.add_argument("--tags", nargs="+", metavar="PREFIX", help="--scalars: only the tags starting so, e.g. "
                      "--tags grad_E_R/ gan/code_grad_ratio (default: every tag)")
    only.add_argument("--last", type=int, default=10, help="--scalars: the logged points averaged")
    return p


def _training_tables(cfg, args, device):
    from . import authors
    from .common import in_fresh_process
    from .evaluator import bench_evaluator, evaluator_table
    from .training import (bench_training, compare_with_authors, comparison_table, cpu_table, profile_stages,
                           training_table)

    if args.reference:
        authors.check_checkout(args.reference)
        authors.check_setting(cfg.MODEL.BACKBONE, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, args.batch, cfg.SAMPLER.K)
    torch.manual_seed(cfg.SEED)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{cfg.MODEL.BACKBONE} {cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, batch {args.batch}, "
          f"TRAIN.AMP {cfg.TRAIN.AMP}, TRAIN.CHANNELS_LAST {cfg.TRAIN.CHANNELS_LAST}")
    if not args.skip_training:
        rows = bench_training(cfg, methods=args.methods or ("isgan", "mgn", "pcb_p6"), batch=args.batch,
                              iters=args.iters or 2, device=device)
        print(training_table(rows, device))
    if args.reference:
        iters = args.iters or 5
        samples = compare_with_authors(cfg, os.path.abspath(args.reference), args.batch, iters, 1, str(device))
        print(f"\nSame run, ours and the authors' code ({args.reference}) alternating per stage, each in a process "
              f"of its own (ours with TRAIN.FLUSH_DENORMAL {cfg.TRAIN.FLUSH_DENORMAL} and TRAIN.KEEP_FREED_MEMORY "
              f"{cfg.TRAIN.KEEP_FREED_MEMORY}, theirs at the defaults): one warm-up each, then {iters} timed "
              f"iterations each; batch {args.batch} = {args.batch // cfg.SAMPLER.K} x {cfg.SAMPLER.K}, random inputs.")
        print(comparison_table(samples))
        print(f"\nPer step, medians (CPU time of all {torch.get_num_threads()} threads of each process):")
        print(cpu_table(samples))
    if args.profile:
        print()
        print(in_fresh_process(profile_stages, cfg, args.batch, str(device)))
    if args.nproc:
        from .scaling import bench_scaling, scaling_table

        rows = bench_scaling(cfg, args.nproc, batch=args.batch, iters=args.iters or 2, device=device)
        print(f"\ndata-parallel scaling: {args.batch} images per process and step")
        print(scaling_table(rows, args.nproc))
    if not args.skip_evaluator:
        print(evaluator_table(bench_evaluator()))


def _inference_tables(cfg, args):
    from .inference import bench_inference, inference_tables

    batches = [int(b) for b in args.inference_batches.split(",")]
    iters = args.iters or 3
    try:
        rows, sizes, params = bench_inference(cfg, batches, iters, threads=args.threads)
    except ImportError as e:  # onnx (the [export] extra) or onnxruntime (either runtime extra: same module)
        raise ISGANError(f"{e}; the inference table needs the export extra and an ONNX runtime: pip install "
                         "'isgan-torchreid[export,onnxruntime]' (CPU) or 'isgan-torchreid[export,onnxruntime-gpu]' "
                         "(CUDA)") from None
    print(f"identity encoder: {cfg.MODEL.BACKBONE} {cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, parts {list(cfg.MODEL.PARTS)}, "
          f"{args.threads or torch.get_num_threads()} CPU threads, torch {torch.__version__}, median of {iters}")
    print(inference_tables(rows, sizes, params))


def _gallery_table(args):
    from .evaluator import MSMT17_SIZE, bench_gallery, gallery_table

    if len(args.gallery) not in (0, 2):
        raise ISGANError(f"--gallery takes 0 or 2 numbers (QUERIES GALLERY), got {args.gallery}")
    num_query, num_gallery = args.gallery or MSMT17_SIZE[:2]
    max_bytes = args.max_mib * 2 ** 20 if args.max_mib else None
    print(gallery_table(num_query, num_gallery, bench_gallery(num_query, num_gallery, max_bytes=max_bytes)))


def _dc_table(cfg, args, device):
    from .dc import CLASS_HEADS, bench_class_heads, dc_table

    heads = args.dc_heads.split(",")
    unknown = [h for h in heads if h not in CLASS_HEADS]
    if unknown:
        raise ISGANError(f"--dc-heads {args.dc_heads}: unknown {', '.join(unknown)}; use some of "
                         f"{','.join(CLASS_HEADS)}")
    if not 1 <= args.dc_train_per_id < cfg.DATA.SYNTH.IMAGES_PER_ID:
        raise ISGANError(f"--dc-train-per-id {args.dc_train_per_id} leaves no held-out image; use 1 to "
                         f"{cfg.DATA.SYNTH.IMAGES_PER_ID - 1} (DATA.SYNTH.IMAGES_PER_ID - 1)")
    try:
        seeds = [int(s) for s in args.dc_seeds.split(",")]
    except ValueError:
        raise ISGANError(f"--dc-seeds {args.dc_seeds} is not a list of integers; use e.g. 0,1") from None
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{cfg.DATA.HEIGHT}x{cfg.DATA.WIDTH}, {args.dc_steps} SGD steps of {args.dc_batch}, lr {args.dc_lr}, "
          f"{args.dc_train_per_id} train images per id")
    print(dc_table(bench_class_heads(cfg, heads, seeds, args.dc_steps, args.dc_batch, args.dc_lr,
                                     args.dc_train_per_id, device)))


def _check_json_out(out):
    if out and not out.endswith(".json"):
        raise ISGANError(f"--out {out}: the numbers are written as JSON; name it FILE.json")


def _disentangle_table(args):
    from .disentangle import Settings, run_disentangle

    for flag in ("ids", "pairs", "train_images", "probe_steps"):
        if getattr(args, flag) < (2 if flag == "ids" else 1):
            raise ISGANError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: use a positive number"
                             + (" of at least 2" if flag == "ids" else ""))
    _check_json_out(args.out)
    settings = Settings(ids=args.ids, pairs=args.pairs, train_images=args.train_images,
                        probe_steps=args.probe_steps, seed=args.seed, identities=args.identities,
                        cues=args.cues)
    return run_disentangle(args.disentangle, args.opts, settings, args.out)


def _by_factor_table(args):
    from .robustness import run_by_factor

    if not args.data_dir:
        raise ISGANError("--by-factor needs --data-dir DIR, a test split in Market-1501 layout (query/, "
                         "bounding_box_test/)")
    _check_json_out(args.out)
    return run_by_factor(args.by_factor, args.data_dir, args.out, args.metric)


def benchmark_main(argv=None):
    """tools/benchmark.py: the tables the flags ask for (see ``--help``)."""
    from ..cli import is_name, parse_args, pop_list_flag, reports_errors
    from ..engine import distributed
    from ..config import load_config
    from .. import comm

    @reports_errors
    def main(argv):
        comm.single_process_only("tools/benchmark.py", "--nproc N starts its own processes")
        argv, methods = pop_list_flag(list(argv), "--methods", is_name, "isgan mgn pcb_p6")
        args = parse_args(_parser(), argv)
        args.methods = methods
        if args.iters is not None and args.iters < 1:
            raise ISGANError(f"--iters must be at least 1, not {args.iters}")
        if args.nproc < 0:
            raise ISGANError(f"--nproc must be 0 (off) or more, not {args.nproc}")
        if args.disentangle:
            return _disentangle_table(args)
        if args.by_factor:
            return _by_factor_table(args)
        if args.scalars:
            from .events import run_scalars

            _check_json_out(args.out)
            return run_scalars(args.scalars, args.stage, args.tags or (), args.last, args.out)
        if not args.config_file:
            raise ISGANError("tools/benchmark.py needs --config-file (e.g. isgan_synthetic), except with "
                             "--disentangle RUN, --by-factor WEIGHTS or --scalars RUN")
        cfg = load_config(args.config_file, args.opts)
        if args.inference:
            return _inference_tables(cfg, args)
        if args.gallery is not None:
            return _gallery_table(args)
        device = distributed.select_device(cfg)
        if args.dc:
            return _dc_table(cfg, args, device)
        return _training_tables(cfg, args, device)

    return main(argv)
