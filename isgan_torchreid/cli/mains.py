"""The tools' entry points (tools/train.py, test.py, extract.py, export.py), each wrapped by
:func:`~.reporting.reports_errors`."""
import contextlib
import os

from .. import comm
from ..config import load_config
from ..console import console_log
from ..engine import checkpoint as ckpt
from ..engine import distributed
from ..engine.lock import output_dir_lock
from ..engine.plan import RunLayout
from ..errors import ISGANError
from .args import add_data_flags, data_overrides, deploy_parser, parse_args, parser, pop_data_flags, pop_list_flag
from .reporting import reports_errors
from .run import (build_engine, checkpoints_in, evaluate_weights, last_checkpoint, prepare_output_dir, results_table,
                  setup)


@reports_errors
def train_main(argv):
    """tools/train.py: run the configured stages, resuming an interrupted run; print the results table.

    The console (stdout and stderr) of rank 0 is mirrored into OUTPUT_DIR/train.log, appended by every
    invocation. Under torchrun, each process trains on its share of every batch (see
    :mod:`isgan_torchreid.engine.distributed`).
    """
    p = parser("Train IS-GAN (stages 1-3), MGN or a torchreid model; evaluate on DATA.TARGETS.")
    p.add_argument("--stages", metavar="N", help="subset of stages to run, e.g. --stages 2 3 or --stages 2,3 "
                   "(overrides TRAIN.STAGES)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=True,
                        help="continue the run in OUTPUT_DIR from its checkpoints (the default)")
    resume.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start from scratch; refused when OUTPUT_DIR holds checkpoints (never deleted)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the run's last checkpoint on DATA.TARGETS "
                   "(results in OUTPUT_DIR/test/); any other checkpoint: tools/test.py --weights")
    add_data_flags(p)
    command = "tools/train.py " + " ".join(argv)
    argv, stages = pop_list_flag(argv, "--stages", str.isdigit, "2 3")
    argv, data = pop_data_flags(argv)
    args = parse_args(p, argv)
    opts = args.opts + data_overrides(args, data) + (["TRAIN.STAGES", f"[{', '.join(stages)}]"] if stages else [])
    cfg = load_config(args.config_file, opts)
    if args.eval_only:
        comm.single_process_only("tools/train.py --eval-only", "evaluation uses one device")
        return evaluate_weights(cfg, last_checkpoint(cfg))
    found = checkpoints_in(cfg.OUTPUT_DIR)
    if not args.resume and found:
        raise ISGANError(f"--no-resume: {cfg.OUTPUT_DIR} already holds checkpoints ({_listing(found)}), which are "
                         f"never deleted; set a new OUTPUT_DIR, or move {os.path.join(cfg.OUTPUT_DIR, 'stage*')} aside")
    prepare_output_dir(cfg.OUTPUT_DIR)
    main = comm.env_rank() == 0
    log = console_log(RunLayout(cfg.OUTPUT_DIR).train_log, command) if main else contextlib.nullcontext()
    with output_dir_lock(cfg.OUTPUT_DIR, enabled=main), log:
        print(f"=> {'resuming from' if found else 'starting with no'} checkpoints in {cfg.OUTPUT_DIR}")
        device = distributed.select_device(cfg)
        with distributed.process_group(device, cfg.TRAIN.DIST_TIMEOUT):
            distributed.check_config(cfg, device)
            device, data = setup(cfg)
            results = build_engine(cfg, data, device).run_stages()
            print(results_table(results, cfg.TEST.RANKS))
    return results

def _listing(paths, n=2):
    shown = [os.path.relpath(p, os.path.dirname(os.path.dirname(p))) for p in paths[:n]]
    return ", ".join(shown) + (f" and {len(paths) - n} more" if len(paths) > n else "")

