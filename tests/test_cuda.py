"""On GPUs (marked ``cuda``, skipped without CUDA; tools/gpu_check.sh runs them): float16 autocast with loss scaling,
channels-last, a resumed run whose checkpoints load on the CPU, and with two or more GPUs, DDP over NCCL.

The tiny config (ResNet-18, 128x64, MODEL.PARTS [2]) keeps each test within seconds on one GPU.
"""
import json
import math
import os

import pytest
import torch

from isgan_torchreid import cli
from isgan_torchreid.benchmarks.common import NoData
from isgan_torchreid.config import load_config
from isgan_torchreid import storage
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.models import build_model

import test_distributed as td
from conftest import CONFIGS, TINY, floats, interrupted_at
from test_distributed import train_args  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL refuses 2 ranks on one)")

SMALL = ["MODEL.PARTS", "[2]"]
METRICS = ("rank1", "rank5", "rank10", "mAP")


def gpu_engine(*overrides):
    """A seeded tiny IS-GAN in an engine on cuda:0, fed batches directly."""
    overrides = TINY + SMALL + ["DEVICE", "cuda"] + list(overrides)
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), overrides)
    torch.manual_seed(0)
    return StagedEngine(cfg, NoData(8), build_model(cfg, 8), torch.device("cuda", 0), hooks=[])


def batch():
    gen = torch.Generator().manual_seed(0)
    return {"img": torch.randn(8, 3, 128, 64, generator=gen), "pid": torch.arange(8) // 4}  # 2 ids x 4


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_float16_autocast_with_loss_scaling(stage):
    engine = gpu_engine("TRAIN.AMP", "True", "TRAIN.AMP_DTYPE", "float16")
    engine.enter_stage(stage)
    dtypes = []
    module = engine.model.generator if stage > 1 else engine.model.encoder_r
    module.register_forward_hook(lambda m, args, out: dtypes.append((out[0] if isinstance(out, tuple) else out).dtype))
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad}
    scales = []
    for _ in range(12):  # GradScaler starts at 2^16: an untrained trunk's first-layer gradients (~10) overflow float16
        # there, and each skipped step halves the scale (measured on an H200: 2^16 to 2^14 still overflow)
        scales.append({name: opt.scaler.get_scale() for name, opt in engine.optimizers.items()})
        summary = floats(engine.forward_backward(batch()))
        if any(not torch.equal(p, before[n]) for n, p in engine.model.named_parameters() if n in before):
            break
    else:
        pytest.fail(f"no float16 step was taken in 12 tries (scales {scales})")
    assert dtypes[0] == torch.float16 and set(dtypes) == {torch.float16}
    for opt in engine.optimizers.values():
        assert opt.scaler.is_enabled() and opt.scaler.get_scale() > 0
    assert all(math.isfinite(v) for v in summary.values())
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # float32 master weights


def test_loss_scaling_skips_overflowing_steps():
    engine = gpu_engine("TRAIN.AMP", "True", "TRAIN.AMP_DTYPE", "float16")
    engine.enter_stage(1)
    scaler = engine.optimizers["model"].scaler
    scaler.scale(torch.ones((), device="cuda"))  # creates the scale
    scaler.update(2.0 ** 60)  # float16 gradients overflow at this scale
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    engine.forward_backward(batch())
    assert all(torch.equal(p, before[n]) for n, p in engine.model.named_parameters())  # the step was skipped
    assert scaler.get_scale() < 2.0 ** 60  # and the scale lowered


def test_channels_last_on_gpu():
    engine = gpu_engine("TRAIN.CHANNELS_LAST", "True", "TRAIN.AMP", "True")
    assert engine.model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    engine.enter_stage(3)
    seen = []
    engine.model.backbone.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    assert all(math.isfinite(v) for v in floats(engine.forward_backward(batch())).values()) and seen == [True]


def test_gpu_run_resumes_and_its_checkpoint_loads_on_cpu(data_root, tmp_path):
    def args(out):
        return (["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--debug"] + TINY + SMALL
                + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(out), "DEVICE", "cuda", "TRAIN.AMP", "True",
                   "TRAIN.STAGES", "[1, 2]", "TRAIN.STAGE2.EPOCHS", "2"])

    full = cli.train_main(args(tmp_path / "full"))
    with interrupted_at(stage=2, epoch=1, step=2), pytest.raises(KeyboardInterrupt):
        cli.train_main(args(tmp_path / "resumed"))
    latest = tmp_path / "resumed" / "stage2" / "latest.pth.tar"
    assert storage.load_checkpoint(str(latest))["epoch"] == 1
    resumed = cli.train_main(args(tmp_path / "resumed"))
    assert sorted(resumed) == [1, 2]
    # GPU kernels (cuDNN, atomics) are not bitwise reproducible: the resumed run follows the same path closely
    a = storage.load_checkpoint(str(latest))["state_dict"]
    b = storage.load_checkpoint(str(tmp_path / "full" / "stage2" / "latest.pth.tar"))["state_dict"]
    for name, value in b.items():
        if value.is_floating_point():
            torch.testing.assert_close(a[name], value, rtol=1e-2, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    # written on the GPU, evaluated on the CPU
    tested = cli.test_main(["--config-file", str(tmp_path / "full" / "config.yaml"), "--weights",
                        str(tmp_path / "full" / "stage2" / "model.pth.tar-2"), "DEVICE", "cpu",
                        "OUTPUT_DIR", str(tmp_path / "cpu")])
    assert tested["test"]["synthperson"]["mAP"] == pytest.approx(full[2]["synthperson"]["mAP"], abs=0.02)


@two_gpus
def test_nccl_processes_step_as_one_on_the_concatenated_batch(tmp_path, monkeypatch):
    td.check_steps_as_one(tmp_path, monkeypatch, "cuda")


@two_gpus
def test_torchrun_on_gpus_with_sync_batchnorm(train_args, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    code, stdout, stderr = td.finish(td.torchrun(train_args(out, "DEVICE", "cuda", "TRAIN.SYNC_BN", "True",
                                                            "TRAIN.AMP", "True")))
    assert code == 0, stderr[-3000:]
    assert "(nccl)" in stdout
    with open(out / "results.json") as f:
        results = json.load(f)
    # SyncBatchNorm keeps BatchNorm's names: the checkpoint evaluates in one process, as in the run
    tested = cli.test_main(["--config-file", str(out / "config.yaml"),
                            "--weights", str(out / "stage3" / "model.pth.tar-1"), "OUTPUT_DIR", str(tmp_path / "test")])
    for m in METRICS:
        assert tested["test"]["synthperson"][m] == pytest.approx(results["stage3"]["synthperson"][m], abs=1e-3)


def test_bfloat16_autocast_needs_no_loss_scaling():
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU does not compute in bfloat16")
    engine = gpu_engine("TRAIN.AMP", "True")  # AMP_DTYPE auto
    engine.enter_stage(3)
    assert engine.precision.dtype == torch.bfloat16
    assert not any(opt.scaler.is_enabled() for opt in engine.optimizers.values())
    assert all(math.isfinite(v) for v in floats(engine.forward_backward(batch())).values())
