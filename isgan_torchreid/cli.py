"""Command-line entry points behind tools/*.py: argument parsing, one place that reports errors (and makes the
console line-buffered, :mod:`.console`)."""
import argparse
import contextlib
import functools
import glob
import os
import signal
import sys
import threading

import torch
from tabulate import tabulate

from . import comm, compat, storage
from .allocator import keep_freed_memory
from .console import console_log, line_buffered
from .config import dump_config, get_default_config, list_configs, load_config
from .data.build import build_data
from .deploy.encoder import EncoderWriter, encoder_spec, has_identity_encoder, load_for_evaluation
from .engine import checkpoint as ckpt
from .engine import distributed
from .engine.hooks import default_hooks
from .engine.lock import output_dir_lock
from .engine.plan import RunLayout, RunPlan
from .engine.staged import StagedEngine
from .errors import ISGANError
from .models import build_model
from .visualize.samples import SampleGrids


class ListConfigs(argparse.Action):
    """``--list-configs``: print the packaged configs and exit 0 while parsing, as ``--help`` does, so that
    a required ``--config-file`` is not asked for."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(list_configs())
        parser.exit()


def parser(description, config_help=None):
    """``--config-file FILE|NAME [--list-configs] [--debug] [KEY VALUE ...]``, shared by every tool.

    ``config_help``: the tool may go without --config-file, and this says what it uses then."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config-file", required=config_help is None, help="YAML config: a file (may name a _BASE_) or "
                   "the name of a packaged config, e.g. isgan_market (see --list-configs)"
                   + (f"; {config_help}" if config_help else ""))
    p.add_argument("--list-configs", action=ListConfigs, help="list the packaged configs and exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def parse_args(p, argv):
    """``p.parse_args(argv)``, refusing a flag that ended up among the trailing ``KEY VALUE`` overrides."""
    args = p.parse_args(argv)
    late = [a for a in args.opts if a.startswith("--")]
    if late:
        raise ISGANError(f"{late[0]} comes after the KEY VALUE overrides (everything after the first KEY is an "
                         f"override); put flags before them")
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs:
    temp files are removed, data-loader workers end, nothing half-written is left."""


def _terminate(signum, frame):
    raise Terminated()


def reports_errors(main):
    """Print an ISGANError as one line (exit 2), and Ctrl-C or SIGTERM as one line (exit 130 or 143, as a shell
    reports them), unless ``--debug`` is given. Every tool's entry point: stdout and stderr are made
    line-buffered here first (:func:`~.console.line_buffered`).

    Under torchrun every rank meets a user error alike (they read the same config, data and checkpoints, and
    decide on non-finite losses together): rank 0 prints it, and torchrun stops the job when rank 0 exits.
    The other ranks wait for that, quietly; one that is still running after
    :data:`~.engine.distributed.report_grace_s` met an error of its own, and prints it.
    """
    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        line_buffered()
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
        try:
            return main(argv)
        except ISGANError as e:
            if "--debug" in argv:
                raise
            rank = comm.env_rank()
            if rank:
                if in_main_thread:  # torchrun's stop ends this wait as it did before: quietly
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                distributed.wait_for_main_to_report()
            print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            if "--debug" in argv:
                raise
            what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
            print(f"{what}: nothing half-written is left; run the same command again (training resumes from its "
                  f"last checkpoint)", file=sys.stderr)
            sys.exit(code)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    return wrapper


def prepare_output_dir(path):
    """Create ``path``, check it is writable and remove the temp files of dead writers, before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ISGANError(f"output directory {path} is not writable ({e.strerror}); set OUTPUT_DIR to a writable "
                         f"folder") from None
    for stale in storage.remove_stale_temp_files(path):
        print(f"=> removed {stale}, left by a writer that was killed")


STAGE2_NOTE = ("stage 2 trains E_U, G and D only: E_R and the trunk (the test descriptor) stay as stage 1 left "
               "them, so stage 2's metrics equal stage 1's by construction.")


def results_table(results, ranks=(1, 5, 10)):
    """{stage: {target: metrics}} -> a tabulate table of rank-k and mAP in percent (+ a note under stage 2)."""
    rows = [[stage, target] + [f"{100 * m[f'rank{r}']:.1f}" for r in ranks] + [f"{100 * m['mAP']:.1f}"]
            for stage, per_target in results.items() for target, m in per_target.items()]
    table = tabulate(rows, headers=["stage", "target"] + [f"R-{r}" for r in ranks] + ["mAP"], tablefmt="github",
                     disable_numparse=True)
    return table + (f"\nNote: {STAGE2_NOTE}" if 2 in results else "")


def configure_cpu(cfg):
    """The process's CPU settings a run trains under: denormal flushing (TRAIN.FLUSH_DENORMAL) and the C
    allocator (TRAIN.KEEP_FREED_MEMORY); the benchmarks time our side under the same."""
    torch.set_flush_denormal(cfg.TRAIN.FLUSH_DENORMAL)  # x86 CPUs; a no-op where unsupported
    if cfg.TRAIN.KEEP_FREED_MEMORY:
        keep_freed_memory()  # glibc; a no-op elsewhere


def configure_device(cfg, device: torch.device) -> None:
    """cuDNN picks each convolution's fastest algorithm once per shape (TRAIN.CUDNN_BENCHMARK): a stage's
    shapes do not change from step to step (fixed image size, P x K batches without a short last one)."""
    torch.backends.cudnn.benchmark = cfg.TRAIN.CUDNN_BENCHMARK and device.type == "cuda"


def setup(cfg):
    """Output dir, resolved config, seed, denormal flushing and the C allocator; returns the device and the data
    (:class:`~isgan_torchreid.data.build.Data`: datasets checked before any model).

    The checkpoints OUTPUT_DIR holds are checked against the config first, so that a config they cannot resume
    under is refused before it replaces the run's config.yaml. Under torchrun rank 0 writes the config and
    checks (or generates) the datasets before the others read them.
    """
    prepare_output_dir(cfg.OUTPUT_DIR)
    plan = RunPlan.from_config(cfg)
    ckpt.check_resume(plan)
    if comm.is_main_process():
        dump_config(cfg, plan.layout.config)
    compat.torchreid_base().utils.set_random_seed(cfg.SEED)
    configure_cpu(cfg)
    device = distributed.select_device(cfg)
    configure_device(cfg, device)
    with comm.main_process_first():
        data = build_data(cfg, use_gpu=device.type == "cuda")
    return device, data


def training_hooks(cfg, spec=None):
    """A training run's hooks: the engine's (:func:`~.engine.hooks.default_hooks`), then each stage's encoder file
    (when the model has an identity encoder of encoder spec ``spec``) and the sample grids of the stages that
    draw them."""
    hooks = default_hooks(cfg)
    if spec is not None:
        hooks.append(EncoderWriter(spec))
    return hooks + [SampleGrids(cfg.TRAIN.SAMPLE_FREQ)]


def build_engine(cfg, data, device, hooks=None, extra_hooks=()):
    """The model of MODEL.NAME in a :class:`StagedEngine` on ``data`` (:func:`setup`'s) with ``hooks`` (default:
    :func:`training_hooks`) and ``extra_hooks``; its checkpoints hold the encoder spec of a model with an identity
    encoder.

    The RNGs are seeded again after the model is built, so that the data order and augmentations of a run
    do not depend on how many random numbers its model's construction drew: IS-GAN's stage 1 and the E_R
    baseline see the same batches.
    """
    model = build_model(cfg, data.manager.num_train_pids)
    compat.torchreid_base().utils.set_random_seed(cfg.SEED)
    spec = encoder_spec(cfg) if has_identity_encoder(model) else None  # torchreid's own models have none
    hooks = training_hooks(cfg, spec) if hooks is None else list(hooks)
    return StagedEngine(cfg, data.manager, model, device, hooks + list(extra_hooks),
                       extra_state={"encoder_spec": spec} if spec is not None else None,
                       skipped_images=data.skipped_images)


def pop_list_flag(argv, flag, accept, example):
    """Take ``flag v1 v2 ...`` out of argv, wherever it stands; returns (the rest, the values or None if absent).
    ``flag``: its spelling, or a tuple of spellings (``("-t", "--targets")``); errors name the one used.

    Every tool parses its list-valued flags (--stages, --targets, --methods, --weights, ...) here, the same way:
    values follow the flag separated by spaces, commas or both (``--stages 2 3``, ``--stages 2,3``,
    ``--stages=2,3``), and the flag may be repeated (values add up). A value ends where an argument is not
    admitted by ``accept`` (another flag, a ``KEY VALUE`` override). argparse cannot do this beside the
    trailing overrides, which it would swallow.
    """
    spellings = (flag,) if isinstance(flag, str) else flag
    rest, values, found = [], [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        used = next((f for f in spellings if arg == f or arg.startswith(f + "=")), None)
        if used is None:
            rest.append(arg)
            i += 1
            continue
        found = True
        taken = [arg[len(used) + 1:]] if arg != used else []
        i += 1
        while arg == used and i < len(argv) and _values(argv[i]) and all(accept(v) for v in _values(argv[i])):
            taken.append(argv[i])
            i += 1
        items = [v for t in taken for v in _values(t)]
        if not items:
            raise ISGANError(f"{used} needs values, e.g. {used} {example}")
        bad = [v for v in items if not accept(v)]
        if bad:
            raise ISGANError(f"{used} {bad[0]}: not a valid value; e.g. {used} {example}")
        values += items
    return rest, (values if found else None)


def _values(token):
    return [v for v in token.split(",") if v]


def add_data_flags(p):
    """torchreid's dataset flags, for --help: ``-s/--sources`` and ``-t/--targets`` (popped by
    :func:`pop_data_flags`), ``--root``."""
    p.add_argument("-s", "--sources", metavar="NAME", help="training datasets (overrides DATA.SOURCES), e.g. "
                   "-s market1501 or -s market1501 dukemtmcreid")
    p.add_argument("-t", "--targets", metavar="NAME", help="datasets to evaluate on (overrides DATA.TARGETS; "
                   "empty: the sources), e.g. -t market1501 dukemtmcreid or -t market1501,dukemtmcreid")
    p.add_argument("--root", help="the datasets' folder (overrides DATA.ROOT), e.g. --root ~/reid-data")


def pop_data_flags(argv):
    """Take ``-s/--sources`` and ``-t/--targets`` out of argv, wherever they stand (list flags, as
    :func:`pop_list_flag` parses them); returns (the rest, their overrides: DATA.SOURCES / DATA.TARGETS lists)."""
    opts = []
    for key, spellings in (("DATA.SOURCES", ("-s", "--sources")), ("DATA.TARGETS", ("-t", "--targets"))):
        argv, names = pop_list_flag(argv, spellings, is_name, "market1501 dukemtmcreid")
        if names:
            opts += [key, names]
    return argv, opts


def data_overrides(args, popped):
    """The overrides of the dataset flags: -s/-t as popped, and as argparse took them where pop_data_flags did not
    see them (``-tNAME``, an abbreviated ``--targ NAME``), then --root (DATA.ROOT)."""
    opts = list(popped)
    for key, value in (("DATA.SOURCES", args.sources), ("DATA.TARGETS", args.targets)):
        if value:
            opts += [key, _values(value)]
    return opts + (["DATA.ROOT", args.root] if args.root else [])


def is_name(arg):
    """A dataset/method name, as opposed to a flag or an upper-case config KEY."""
    return not arg.startswith("-") and arg != arg.upper()


def is_config_key(arg):
    """A ``KEY`` of the overrides: its first dotted part is a top-level config key (SEED, DATA, TRAIN, ...)."""
    return arg.split(".")[0] in get_default_config()


def is_value(arg):
    """A path or number given to a list flag, as opposed to a flag or a config KEY."""
    return not arg.startswith("-") and not is_config_key(arg)


def checkpoints_in(output_dir):
    """The checkpoints a run left in ``output_dir`` (``stage*/latest.pth.tar`` and ``model.pth.tar-*``)."""
    return sorted(glob.glob(os.path.join(output_dir, "stage*", "latest.pth.tar"))
                  + glob.glob(os.path.join(output_dir, "stage*", "model.pth.tar-*")))


def last_checkpoint(cfg):
    """``latest.pth.tar`` of the last stage of TRAIN.STAGES that has one in OUTPUT_DIR."""
    for stage in reversed(list(cfg.TRAIN.STAGES)):
        path = RunLayout(cfg.OUTPUT_DIR).latest(stage)
        if os.path.isfile(path):
            return path
    raise ISGANError(f"--eval-only: {cfg.OUTPUT_DIR} holds no checkpoint of stages {list(cfg.TRAIN.STAGES)}; "
                     f"train first, or evaluate any checkpoint with tools/test.py --weights")


@reports_errors
def train_main(argv):
    """tools/train.py: run the configured stages, resuming an interrupted run; print the results table.

    The console (stdout and stderr) of rank 0 is mirrored into OUTPUT_DIR/train.log, appended by every
    invocation. Under torchrun, each process trains on its share of every batch (see :mod:`.engine.distributed`).
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


def evaluate_weights(cfg, weights, state=None):
    """Evaluate the E_R descriptor of checkpoint ``weights`` (``state``: the checkpoint, if loaded already) on
    DATA.TARGETS (empty: SOURCES); print the table, add the results under the checkpoint's path to
    OUTPUT_DIR/test/results.json."""
    targets = list(cfg.DATA.TARGETS) or list(cfg.DATA.SOURCES)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATA.SOURCES, cfg.DATA.TARGETS = targets, targets  # training data need not be present
    cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "test")  # keep the training run's config.yaml
    cfg.MODEL.PRETRAINED = False
    cfg.freeze()
    state = storage.load_checkpoint(weights) if state is None else state
    print(f"=> evaluating {weights}" + (f" (stage {state['stage']}, epoch {state['epoch']})" if "stage" in state
                                        else ""))
    # the classifiers do not enter the descriptor: a checkpoint without num_classes (torchreid's) gets 1
    model = build_model(cfg, state.get("num_classes") or 1)
    load_for_evaluation(model, ckpt.model_state(state), weights)  # before anything is written
    device, data = setup(cfg)
    engine = StagedEngine(cfg, data.manager, model, device, hooks=[], skipped_images=data.skipped_images)
    engine.evaluate_targets(key="test", save_dir=cfg.OUTPUT_DIR)
    print(results_table(engine.results, cfg.TEST.RANKS))
    path = RunLayout(cfg.OUTPUT_DIR).results
    stored = storage.read_json(path) if os.path.isfile(path) else {}
    stored[os.path.abspath(weights)] = engine.results["test"]
    storage.write_json(path, stored)
    print(f"=> results in {path}")
    return engine.results


def _deploy_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--weights", required=True, help="encoder.safetensors, a .pth.tar checkpoint (ours or torchreid's)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    return p


@reports_errors
def extract_main(argv):
    """tools/extract.py: embed a folder (recursively) or a list of images into an .npz archive."""
    from .deploy import extract, list_images, load_encoder

    p = _deploy_parser("Embed images with the descriptor tools/test.py evaluates; write paths, features "
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
    from .deploy import load_encoder
    from .deploy.export import FORMATS, export

    p = _deploy_parser("Export the identity encoder (trunk + E_R) to ONNX or TorchScript, dynamic batch; by default "
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
