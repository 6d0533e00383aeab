"""Command-line entry points behind tools/*.py: argument parsing, one place that reports errors."""
import argparse
import functools
import os
import sys

import torch
from tabulate import tabulate

from . import compat
from .config import dump_config, load_config
from .data.build import build_datamanager
from .engine import checkpoint as ckpt
from .engine import distributed
from .engine.staged import ISGANEngine
from .errors import ISGANError
from .models import build_model


def parser(description):
    """``--config-file FILE [--debug] [KEY VALUE ...]``, shared by every tool."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config-file", required=True, help="YAML config (may name a _BASE_)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def reports_errors(main):
    """Print an ISGANError as one line (exit 2) unless ``--debug`` is given.

    Under torchrun every rank meets a user error alike (they read the same config, data and checkpoints, and
    decide on non-finite losses together): rank 0 prints it, and torchrun stops the job when rank 0 exits.
    The other ranks wait for that, quietly; one that is still running after
    :data:`~.engine.distributed.report_grace_s` met an error of its own, and prints it.
    """
    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            return main(argv)
        except ISGANError as e:
            if "--debug" in argv:
                raise
            rank = distributed.env_rank()
            if rank:
                distributed.wait_for_main_to_report()
            print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def prepare_output_dir(path):
    """Create ``path`` and check it is writable, before any work is done."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ISGANError(f"output directory {path} is not writable ({e.strerror}); set OUTPUT_DIR to a writable "
                         f"folder") from None


def select_device(cfg):
    """DEVICE 'auto' -> cuda when present, else cpu; under torchrun, CUDA means the LOCAL_RANK GPU."""
    if cfg.DEVICE == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ISGANError(f"DEVICE = {cfg.DEVICE} but no CUDA device is available; set DEVICE auto or cpu")
    return distributed.local_device(torch.device(cfg.DEVICE))


def results_table(results, ranks=(1, 5, 10)):
    """{stage: {target: metrics}} -> a tabulate table of rank-k and mAP in percent."""
    rows = [[stage, target] + [f"{100 * m[f'rank{r}']:.1f}" for r in ranks] + [f"{100 * m['mAP']:.1f}"]
            for stage, per_target in results.items() for target, m in per_target.items()]
    return tabulate(rows, headers=["stage", "target"] + [f"R-{r}" for r in ranks] + ["mAP"], tablefmt="github",
                    disable_numparse=True)


def setup(cfg):
    """Output dir, resolved config, seed, device, data manager (datasets checked before any model).

    Under torchrun rank 0 writes the config and checks (or generates) the datasets before the others read them.
    """
    prepare_output_dir(cfg.OUTPUT_DIR)
    if distributed.is_main_process():
        dump_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    compat.torchreid_base().utils.set_random_seed(cfg.SEED)
    device = select_device(cfg)
    with distributed.main_process_first():
        dm = build_datamanager(cfg, use_gpu=device.type == "cuda")
    return device, dm


def build_engine(cfg, dm, device, hooks=None):
    """The model of MODEL.NAME in an :class:`ISGANEngine` (``hooks``: the training hooks by default).

    The RNGs are seeded again after the model is built, so that the data order and augmentations of a run
    do not depend on how many random numbers its model's construction drew: IS-GAN's stage 1 and the E_R
    baseline see the same batches.
    """
    model = build_model(cfg, dm.num_train_pids)
    compat.torchreid_base().utils.set_random_seed(cfg.SEED)
    return ISGANEngine(cfg, dm, model, device, hooks)


def pop_list_flag(argv, flag, accept, example):
    """Take ``flag v1 v2 ...`` (the values ``accept`` admits) out of argv, wherever it stands.

    argparse cannot do this beside the trailing ``KEY VALUE`` overrides, which it would swallow.
    """
    if flag not in argv:
        return argv, None
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and accept(argv[j]):
        j += 1
    if j == i + 1:
        raise ISGANError(f"{flag} needs values, e.g. {flag} {example}")
    return argv[:i] + argv[j:], argv[i + 1:j]


def is_name(arg):
    """A dataset/method name, as opposed to a flag or an upper-case config KEY."""
    return not arg.startswith("-") and arg != arg.upper()


@reports_errors
def train_main(argv):
    """tools/train.py: run the configured stages, resuming an interrupted run; print the results table.

    Under torchrun, each process trains on its share of every batch (see :mod:`.engine.distributed`)."""
    p = parser("Train IS-GAN (stages 1-3), MGN or a torchreid model; evaluate on DATA.TARGETS.")
    p.add_argument("--stages", metavar="N", help="subset of stages to run, e.g. --stages 2 3 (overrides "
                   "TRAIN.STAGES)")
    argv, stages = pop_list_flag(argv, "--stages", str.isdigit, "2 3")
    args = p.parse_args(argv)
    opts = args.opts + (["TRAIN.STAGES", f"[{', '.join(stages)}]"] if stages else [])
    cfg = load_config(args.config_file, opts)
    device = select_device(cfg)
    with distributed.process_group(device, cfg.TRAIN.DIST_TIMEOUT):
        distributed.check_config(cfg, device)
        device, dm = setup(cfg)
        results = build_engine(cfg, dm, device).run_stages()
        print(results_table(results, cfg.TEST.RANKS))
    return results


@reports_errors
def test_main(argv):
    """tools/test.py: evaluate a checkpoint's E_R descriptor on DATA.TARGETS (or --targets)."""
    distributed.single_process_only("tools/test.py", "evaluation uses one device")
    p = parser("Evaluate a checkpoint on the configured targets.")
    p.add_argument("--weights", required=True, help="checkpoint (ours or torchreid's)")
    p.add_argument("--targets", metavar="NAME", help="datasets to evaluate on (overrides DATA.TARGETS)")
    argv, targets = pop_list_flag(argv, "--targets", is_name, "market1501 dukemtmcreid")
    args = p.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    targets = targets or list(cfg.DATA.TARGETS) or list(cfg.DATA.SOURCES)
    cfg.defrost()
    cfg.DATA.SOURCES, cfg.DATA.TARGETS = targets, targets  # training data need not be present
    cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "test")  # keep the training run's config.yaml
    cfg.MODEL.PRETRAINED = False
    cfg.freeze()
    state = ckpt.load_checkpoint(args.weights)
    device, dm = setup(cfg)
    weights = ckpt.model_state(state)
    model = build_model(cfg, state.get("num_classes") or dm.num_train_pids)
    ckpt.load_weights(model, weights)
    engine = ISGANEngine(cfg, dm, model, device, hooks=[])
    engine.evaluate_targets(key="test", save_dir=cfg.OUTPUT_DIR)
    print(results_table(engine.results, cfg.TEST.RANKS))
    return engine.results
