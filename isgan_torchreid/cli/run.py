"""A run assembled from its config: the output folder, the process's CPU and device settings, the data, the model in
its engine with the tools' hooks, and the evaluation of a checkpoint."""
import glob
import os

import torch
from tabulate import tabulate

from .. import comm, compat, storage
from ..allocator import keep_freed_memory
from ..config import dump_config
from ..data.build import build_data
from ..deploy.encoder import EncoderWriter, encoder_spec, has_identity_encoder, load_for_evaluation
from ..engine import checkpoint as ckpt
from ..engine import distributed
from ..engine.hooks import default_hooks
from ..engine.plan import RunLayout, RunPlan
from ..engine.staged import StagedEngine
from ..errors import ISGANError
from ..models import build_model
from ..visualize.samples import SampleGrids


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
    """A training run's hooks: the engine's (:func:`~isgan_torchreid.engine.hooks.default_hooks`), then each
    stage's encoder file (when the model has an identity encoder of encoder spec ``spec``) and the sample grids of
    the stages that draw them."""
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

def checkpoints_in(output_dir):
    """The checkpoints a run left in ``output_dir`` (``stage*/latest.pth.tar`` and ``model.pth.tar-*``)."""
    return sorted(glob.glob(os.path.join(output_dir, "stage*", "latest.pth.tar"))
                  + glob.glob(os.path.join(output_dir, "stage*", "model.pth.tar-*")))

def last_checkpoint(cfg):
    """``latest.pth.tar`` of the last stage of TRAIN.STAGES that has one in OUTPUT_DIR."""
    path = RunLayout(cfg.OUTPUT_DIR).last_latest(cfg.TRAIN.STAGES)
    if path is not None:
        return path
    raise ISGANError(f"--eval-only: {cfg.OUTPUT_DIR} holds no checkpoint of stages {list(cfg.TRAIN.STAGES)}; "
                     f"train first, or evaluate any checkpoint with tools/test.py --weights")

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