@reports_errors
def extract_main(argv):
    """tools/extract.py: embed a folder (recursively) or a list of images into an .npz archive."""
    from ..deploy import extract, list_images, load_encoder

    p = deploy_parser("Embed images with the descriptor tools/test.py evaluates; write paths, features "
                       "(and pids/camids for Market-named files) to an .npz.")
    p.add_argument("--images", required=True, help="a folder (walked recursively) or a text file, one path per line")
    p.add_argument("--out", default="feats.npz", help="output archive (default: feats.npz)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="image-decoding processes (0: in the main process)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-flip", action="store_true", help="skip the flipped view (default: as the weights' spec)")
    p.add_argument("--no-normalize", action="store_true", help="skip the L2 normalisation (default: as the spec)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        raise ISGANError(f"--batch-size {args.batch_size} / --workers {args.workers}: use a batch of 1 or more and "
                         f"0 or more workers")
    paths = list_images(args.images)
    encoder = load_encoder(args.weights, args.device)
    summary = extract(encoder, paths, args.out, batch_size=args.batch_size, workers=args.workers,
                      flip=encoder.spec["flip"] and not args.no_flip,
                      normalize=encoder.spec["normalize"] and not args.no_normalize)
    print(f"=> {summary['embedded']} of {summary['images']} images -> {args.out} ({summary['dim']}-d"
          + (", with Market pids/camids" if summary["labels"] else "") + f"); {summary['skipped']} skipped")
    return summary

@reports_errors
def export_main(argv):
    """tools/export.py: export the identity encoder to ONNX or TorchScript (dynamic batch)."""
    from ..deploy import load_encoder
    from ..deploy.export import FORMATS, export

    p = deploy_parser("Export the identity encoder (trunk + E_R) to ONNX or TorchScript, dynamic batch; by default "
                       "with the evaluated flip + L2 normalisation in the graph.")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file, e.g. encoder.onnx or encoder.pt")
    p.add_argument("--height", type=int, help="input height (default: the training size)")
    p.add_argument("--width", type=int, help="input width (default: the training size)")
    p.add_argument("--raw", action="store_true", help="export the un-flipped, un-normalised encoder output")
    p.add_argument("--dynamo", action="store_true", help="ONNX through torch.export (needs onnxscript)")
    args = p.parse_args(argv)
    encoder = load_encoder(args.weights, "cpu")
    try:
        export(encoder, args.out, args.format, args.height, args.width, args.raw, args.dynamo)
    except ImportError as e:  # onnx / onnxscript: the [export] extra
        raise ISGANError(f"{e}; install the export extra: pip install 'isgan-torchreid[export]'") from None
    h, w = args.height or encoder.spec["height"], args.width or encoder.spec["width"]
    print(f"=> {args.out}: {args.format}, input images (B, 3, {h}, {w}), output features (B, {encoder.descriptor_dim})"
          f"{' raw' if args.raw else ''}")
    return args.out

@reports_errors
def test_main(argv):
    """tools/test.py: evaluate a checkpoint's E_R descriptor on DATA.TARGETS (or -t); the results are added to
    OUTPUT_DIR/test/results.json under the checkpoint's path.

    Without --config-file, the config is the checkpoint's run's config.yaml (its hash checked) and OUTPUT_DIR
    that run's folder where it is now, so the results land beside the run whatever the current folder (an
    OUTPUT_DIR override still wins). With --config-file, OUTPUT_DIR is the config's, as for tools/train.py: a
    checkpoint from elsewhere (torchreid's) may have no run folder, or one that is not writable.
    """
    comm.single_process_only("tools/test.py", "evaluation uses one device")
    p = parser("Evaluate a checkpoint on the configured targets.",
               config_help="default: the config.yaml of the checkpoint's run (OUTPUT_DIR/config.yaml beside its "
                           "stage<n>/ folder, hash checked), with the results in that run's test/")
    p.add_argument("--weights", required=True, help="checkpoint (ours or torchreid's)")
    add_data_flags(p)
    argv, data = pop_data_flags(argv)
    args = parse_args(p, argv)
    opts = args.opts + data_overrides(args, data)
    if args.config_file:
        return evaluate_weights(load_config(args.config_file, opts), args.weights)
    cfg, state = ckpt.checkpoint_config(args.weights, opts=opts)
    return evaluate_weights(cfg, args.weights, state)
