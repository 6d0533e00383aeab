"""The staged IS-GAN engine: per-stage policy, one iteration's call graph, learning, resume, non-finite losses, CLI.

Everything uses the tiny config (ResNet-18, 128x64, 8 ids x 6 images, P=2 K=4) with MODEL.PARTS [2] (one
3-feature branch per encoder: half the model, so half the compute and half the checkpoints, which hold the model
and Adam's amsgrad moments and are written several times per stage); the call-graph test keeps the default parts.
Single steps share one data manager per module.
"""
import glob
import json
import math
import os
import re
import shutil
import threading

import pytest
import torch
import yaml
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import isgan_torchreid.losses.isgan as loss_module
from isgan_torchreid.cli import setup, train_main
from isgan_torchreid.config import load_config
from isgan_torchreid.data.build import IMAGENET_MEAN, IMAGENET_STD
from isgan_torchreid import storage
from isgan_torchreid.engine import checkpoint as ckpt
from isgan_torchreid.engine.hooks import Checkpointer, ResultsWriter
from isgan_torchreid.engine.objective import Precision
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model
from isgan_torchreid.models.images import luminance, normalize_uint8

from conftest import CONFIGS, TINY, floats, interrupted_at

MODULES = ("backbone", "encoder_r", "encoder_u", "generator", "discriminator")
TRAINED = {
    1: {"backbone", "encoder_r"},
    2: {"encoder_u", "generator", "discriminator"},
    3: set(MODULES),
}
SMALL = ["MODEL.PARTS", "[2]"]
METRICS = ("rank1", "rank5", "rank10", "mAP")


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def make_cfg(data_root, module_dir):
    """``make_cfg(*overrides)``: the small tiny config (OUTPUT_DIR in a module temp folder), frozen."""
    out = str(module_dir / "unit")

    def make(*overrides):
        opts = TINY + SMALL + ["DATA.ROOT", data_root, "OUTPUT_DIR", out] + list(overrides)
        return load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), opts)
    return make


@pytest.fixture(scope="module")
def dm(make_cfg):
    """One data manager for every single-step test."""
    return setup(make_cfg())[1].manager


@pytest.fixture(scope="module")
def batches(dm):
    """Two fixed training batches (dicts with 'img' (8, 3, 128, 64) and 'pid')."""
    torch.manual_seed(0)
    loader = iter(dm.train_loader)
    return [next(loader), next(loader)]


@pytest.fixture
def make_engine(make_cfg, dm):
    """``make_engine(*overrides, seed=0)``: a fresh seeded ISGAN model in an engine on the shared data."""
    def make(*overrides, seed=0):
        cfg = make_cfg(*overrides)
        torch.manual_seed(seed)
        return StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), torch.device("cpu"))
    return make


def prepare(engine, stage, epoch=0, batch_idx=0):
    """Put ``engine`` into ``stage`` as run_stage and torchreid's ``Engine.train`` do, at (epoch, batch_idx)."""
    engine.enter_stage(stage)
    engine.epoch, engine.batch_idx = epoch, batch_idx
    engine.set_model_mode("train")


def compat_models(engine):
    """The model names torchreid's Engine keeps (its registry, as compat sets it)."""
    return engine.get_model_names()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def is_bn_buffer(name):
    return name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


def changed_tensors(module, before, buffers):
    """{name: changed?} for the parameters (buffers=False) or the BN buffers (buffers=True) of ``module``."""
    names = [n for n, _ in module.named_buffers()] if buffers else [n for n, _ in module.named_parameters()]
    after = module.state_dict()
    return {n: not torch.equal(after[n], before[n]) for n in names if not buffers or is_bn_buffer(n)}


def write_config(path, overrides):
    """A YAML config on top of isgan_synthetic.yaml from KEY VALUE pairs (the CLI's ``--stages`` takes no pairs)."""
    data = {"_BASE_": os.path.join(CONFIGS, "isgan_synthetic.yaml")}
    for key, raw in zip(overrides[0::2], overrides[1::2]):
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def metrics(results):
    return {stage: {t: {m: r[m] for m in METRICS} for t, r in per.items()} for stage, per in results.items()}


def link_run(src, dst):
    """A copy of the run in ``src`` at ``dst``: its config.yaml, and its checkpoints as hard links (a run replaces
    its files, never writes into them, so ``src`` stays as it is)."""
    for path in glob.glob(str(src / "stage*" / "*.pth.tar*")):
        target = dst / os.path.relpath(path, src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    shutil.copy(src / "config.yaml", dst / "config.yaml")


# ---------------------------------------------------------------- 1. stage policy

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_policy_one_step(make_engine, batches, stage):
    engine = make_engine()
    model = engine.model
    prepare(engine, stage)
    for name in MODULES:
        module = getattr(model, name)
        trained = name in TRAINED[stage]
        assert all(p.requires_grad == trained for p in module.parameters()), name
        assert all(m.training == trained for m in module.modules()), name  # frozen BN (1d and 2d) in eval

    before = {name: snapshot(getattr(model, name)) for name in MODULES}
    d_calls, d_step_grads = [], {}
    disc = model.discriminator
    disc.register_forward_pre_hook(lambda m, args: d_calls.append(any(p.requires_grad for p in m.parameters())))
    if stage > 1:
        def record(optimizer, args, kwargs):
            d_step_grads.update({n: p.grad.clone() for n, p in disc.named_parameters()})
        engine.optimizers["discriminator"].optimizer.register_step_pre_hook(record)

    summary = floats(engine.forward_backward(batches[0]))

    assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())
    for name in MODULES:
        module = getattr(model, name)
        params = changed_tensors(module, before[name], buffers=False)
        stats = changed_tensors(module, before[name], buffers=True)
        if name in TRAINED[stage]:
            # every parameter moves, except in D those whose gradient is zero up to rounding (~1e-9), where SGD's
            # weight-decay step (lr * 1e-4 * w) is below float32 resolution: the conv biases before an
            # InstanceNorm (which removes them)
            grads = {n: p.grad for n, p in module.named_parameters()}
            still = [n for n, c in params.items() if not c and not (grads[n] is not None and
                                                                    grads[n].abs().max() < 1e-6)]
            assert still == [], (name, still)
            assert sum(params.values()) >= len(params) // 2, name
            assert all(stats.values()), (name, [n for n, c in stats.items() if not c])  # BN in train mode
        else:
            assert not any(params.values()), (name, [n for n, c in params.items() if c])
            assert not any(stats.values()), (name, [n for n, c in stats.items() if c])
            assert all(p.grad is None for p in module.parameters()), name
        assert all(p.requires_grad == (name in TRAINED[stage]) for p in module.parameters()), name
    if stage == 1:
        assert d_calls == []
    else:
        # D step with D trainable, G step against a frozen D; the G loss leaves D's gradients untouched
        assert d_calls == [True, False]
        assert d_step_grads.keys() == dict(disc.named_parameters()).keys()
        for n, p in disc.named_parameters():
            assert torch.equal(p.grad, d_step_grads[n]), n
    # G's BatchNorms saw exactly one batch per iteration (one concatenated call)
    bns = [m for m in model.generator.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    bn_counts = {m.num_batches_tracked.item() for m in bns}
    assert bn_counts == ({0} if stage == 1 else {1})


@pytest.mark.parametrize("stage", [2, 3])
def test_optimizers_cover_the_trained_modules(make_cfg, make_engine, stage):
    engine = make_engine("TRAIN.LR_MULT_GU", "0.01")
    engine.enter_stage(stage)
    lr = make_cfg().TRAIN[f"STAGE{stage}"].LR

    def ids(*names):
        return {id(p) for n in names for p in getattr(engine.model, n).parameters()}

    groups = [({id(p) for p in g["params"]}, g["lr"]) for g in engine.optimizers["model"].optimizer.param_groups]
    if stage == 2:
        assert groups == [(ids("encoder_u", "generator"), lr)]
    else:  # G and E_U at LR_MULT_GU x the stage lr
        assert groups == [(ids("backbone", "encoder_r"), lr), (ids("encoder_u", "generator"), pytest.approx(0.01 * lr))]
    d_groups = engine.optimizers["discriminator"].optimizer.param_groups
    assert [{id(p) for p in g["params"]} for g in d_groups] == [ids("discriminator")]
    assert set(engine.optimizers) == {"model", "discriminator"}  # both saved
    assert set(compat_models(engine)) == {"model", "discriminator"}  # both switched and stepped by torchreid


@pytest.mark.parametrize("choice", ["sgd", "adam"])
def test_discriminator_optimizer_is_the_configured_one(make_cfg, make_engine, choice):
    cfg = make_cfg()
    engine = make_engine("TRAIN.D_OPTIMIZER", choice, "TRAIN.D_ADAM_BETAS", "[0.4, 0.99]", "TRAIN.D_LR_MULT", "4")
    engine.enter_stage(2)
    opt = engine.optimizers["discriminator"].optimizer
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(4 * cfg.TRAIN.STAGE2.LR)
    assert group["weight_decay"] == cfg.TRAIN.D_WEIGHT_DECAY
    if choice == "adam":
        assert type(opt) is torch.optim.Adam and group["betas"] == (0.4, 0.99)
    else:
        assert type(opt) is torch.optim.SGD and group["momentum"] == cfg.TRAIN.D_MOMENTUM


def test_non_gan_model_trains_in_stage1_only(make_cfg, dm, batches):
    cfg = make_cfg("MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]")
    torch.manual_seed(0)
    engine = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), torch.device("cpu"))
    assert engine.objective.stages == (1, 3)
    prepare(engine, 1)
    before = snapshot(engine.model)
    summary = floats(engine.forward_backward(batches[0]))
    assert set(summary) == {"L_R", "L_tri", "acc"}  # cross-entropy + batch-hard triplet (MGN)
    assert all(changed_tensors(engine.model, before, buffers=False).values())
    with pytest.raises(ISGANError, match=r"MGN has no stage 2 .*TRAIN.STAGES \[1, 3\]"):
        engine.run_stages([1, 2])


def test_isgan_with_triplet_is_mgn_in_stage1_and_adds_the_triplet_to_l_r_in_stage3(make_cfg, dm, batches):
    """LOSS.ISGAN_TRIPLET: IS-GAN's stage-1 step is exactly MGN's (same initial E_R, same loss); stage 3 adds
    the triplet term, weighted like L_R by λ_R, on the global features."""
    engines = {}
    runs = {"isgan": ["LOSS.ISGAN_TRIPLET", "True"], "mgn": ["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]"]}
    for name, extra in runs.items():
        cfg = make_cfg(*extra)
        torch.manual_seed(0)
        engines[name] = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), torch.device("cpu"))
        prepare(engines[name], 1)
        torch.manual_seed(1)
        summary = floats(engines[name].forward_backward(batches[0]))
        assert set(summary) == {"L_R", "L_tri", "acc"}
    mgn = engines["mgn"].model.state_dict()
    isgan = engines["isgan"].model.state_dict()
    assert all(torch.equal(v, isgan[k]) for k, v in mgn.items())

    engine = engines["isgan"]
    prepare(engine, 3)
    calls = []
    real = engine.objective.triplet.forward
    engine.objective.triplet.forward = lambda f, p: calls.append(f.shape) or real(f, p)
    summary = floats(engine.forward_backward(batches[0]))
    assert {"L_R", "L_tri", "L_S", "L_PS", "L_D", "L_C", "L_U"} <= set(summary)
    branches = engine.model.encoder_r.branches
    assert calls == [(batches[0]["img"].size(0), make_cfg().MODEL.ID_DIM)] * len(branches.global_indices)


# ---------------------------------------------------------------- 2. call graph of one iteration

def test_stage1_runs_only_backbone_and_encoder_r(make_engine, batches):
    engine = make_engine()
    prepare(engine, 1)

    def forbid(module, args):
        raise AssertionError(f"{type(module).__name__} ran in stage 1")

    for name in ("encoder_u", "generator", "discriminator"):
        getattr(engine.model, name).register_forward_pre_hook(forbid)
    ran = []
    engine.model.encoder_r.register_forward_hook(lambda m, args, out: ran.append(torch.is_grad_enabled()))
    summary = floats(engine.forward_backward(batches[0]))
    assert ran == [True] and set(summary) == {"L_R", "acc"}


@pytest.mark.parametrize("stage", [2, 3])
def test_gan_iteration_call_graph(make_engine, batches, stage):
    engine = make_engine("MODEL.PARTS", "[1, 2, 3]")  # the default K = 8 features
    prepare(engine, stage)
    model, B = engine.model, batches[0]["img"].size(0)
    trunk_calls, g_batches, d_batches = [], [], []

    def watch_trunk(module, args, out):
        first = out[0] if isinstance(out, tuple) else out
        trunk_calls.append((type(module).__name__, torch.is_grad_enabled(), first.grad_fn is not None))

    model.backbone.register_forward_hook(watch_trunk)
    model.encoder_r.register_forward_hook(watch_trunk)
    model.generator.register_forward_pre_hook(lambda m, args: g_batches.append(args[0].size(0)))
    model.discriminator.register_forward_pre_hook(lambda m, args: d_batches.append(args[0].size(0)))

    summary = floats(engine.forward_backward(batches[0]))

    grad = stage == 3  # stage 2 runs the frozen trunk and E_R under no_grad
    assert [c[1:] for c in trunk_calls] == [(grad, grad), (grad, grad)]
    assert g_batches == [3 * B]  # auto | shuffled | part-shuffled in one call
    assert d_batches == [B + 3 * B, 3 * B]  # D step on [real | fakes], G step on the fakes
    assert {"L1_auto", "L1_shuffled", "L1_part_shuffled", "L_S", "L_PS", "L_U", "L_D", "L_C", "D_dom",
            "D_cls"} <= set(summary)
    assert ("L_R" in summary) == (stage == 3)


def test_cross_identity_set_is_judged_but_not_reconstructed(make_engine, batches, monkeypatch):
    """LOSS.LAMBDA_X: G also draws each image's nuisance with another identity of the batch, drawn with that
    identity's label; D_D and D_C see it (D_C told the stranger's label), G's class term on it is L_X, apart
    from L_C; no L1 is taken of it."""
    engine = make_engine("LOSS.LAMBDA_X", "0.5")
    prepare(engine, 2)
    B, pids = batches[0]["img"].size(0), batches[0]["pid"]
    d_batches, class_targets = [], []
    engine.model.discriminator.register_forward_pre_hook(lambda m, args: d_batches.append(args[0].size(0)))
    real_class_loss = loss_module.class_loss
    monkeypatch.setattr(loss_module, "class_loss", lambda logits, target: class_targets.append(target) or
                        real_class_loss(logits, target))
    summary = floats(engine.forward_backward(batches[0]))
    assert d_batches == [B + 4 * B, 4 * B]
    assert set(summary) >= {"L1_auto", "L1_shuffled", "L1_part_shuffled", "L_C", "L_X"}
    assert "L1_crossed" not in summary
    d_real, d_fakes, g_c, g_x = class_targets
    assert torch.equal(d_real, pids) and torch.equal(d_fakes, torch.cat([g_c, g_x]))
    assert torch.equal(g_c, pids.repeat(3))
    assert len(g_x) == B and (g_x != pids).all()  # every row drew another identity (the batch has several)
    gen = engine.objective.generate(batches[0]["img"], pids, 2)
    assert gen.sets[-1] == "crossed" and torch.equal(gen.labels[:B], pids)


def test_uint8_batches_are_normalised_on_the_device(make_engine, batches):
    """A uint8 batch (DATA.UINT8_BATCHES) steps as its normalised float batch does: the engine normalises it."""
    u8 = (batches[0]["img"] * 60 + 120).clamp(0, 255).to(torch.uint8)  # (8, 3, H, W)
    summaries = []
    for img in (u8, normalize_uint8(u8)):
        engine = make_engine()
        prepare(engine, 1)
        summaries.append(floats(engine.forward_backward({"img": img, "pid": batches[0]["pid"]})))
    assert summaries[0] == summaries[1] and summaries[0]["L_R"] > 0


def step_beside_reference(make_engine, batch, stage, *overrides):
    """One step of ``stage`` on ``batch`` with ``overrides`` and one without, from the same seed; the trunk's
    BatchNorm statistics end equal (a term whose pass over the fakes is on the running statistics moves none).
    Returns the first step's values."""
    engine, reference = make_engine(*overrides), make_engine()
    prepare(engine, stage)
    prepare(reference, stage)
    summary = floats(engine.forward_backward(batch))
    floats(reference.forward_backward(batch))
    running = [[b for name, b in e.model.backbone.named_buffers() if "running" in name] for e in (engine, reference)]
    assert all(torch.equal(a, b) for a, b in zip(*running))  # the same seed: only the real pass moved them
    return summary


@pytest.mark.parametrize("stage", [2, 3])
def test_code_term_reads_cross_identity_fakes_with_a_frozen_e_r(make_engine, batches, stage):
    """LOSS.LAMBDA_CODE alone: the cross-identity fakes exist (no L_X), E_R reads them with frozen parameters and
    running statistics, and L_code = λ mean(1 - cos) of its part features against the drawn identity codes: it
    trains G and E_U; E_R's reading passes no gradient to the trunk or E_R, whose BatchNorm statistics see the
    real images only."""
    engine = make_engine("LOSS.LAMBDA_CODE", "2.0")
    prepare(engine, stage)
    model, pids = engine.model, batches[0]["pid"]
    gen = engine.objective.generate(batches[0]["img"], pids, stage)
    assert gen.sets[-1] == "crossed" and (pids[gen.stranger] != pids).all()
    crossed = gen.fakes.chunk(len(gen.sets))[-1]
    sources = batches[0]["img"][gen.stranger]
    term = 2.0 * engine.objective.code_loss(crossed, gen.id_feat[gen.stranger], sources)
    K = model.encoder_r.branches.num_features
    model.backbone.eval(), model.encoder_r.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        read, _ = model.encoder_r(model.backbone((engine.objective.image_to_unit(crossed) - mean) / std))
    prepare(engine, stage)
    cos = F.cosine_similarity(read.view(len(pids), K, -1), gen.id_feat[gen.stranger].view(len(pids), K, -1), dim=2)
    assert term.item() == pytest.approx(2.0 * (1 - cos).mean().item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_u.parameters())
    model.zero_grad(set_to_none=True)  # E_R's reading itself passes no gradient to E_R or the trunk
    image = crossed.detach().requires_grad_()
    engine.objective.code_loss(image, gen.id_feat[gen.stranger], sources).backward()
    assert image.grad.abs().sum() > 0
    assert all(p.grad is None for m in (model.backbone, model.encoder_r) for p in m.parameters())
    assert all(p.requires_grad == (stage == 3) for p in model.backbone.parameters())  # restored
    assert model.backbone.training == (stage == 3)

    summary = step_beside_reference(make_engine, batches[0], stage, "LOSS.LAMBDA_CODE", "2.0")
    assert "L_code" in summary and "L_X" not in summary and summary["L_code"] > 0


def test_grey_code_term_reads_the_luminance_of_the_fakes_against_that_of_the_drawn_identitys_image(make_engine,
                                                                                                    batches):
    """LOSS.CODE_INPUT gray: E_R (frozen, running statistics) reads the luminance of each cross-identity fake, and
    its target is E_R's reading of the luminance of the real image the drawn code came from, not the code: a fake
    equal to that image in every channel's grey level meets it exactly, one with its colours only (the same image
    with its channels permuted, so another grey level) does not. It trains G and E_U, and needs λ_code > 0."""
    with pytest.raises(ISGANError, match="LOSS.LAMBDA_CODE 0 turns off"):
        make_engine("LOSS.CODE_INPUT", "gray")
    engine = make_engine("LOSS.LAMBDA_CODE", "1.0", "LOSS.CODE_INPUT", "gray")
    prepare(engine, 2)
    model, imgs, pids = engine.model, batches[0]["img"], batches[0]["pid"]
    objective = engine.objective
    gen = objective.generate(imgs, pids, 2)
    crossed, sources = gen.fakes.chunk(len(gen.sets))[-1], imgs[gen.stranger]
    codes = gen.id_feat[gen.stranger]
    own = objective.image_target(sources)  # b's own image as G's output would show it
    assert objective.code_loss(own, codes, sources).item() == pytest.approx(0, abs=1e-5)
    recoloured = objective.image_target(sources[:, [2, 0, 1]])  # the same shapes, the colours moved between channels
    assert objective.code_loss(recoloured, codes, sources).item() > 1e-3
    assert objective.code_loss(own, codes, sources[:, [2, 0, 1]]).item() > 1e-3  # the target is b's image's
    model.zero_grad(set_to_none=True)
    objective.code_loss(crossed, codes, sources).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert all(p.grad is None for m in (model.backbone, model.encoder_r) for p in m.parameters())

    summary = step_beside_reference(make_engine, batches[0], 2, "LOSS.LAMBDA_CODE", "1.0", "LOSS.CODE_INPUT", "gray")
    assert summary["L_code"] > 0


def test_fake_identity_term_trains_e_r_on_the_cross_identity_fakes_in_stage_3(make_engine, batches):
    """LOSS.LAMBDA_R_FAKE: in stage 3 (only) G draws the cross-identity set, and the trunk and E_R read those fakes,
    detached and on BatchNorm's running statistics, as training images of the identities drawn into them:
    L_R_fake = λ L_R of them. Its gradient trains the trunk and E_R, not G or E_U; the running statistics see the
    real images only; the modules' modes are restored."""
    imgs, pids = batches[0]["img"], batches[0]["pid"]
    engine = make_engine("LOSS.LAMBDA_R_FAKE", "2.0")
    prepare(engine, 2)
    assert "crossed" not in engine.objective.generate(imgs, pids, 2).sets
    assert "L_R_fake" not in floats(engine.forward_backward(batches[0]))

    prepare(engine, 3)
    model = engine.model
    gen = engine.objective.generate(imgs, pids, 3)
    assert gen.sets[-1] == "crossed" and (pids[gen.stranger] != pids).all()
    crossed, labels = gen.fakes.chunk(len(gen.sets))[-1], pids[gen.stranger]
    term, weights = engine.objective.fake_identity_loss(crossed, labels, pids)
    term = 2.0 * term
    assert weights is None and model.identity_teacher is None  # LOSS.R_FAKE_JUDGE none
    model.backbone.eval(), model.encoder_r.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        _, logits = model.encoder_r(model.backbone((engine.objective.image_to_unit(crossed) - mean) / std))
    prepare(engine, 3)
    expected = torch.stack([F.cross_entropy(x, labels) for x in logits]).mean()  # ID_REDUCTION mean
    assert term.item() == pytest.approx(2.0 * expected.item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    term.backward()
    for trained in (model.backbone, model.encoder_r):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    for untouched in (model.generator, model.encoder_u):
        assert all(p.grad is None for p in untouched.parameters())
    assert model.backbone.training and model.encoder_r.training

    summary = step_beside_reference(make_engine, batches[0], 3, "LOSS.LAMBDA_R_FAKE", "2.0")
    assert summary["L_R_fake"] > 0 and "L_X" not in summary and "L_code" not in summary


@pytest.mark.parametrize("smooth, expected", [(["LOSS.R_FAKE_LABEL_SMOOTH", "0.1"], 0.1),
                                              (["LOSS.LABEL_SMOOTH", "0.2"], 0.2),  # 0: the real images' smoothing
                                              (["LOSS.LABEL_SMOOTH", "0.2", "LOSS.R_FAKE_LABEL_SMOOTH", "0.1"], 0.1)])
def test_fake_identity_term_smooths_its_targets(make_engine, batches, smooth, expected):
    """LOSS.R_FAKE_LABEL_SMOOTH > 0: L_R_fake's targets are smoothed by it (CamStyle's regularisation of generated
    images); at 0 by LABEL_SMOOTH, as the real images' targets."""
    imgs, pids = batches[0]["img"], batches[0]["pid"]
    engine = make_engine("LOSS.LAMBDA_R_FAKE", "2.0", *smooth)
    prepare(engine, 3)
    model = engine.model
    fakes, labels = torch.rand(len(pids), *imgs.shape[1:]) * 2 - 1, pids.flip(0)
    term, _ = engine.objective.fake_identity_loss(fakes, labels, pids)
    model.backbone.eval(), model.encoder_r.eval()
    with torch.no_grad():
        _, logits = model.encoder_r(model.backbone(engine.objective.image_to_input(fakes)))
    hard = torch.stack([F.cross_entropy(x, labels) for x in logits]).mean()
    smoothed = torch.stack([F.cross_entropy(x, labels, label_smoothing=expected) for x in logits]).mean()
    assert term.item() == pytest.approx(smoothed.item(), rel=1e-5) and term.item() != pytest.approx(hard.item())


def test_teacher_judge_weights_each_fake_by_a_frozen_copys_verdict_b_rather_than_a(make_engine, batches):
    """LOSS.R_FAKE_JUDGE teacher: as stage 3 starts, the identity teacher becomes a copy of the trunk and E_R; each
    cross-identity fake's L_R_fake is weighted by sigmoid(l_b - l_a) of the teacher's mean logits l (b drawn into
    it, a its nuisance source); the teacher neither trains nor moves its BatchNorm statistics, and the mean
    weight is logged."""
    imgs, pids = batches[0]["img"], batches[0]["pid"]
    engine = make_engine("LOSS.LAMBDA_R_FAKE", "2.0", "LOSS.R_FAKE_JUDGE", "teacher")
    model = engine.model
    prepare(engine, 3)
    engine.objective.start_stage(3)  # run_stage's call when stage 3 starts from stage 2's weights
    teacher = model.identity_teacher
    start = {**snapshot(model.backbone), **{f"r.{k}": v for k, v in snapshot(model.encoder_r).items()}}
    copied = {**snapshot(teacher.backbone), **{f"r.{k}": v for k, v in snapshot(teacher.encoder_r).items()}}
    assert copied.keys() == start.keys() and all(torch.equal(copied[k], v) for k, v in start.items())
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in model.encoder_r.parameters():
            p.add_(0.05 * torch.randn_like(p))  # E_R trained on: its reading now differs from the teacher's

    fakes, labels = torch.rand(len(pids), *imgs.shape[1:]) * 2 - 1, pids.flip(0)
    term, weights = engine.objective.fake_identity_loss(fakes, labels, pids)
    inputs = engine.objective.image_to_input(fakes)
    with torch.no_grad():
        _, judged = teacher.eval().encoder_r(teacher.backbone(inputs))
        _, read = model.encoder_r.eval()(model.backbone.eval()(inputs))
    prepare(engine, 3)
    mean_logits = torch.stack(judged).mean(0)
    rows = torch.arange(len(pids))
    expected_w = torch.sigmoid(mean_logits[rows, labels] - mean_logits[rows, pids])
    torch.testing.assert_close(weights, expected_w)
    assert ((weights > 0) & (weights < 1)).all() and weights.std() > 0
    per_image = torch.stack([F.cross_entropy(x, labels, reduction="none") for x in read])  # (K, B)
    assert term.item() == pytest.approx((per_image * expected_w).mean(1).mean().item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    term.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_r.parameters())

    before = snapshot(teacher)
    summary = floats(engine.forward_backward(batches[0]))
    assert summary["L_R_fake"] > 0 and 0 < summary["gan/r_fake_weight"] < 1
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # nor its running statistics


def test_teacher_judge_needs_its_term_and_a_model_built_with_the_teacher(make_engine):
    with pytest.raises(ISGANError, match="LOSS.LAMBDA_R_FAKE 0 turns off"):
        make_engine("LOSS.R_FAKE_JUDGE", "teacher")
    engine = make_engine("LOSS.LAMBDA_R_FAKE", "2.0")
    with pytest.raises(ISGANError, match="no identity teacher"):
        engine.model.teacher_logits(torch.zeros(1, 3, 128, 64))


def test_code_gradient_cap_holds_gs_push_on_e_r_to_a_fraction_of_l_rs_in_stage_3(make_engine, batches):
    """LOSS.CODE_GRAD_CAP: in stage 3 the gradient G's terms send into the identity code (G's input) is scaled by
    s = min(1, cap x ||dL_R / d code|| / ||dG's terms / d code||), so E_R's parameters get g_R + s g_G (g_R from
    the identity terms, g_G from all others); the ratio and s are logged. A cap that does not bind leaves the
    step as without one; stage 2 has no cap (E_R does not train)."""
    imgs, pids = batches[0]["img"], batches[0]["pid"]

    def step(*overrides):
        """One stage-3 step from seed 0: E_R's gradients, the step's summary, and without a cap the two parts."""
        engine = make_engine(*overrides)
        prepare(engine, 3)
        objective, made, grads = engine.objective, [], {}
        generate = objective.generate
        objective.generate = lambda *a, **k: made.append(generate(*a, **k)) or made[-1]
        params = [p for p in engine.model.encoder_r.parameters() if p.requires_grad]

        identity_terms = objective.loss_groups["id"]  # L_R (and the triplet); every other term is G's side

        def update(terms):
            identity = sum(v for k, v in terms.items() if k in identity_terms)
            gan = sum(v for k, v in terms.items() if k not in identity_terms)
            if not overrides:
                gen = made[-1]
                grads["R"] = torch.autograd.grad(identity, params, retain_graph=True, allow_unused=True)
                grads["G"] = torch.autograd.grad(gan, params, retain_graph=True, allow_unused=True)
                grads["R_code"], = torch.autograd.grad(identity, gen.id_feat, retain_graph=True)
                grads["G_code"], = torch.autograd.grad(gan, gen.code, retain_graph=True)
            (identity + gan).backward()
            grads["total"] = [p.grad for p in params]
        torch.manual_seed(1)
        summary = floats(objective.step(imgs, pids, 3, {"discriminator": lambda terms: None, "model": update}))
        return grads, summary

    ref, ref_summary = step()
    assert "gan/code_grad_scale" not in ref_summary
    ratio = (ref["G_code"].norm() / ref["R_code"].norm()).item()
    cap = ratio / 4  # binds: G's share becomes a quarter of what it was
    capped, summary = step("LOSS.CODE_GRAD_CAP", str(cap))
    assert summary["gan/code_grad_ratio"] == pytest.approx(ratio, rel=1e-4)
    assert summary["gan/code_grad_scale"] == pytest.approx(0.25, rel=1e-4)

    def flat(grads):  # one vector over E_R's parameters (None: no gradient)
        return torch.cat([torch.zeros(p.numel()) if t is None else t.flatten()
                          for p, t in zip(capped["total"], grads)])

    r, g, total = flat(ref["R"]), flat(ref["G"]), flat(capped["total"])
    assert g.norm() > 0  # G's terms do reach E_R through the code
    # float32 sums in another order: the error is a hundredth of the cap's effect (0.75 g) or less
    assert (total - (r + 0.25 * g)).norm() < 0.01 * (0.75 * g).norm()
    loose, summary = step("LOSS.CODE_GRAD_CAP", str(ratio * 4))
    assert summary["gan/code_grad_scale"] == 1.0
    assert (flat(loose["total"]) - flat(ref["total"])).norm() < 0.01 * (0.75 * g).norm()

    engine = make_engine("LOSS.CODE_GRAD_CAP", "0.01")
    prepare(engine, 2)
    assert "gan/code_grad_scale" not in floats(engine.forward_backward(batches[0]))


@pytest.mark.parametrize("stage", [2, 3])
def test_feature_term_compares_the_trunks_maps_of_the_fakes_and_their_targets(make_engine, batches, stage):
    """LOSS.LAMBDA_FEAT: the trunk, frozen and on its running statistics, reads the fakes that have a pixel target
    (auto-encoded, shuffled, part-shuffled; not the cross-identity ones) and the real images; L_feat = λ x the mean
    over layer1, layer2 and the trunk's output of the squared distance of their channel-normalised features. Its
    gradient trains G and E_U and reaches neither the trunk nor E_R, whose statistics see the real images only."""
    engine = make_engine("LOSS.LAMBDA_FEAT", "3.0", "LOSS.LAMBDA_CODE", "1.0")
    prepare(engine, stage)
    model, imgs, pids = engine.model, batches[0]["img"], batches[0]["pid"]
    gen = engine.objective.generate(imgs, pids, stage)
    assert gen.sets == ["auto", "shuffled", "part_shuffled", "crossed"]
    fakes = gen.fakes[:3 * len(pids)]
    term = 3.0 * engine.objective.feature_loss(fakes, imgs)

    model.backbone.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    expected = []
    with torch.no_grad():
        x, y = (engine.objective.image_to_unit(fakes) - mean) / std, imgs.repeat(3, 1, 1, 1)
        for i, layer in enumerate(model.backbone):  # conv1, bn1, relu, maxpool, layer1, layer2, layer3[0]
            x, y = layer(x), layer(y)
            if i >= 4:
                unit_x, unit_y = (t / t.norm(dim=1, keepdim=True).clamp_min(1e-12) for t in (x, y))
                expected.append(((unit_x - unit_y) ** 2).sum(1).mean())
    prepare(engine, stage)
    assert [m.shape[-2:] for m in model.trunk_maps(imgs)] == [(32, 16), (16, 8), (8, 4)]  # 128x64 / 4, 8, 16
    assert 0 < term.item() == pytest.approx(3.0 * torch.stack(expected).mean().item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_u.parameters())
    model.zero_grad(set_to_none=True)  # the trunk's reading itself passes no gradient to the trunk
    image = fakes.detach().requires_grad_()
    engine.objective.feature_loss(image, imgs).backward()
    assert image.grad.abs().sum() > 0
    assert all(p.grad is None for m in (model.backbone, model.encoder_r) for p in m.parameters())
    assert all(p.requires_grad == (stage == 3) for p in model.backbone.parameters())  # restored
    assert model.backbone.training == (stage == 3)
    assert engine.objective.feature_loss(engine.objective.image_target(imgs).repeat(2, 1, 1, 1),
                                         imgs).item() == pytest.approx(0, abs=1e-4)  # the targets themselves

    assert step_beside_reference(make_engine, batches[0], stage, "LOSS.LAMBDA_FEAT", "3.0")["L_feat"] > 0


@pytest.mark.parametrize("stage", [2, 3])
def test_nuisance_adversary_learns_the_codes_identities_and_e_u_is_asked_to_hide_them(make_engine, batches, stage):
    """LOSS.LAMBDA_ADV_U: D holds a linear identity classifier of E_U's codes (F*p_U wide; absent otherwise, so
    earlier checkpoints keep their tensors); D's update trains it on the detached code means (D_nu) and E_U's
    update gets L_nu = λ KL(U || its softmax) through the updated, frozen classifier: L_nu's gradient reaches E_U
    and not the classifier, D_nu's the classifier and not E_U."""
    assert make_engine().model.discriminator.code_head is None
    engine = make_engine("LOSS.LAMBDA_ADV_U", "0.5")
    model, disc = engine.model, engine.model.discriminator
    prepare(engine, stage)
    head = snapshot(disc.code_head)
    summary = floats(engine.forward_backward(batches[0]))
    assert {"D_nu", "L_nu", "eu/id_acc"} <= set(summary) and summary["L_nu"] >= 0 and summary["D_nu"] > 0
    assert all(changed_tensors(disc.code_head, head, buffers=False).values())

    prepare(engine, stage)
    pids = batches[0]["pid"]
    gen = engine.objective.generate(batches[0]["img"], pids, stage)
    assert disc.code_head.in_features == gen.mu.flatten(1).size(1)  # F * p_U
    disc.requires_grad_(False)  # as in the step's E_U/G update
    model.zero_grad(set_to_none=True)
    (0.5 * loss_module.confusion_loss(disc.code_head(gen.mu.flatten(1)))).backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_u.parameters())
    assert all(p.grad is None for p in disc.parameters())
    disc.requires_grad_(True)  # as in the step's D update, on the detached codes
    model.zero_grad(set_to_none=True)
    loss_module.class_loss(disc(batches[0]["img"], gen.mu.flatten(1).detach())[2], pids).backward()
    assert all(p.grad is not None for p in disc.code_head.parameters())
    assert all(p.grad is None for p in model.encoder_u.parameters())


@pytest.mark.parametrize("stage", [2, 3])
def test_small_images_and_narrow_g_and_d_train(make_engine, batches, stage):
    """64x32 (G upsamples five times), G and D at an eighth of their width, E_U with one shared branch: a step of
    each GAN stage."""
    engine = make_engine("DATA.HEIGHT", "64", "DATA.WIDTH", "32", "MODEL.G_WIDTH", "64", "MODEL.D_WIDTH", "32",
                         "MODEL.EU_BRANCHES", "shared")
    assert len(engine.model.encoder_u.branches.branches) == 1
    prepare(engine, stage)
    shapes = []
    engine.model.generator.register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    small = {"img": F.interpolate(batches[0]["img"], size=(64, 32), mode="bilinear"), "pid": batches[0]["pid"]}
    before = snapshot(engine.model.generator)
    summary = floats(engine.forward_backward(small))
    assert shapes == [(3 * 8, 3, 64, 32)]
    assert all(math.isfinite(v) for v in summary.values())
    assert any(changed_tensors(engine.model.generator, before, buffers=False).values())


@pytest.mark.parametrize("stage", [2, 3])
def test_gray_nuisance_input_trains_eu_and_leaves_the_trunk_to_real_images(make_engine, batches, stage):
    """MODEL.EU_INPUT gray: E_U reads the trunk map of the luminance image, computed without gradient and with the
    trunk's running statistics: E_U and G train, and in stage 3 the trunk's BatchNorm statistics move exactly as
    under rgb (only the real images' pass updates them)."""
    stats = {}
    for eu_input in ("rgb", "gray"):
        engine = make_engine("MODEL.EU_INPUT", eu_input)
        prepare(engine, stage)
        before = snapshot(engine.model.encoder_u)
        summary = floats(engine.forward_backward(batches[0]))
        assert all(math.isfinite(v) for v in summary.values())
        assert any(changed_tensors(engine.model.encoder_u, before, buffers=False).values())
        assert engine.model.backbone.training == (stage == 3)  # the luminance pass restored the trunk's mode
        stats[eu_input] = [b.clone() for name, b in engine.model.backbone.named_buffers() if "running" in name]
    assert all(torch.equal(a, b) for a, b in zip(stats["rgb"], stats["gray"]))


@pytest.mark.parametrize("eu_input", ["gray", "rgb"])
def test_eus_frozen_trunk_is_the_trunk_as_the_stage_starts_and_stays_there(make_engine, batches, eu_input):
    """MODEL.EU_TRUNK frozen: E_U's own trunk is copied from the trunk when a stage starts (weights and running
    statistics). Stage 2, whose trunk is frozen, steps exactly as with the shared trunk; in stage 3 the trunk
    moves and the copy does not, and E_U reads the copy's map, without gradient (under rgb E_U no longer trains
    the trunk)."""
    engines = {}
    for trunk in ("shared", "frozen"):
        engine = engines[trunk] = make_engine("MODEL.EU_INPUT", eu_input, "MODEL.EU_TRUNK", trunk)
        with torch.no_grad():
            engine.model.backbone[0].weight.add_(1.0)  # the trunk as stage 1 left it, unlike the copy's
        prepare(engine, 2)
        engine.objective.start_stage(2)  # run_stage's call when the stage starts from the previous one's weights
    assert engines["shared"].model.nuisance_trunk is None
    model = engines["frozen"].model
    copy = model.nuisance_trunk
    start = snapshot(model.backbone)
    assert snapshot(copy).keys() == start.keys()
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in start.items())
    first = []
    for engine in engines.values():
        torch.manual_seed(1)  # the same partners, noise and samples
        first.append(floats(engine.forward_backward(batches[0])))
    assert first[0] == first[1]

    engine = engines["frozen"]
    prepare(engine, 3)
    engine.objective.start_stage(3)
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in start.items())  # stage 2 did not move the trunk
    assert not any(p.requires_grad for p in copy.parameters()) and not copy.training
    for batch in batches[:2]:
        floats(engine.forward_backward(batch))
    assert all(changed_tensors(model.backbone, start, buffers=False).values())
    assert any(changed_tensors(model.backbone, start, buffers=True).values())
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in start.items())  # neither trained nor its BN moved
    imgs = batches[0]["img"]
    image = imgs if eu_input == "rgb" else luminance(imgs)
    read = model.nuisance_input(imgs, model.backbone(imgs))  # train mode, the trunk's map with gradient
    assert read.grad_fn is None
    with torch.no_grad():
        assert torch.equal(read, copy.eval()(image))
        assert not torch.allclose(read, model.backbone.eval()(image))


def test_eus_separate_trunk_starts_as_the_trunk_was_built_and_learns_from_gs_losses_alone(make_engine, batches):
    """MODEL.EU_TRUNK separate: E_U's own trunk (encoder_u.stem) is the trunk as built, before stage 1 trained it;
    E_U reads the grey image through it with gradient, so a stage-2 step trains it while the trunk stays frozen,
    and in stage 3 it never reads E_R's trunk map."""
    engine = make_engine("MODEL.EU_INPUT", "gray", "MODEL.EU_TRUNK", "separate")
    model = engine.model
    stem = model.encoder_u.stem
    built = snapshot(model.backbone)
    assert stem is not model.backbone and snapshot(stem).keys() == built.keys()
    assert all(torch.equal(stem.state_dict()[k], v) for k, v in built.items())
    with torch.no_grad():
        model.backbone[0].weight.add_(1.0)  # the trunk as stage 1 left it
    trained = snapshot(model.backbone)
    prepare(engine, 2)
    engine.objective.start_stage(2)
    imgs = batches[0]["img"]
    read = model.nuisance_input(imgs, model.backbone(imgs))
    assert torch.equal(read, luminance(imgs))  # the image itself: the stem runs inside E_U
    floats(engine.forward_backward(batches[0]))
    assert all(changed_tensors(stem, built, buffers=False).values())
    assert not any(changed_tensors(model.backbone, trained, buffers=False).values())
    prepare(engine, 3)
    engine.objective.start_stage(3)
    before = snapshot(stem)
    floats(engine.forward_backward(batches[1]))
    assert any(changed_tensors(stem, before, buffers=False).values())
    assert not torch.equal(stem[0].weight, model.backbone[0].weight)


@pytest.mark.parametrize("start_epoch, copies", [(0, 1), (1, 0)])
def test_stage_start_is_called_only_when_a_stage_starts_afresh(make_engine, monkeypatch, start_epoch, copies):
    """A resumed stage keeps E_U's trunk and the identity teacher from its checkpoint: run_stage asks the objective
    to set a stage up only when it starts at epoch 0."""
    engine = make_engine("MODEL.EU_TRUNK", "frozen", "LOSS.LAMBDA_R_FAKE", "2.0", "LOSS.R_FAKE_JUDGE", "teacher")
    calls = []
    monkeypatch.setattr(engine.model, "freeze_nuisance_trunk", lambda: calls.append(engine.stage))
    monkeypatch.setattr(engine.model, "freeze_identity_teacher", lambda: calls.append(-engine.stage))
    monkeypatch.setattr(ckpt, "resume_or_initialize", lambda engine, stage: start_epoch)
    monkeypatch.setattr(engine, "train_epoch", lambda: None)
    monkeypatch.setattr(engine, "evaluate_targets", lambda: None)
    engine.plan.epochs[3] = 2
    engine.run_stage(3)
    assert calls == [3, -3] * copies


def test_kl_free_bits_reach_l_u(make_engine, batches):
    """LOSS.KL_FREE_BITS above any part's KL: L_U is λ_U x B x the threshold (official reduction)."""
    engine = make_engine("LOSS.KL_FREE_BITS", "1000", "LOSS.LAMBDA_U", "[0.5, 0.5]")
    prepare(engine, 2)
    summary = floats(engine.forward_backward(batches[0]))
    assert summary["L_U"] == pytest.approx(0.5 * len(batches[0]["pid"]) * 1000)


def test_gan_warmup_ramps_g_side_adversarial_and_class_terms(make_engine, batches):
    engine = make_engine("LOSS.GAN_WARMUP", "4")
    weights = []
    for stage, epoch in [(2, 0), (2, 1), (2, 3), (2, 4), (2, 7), (3, 0)]:
        engine.objective.before_epoch(stage, epoch)
        weights.append(engine.objective.gan_weight)
    assert weights == [0.0, 0.25, 0.75, 1.0, 1.0, 1.0]

    prepare(engine, 2)
    d_batches = []
    engine.model.discriminator.register_forward_pre_hook(lambda m, args: d_batches.append(args[0].size(0)))
    engine.objective.gan_weight = 0.0
    B = batches[0]["img"].size(0)
    summary = floats(engine.forward_backward(batches[0]))
    assert "L_D" not in summary and "L_C" not in summary  # G is not driven by D yet ...
    assert summary["D_dom"] > 0 and summary["D_cls"] > 0 and d_batches == [B + 3 * B]  # ... while D learns
    engine.objective.gan_weight = 0.5
    half = floats(engine.forward_backward(batches[1]))
    engine.objective.gan_weight = 1.0
    full = floats(engine.forward_backward(batches[1]))
    assert d_batches[1:] == [4 * B, 3 * B, 4 * B, 3 * B]
    # the same batch and nearly the same weights: the weighted term is about half the full one
    assert half["L_D"] == pytest.approx(0.5 * full["L_D"], rel=0.2)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_mixed_precision_on_cpu(make_engine, batches, stage):
    """TRAIN.AMP runs the same step under bfloat16 autocast on CPU, without loss scaling."""
    engine = make_engine("TRAIN.AMP", "True")
    prepare(engine, stage)
    dtypes = []
    module = engine.model.generator if stage > 1 else engine.model.encoder_r
    module.register_forward_hook(lambda m, args, out: dtypes.append((out[0] if isinstance(out, tuple) else out).dtype))
    before = {n: snapshot(getattr(engine.model, n)) for n in TRAINED[stage]}
    summary = floats(engine.forward_backward(batches[0]))
    assert dtypes == [torch.bfloat16] and not engine.optimizers["model"].scaler.is_enabled()  # no scaling on CPU
    assert all(math.isfinite(v) for v in summary.values()), {k: v for k, v in summary.items() if not math.isfinite(v)}
    for name in TRAINED[stage]:
        assert any(changed_tensors(getattr(engine.model, name), before[name], buffers=False).values()), name
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # master weights stay float32
    assert not any(k.startswith("grad_") for k in summary)  # gradient-norm diagnostics are off under AMP


@pytest.mark.parametrize("choice, device, gpu_has_bf16, expected", [
    ("auto", "cpu", False, torch.bfloat16), ("auto", "cuda", True, torch.bfloat16),
    ("auto", "cuda", False, torch.float16),
    ("float16", "cpu", True, torch.float16), ("bfloat16", "cuda", False, torch.bfloat16)])
def test_amp_dtype_and_loss_scaling(make_cfg, monkeypatch, choice, device, gpu_has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu_has_bf16)
    precision = Precision.from_config(make_cfg("TRAIN.AMP", "True", "TRAIN.AMP_DTYPE", choice), torch.device(device))
    assert precision.dtype == expected
    if device == "cpu":  # (a CUDA scaler disables itself where there is no GPU)
        assert precision.grad_scaler().is_enabled() == (expected == torch.float16)


def test_channels_last(make_engine, batches):
    engine = make_engine("TRAIN.CHANNELS_LAST", "True")
    assert engine.model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    prepare(engine, 2)
    seen = []
    engine.model.backbone.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    assert all(math.isfinite(v) for v in floats(engine.forward_backward(batches[0])).values()) and seen == [True]


# ---------------------------------------------------------------- 3. short runs learn

def mean(values):
    return sum(values) / len(values)


def test_stage2_reconstruction_decreases(make_engine, batches):
    engine = make_engine(seed=1)
    prepare(engine, 2)
    torch.manual_seed(1)
    log = [floats(engine.forward_backward(batches[i % 2])) for i in range(24)]
    for key in ("L1_auto", "L1_shuffled", "L1_part_shuffled"):
        first, last = mean([s[key] for s in log[:4]]), mean([s[key] for s in log[-4:]])
        assert last < 0.8 * first, (key, [round(s[key], 3) for s in log])


def test_stage3_total_loss_decreases(make_engine, batches):
    engine = make_engine(seed=2)
    prepare(engine, 3)
    torch.manual_seed(2)
    log = [floats(engine.forward_backward(batches[i % 2])) for i in range(10)]
    total = [sum(v for k, v in s.items() if k.startswith("L_")) for s in log]  # Eq. 8, encoder/G side
    # from scratch, 20 x L_R dominates (~250) and falls fastest; measured last/first ~0.15-0.2
    assert mean(total[-3:]) < 0.5 * mean(total[:3]), [round(t, 2) for t in total]


# ---------------------------------------------------------------- 6. non-finite losses

def nan_loss(monkeypatch, name):
    """Make ``losses.isgan.<name>`` return NaN (its graph kept, as a loss that overflowed would)."""
    real = getattr(loss_module, name)
    monkeypatch.setattr(loss_module, name, lambda *args, **kwargs: real(*args, **kwargs) * float("nan"))


@pytest.mark.parametrize("stage, loss_fn, term", [
    (1, "identity_loss", "L_R"), (2, "reconstruction_loss", "L_S"), (3, "discriminator_domain_loss", "D_dom")])
def test_nonfinite_error_names_where(make_engine, batches, monkeypatch, stage, loss_fn, term):
    engine = make_engine()
    prepare(engine, stage, epoch=2, batch_idx=4)
    nan_loss(monkeypatch, loss_fn)
    engine.forward_backward(batches[0])  # the step does not wait for the device: the check is at logging points
    engine.batch_idx += 3
    with pytest.raises(ISGANError, match=rf"non-finite loss {term} = nan at stage {stage}, epoch 3, iteration 5; "
                                         rf".*TRAIN\.STAGE{stage}\.LR.*TRAIN\.NONFINITE skip"):
        engine.check_nonfinite()


@pytest.mark.parametrize("stage, loss_fn, frozen", [
    (1, "identity_loss", MODULES),
    (2, "reconstruction_loss", MODULES[:4]),  # the encoder/G step is skipped; D's finite step runs
    (3, "discriminator_domain_loss", ("discriminator",)),  # the D step is skipped; the encoder/G step runs
])
def test_nonfinite_skip_leaves_parameters(make_engine, batches, monkeypatch, stage, loss_fn, frozen):
    engine = make_engine("TRAIN.NONFINITE", "skip")
    prepare(engine, stage)
    nan_loss(monkeypatch, loss_fn)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    engine.forward_backward(batches[0])
    engine.check_nonfinite()
    assert engine.skipped_steps == 1
    for n, p in engine.model.named_parameters():
        module = n.split(".", 1)[0]
        if module in frozen:
            assert torch.equal(p, before[n]), n
    trained = TRAINED[stage] - set(frozen)
    assert all(any(not torch.equal(p, before[n]) for n, p in engine.model.named_parameters()
                   if n.startswith(m + ".")) for m in trained)
    engine.forward_backward(batches[1])  # counts every skip
    engine.check_nonfinite()
    assert engine.skipped_steps == 2


# ---------------------------------------------------------------- 6b. a step that does not wait for the device

class HostSyncs(TorchFunctionMode):
    """Records the calls that make the host wait for the device, or copy host data to it: ``.item()``,
    ``.tolist()``, ``.cpu()``, ``bool()`` of a tensor, ``nonzero``, boolean-mask indexing, new tensors from
    Python data. On the CPU none of them waits, so the test sees them by name."""

    CALLS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
             torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
             torch.masked_select, torch.Tensor.masked_select, torch.tensor, torch.Tensor.new_tensor}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        indexing = func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__)
        index = args[1] if indexing else None
        if func in self.CALLS or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                     for i in (index if isinstance(index, tuple) else (index,))):
            self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("stage, overrides", [
    (1, []), (2, []), (3, []),
    (2, ["TRAIN.D_OPTIMIZER", "adam", "TRAIN.GRAD_NORM_FREQ", "1", "LOSS.CLASS_ON_AUTO", "False",
         "LOSS.LAMBDA_X", "1.0"]),
    (3, ["LOSS.LAMBDA_S", "0.0"]),
])
def test_a_step_never_waits_for_the_device(make_engine, batches, monkeypatch, stage, overrides):
    engine = make_engine("TRAIN.NONFINITE", "skip", *overrides)
    prepare(engine, stage)
    engine.forward_backward(batches[0])  # constants made once (per device) are made here
    nan_loss(monkeypatch, "identity_loss" if stage != 2 else "reconstruction_loss")  # the skip stays on the device
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    with HostSyncs() as syncs:
        summary = engine.forward_backward(batches[1])
    assert syncs.seen == []
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in summary.values())
    engine.check_nonfinite()  # the logging point reads it
    assert engine.skipped_steps == 1
    changed = {n.split(".", 1)[0] for n, p in engine.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == (set() if stage == 1 else {"discriminator"})  # D's finite step was taken, the other not


# ---------------------------------------------------------------- full runs through the CLI

@pytest.fixture(scope="module")
def run_args(data_root):
    """``run_args(out, *overrides)``: train_main argv for a tiny run (small model, stage 2 over two epochs)."""
    def make(out, *overrides):
        return (["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--debug"] + TINY + SMALL
                + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(out), "TRAIN.STAGE2.EPOCHS", "2"] + list(overrides))
    return make


@pytest.fixture(scope="module")
def full_run(run_args, module_dir):
    """One uninterrupted three-stage run; returns (OUTPUT_DIR, results)."""
    out = module_dir / "full"
    return out, train_main(run_args(out))


# ---------------------------------------------------------------- 7. end to end

def test_end_to_end_outputs(full_run):
    out, results = full_run
    assert sorted(results) == [1, 2, 3]
    for stage, per_target in results.items():
        assert list(per_target) == ["synthperson"]
        for m in METRICS:
            assert 0.0 <= per_target["synthperson"][m] <= 1.0, (stage, m)
    # E_R and the trunk are frozen in stage 2: the same descriptor, the same evaluation
    assert metrics(results)[2] == metrics(results)[1]
    with open(out / "results.json") as f:
        assert json.load(f) == {f"stage{s}": r for s, r in results.items()}
    assert load_config(str(out / "config.yaml")).TRAIN.STAGE2.EPOCHS == 2
    for stage, epochs in ((1, 1), (2, 2), (3, 1)):
        folder = out / f"stage{stage}"
        assert (folder / "latest.pth.tar").is_file() and (folder / f"model.pth.tar-{epochs}").is_file()
        assert glob.glob(str(folder / "events.out.tfevents.*")), stage
        state = storage.load_checkpoint(str(folder / "latest.pth.tar"))
        assert (state["stage"], state["epoch"], state["num_classes"]) == (stage, epochs, 8)
        assert state["results"] == results[stage]
        assert state["encoder_spec"]["parts"] == [2] and "optimizers" not in state  # finished: never trains again
        kept = storage.load_checkpoint(str(folder / f"model.pth.tar-{epochs}"))  # weights only
        assert "optimizers" not in kept and "rng" not in kept and kept["results"] == results[stage]
        assert all(torch.equal(kept["state_dict"][k], v) for k, v in state["state_dict"].items())
        # ... and the same file as latest: the folder stores the stage's weights once
        assert os.path.samefile(folder / "latest.pth.tar", folder / f"model.pth.tar-{epochs}")
        checkpoints = {(s.st_dev, s.st_ino): s.st_size for s in map(os.stat, glob.glob(str(folder / "*.pth.tar*")))}
        assert list(checkpoints.values()) == [os.path.getsize(folder / "latest.pth.tar")]
        encoder = storage.load_checkpoint(str(folder / "encoder.safetensors"))["state_dict"]  # the descriptor's tensors
        assert set(encoder) == {k for k in state["state_dict"] if k.startswith(
            ("backbone.", "encoder_r.branches.", "encoder_r.reductions."))}
        samples = sorted(os.listdir(folder / "samples")) if stage > 1 else []
        assert samples == ([] if stage == 1 else [f"epoch{epochs:03d}.png"])
        for name in samples:
            assert (folder / "samples" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "stage1" / "samples").exists()


# ---------------------------------------------------------------- 4. kill and resume

def test_interrupted_run_resumes_exactly(full_run, run_args, tmp_path):
    full_out, full_results = full_run
    out = tmp_path / "resumed"
    args = run_args(out, "TRAIN.STAGES", "[1, 2]")  # stage 3 resumes by the same code; not hashed
    # stage 1 as the same config wrote it (hard links, to save its run); the run goes on from its end
    (out / "stage1").mkdir(parents=True)
    for name in ("latest.pth.tar", "model.pth.tar-1"):
        os.link(full_out / "stage1" / name, out / "stage1" / name)
    # started for 3 stage-2 epochs, resumed for the reference's 2: the epoch count of an unfinished stage may
    # change (not below the epochs it has trained), and enters neither its checkpoint nor its steps
    with interrupted_at(stage=2, epoch=1, step=2), pytest.raises(KeyboardInterrupt):
        train_main(args + ["TRAIN.STAGE2.EPOCHS", "3"])
    interrupted = storage.load_checkpoint(str(out / "stage2" / "latest.pth.tar"))
    assert interrupted["epoch"] == 1 and set(interrupted["optimizers"]) == {"model", "discriminator"}

    results = train_main(args)

    assert metrics(results) == {s: metrics(full_results)[s] for s in (1, 2)}
    resumed = storage.load_checkpoint(str(out / "stage2" / "latest.pth.tar"))
    reference = storage.load_checkpoint(str(full_out / "stage2" / "latest.pth.tar"))
    assert resumed["epoch"] == reference["epoch"] == 2
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    different = [k for k, v in resumed["state_dict"].items() if not torch.equal(v, reference["state_dict"][k])]
    assert different == [], different[:5]  # so Adam's (E_U, G) and SGD's (D) moments were restored too
    assert os.path.samefile(out / "stage2" / "latest.pth.tar", out / "stage2" / "model.pth.tar-2")


def test_finished_run_does_no_work(full_run, run_args, monkeypatch):
    out, results = full_run
    mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "stage*" / "*.pth.tar*"))}

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run must not train, evaluate or save")

    monkeypatch.setattr(StagedEngine, "forward_backward", forbidden)
    monkeypatch.setattr(StagedEngine, "_evaluate", forbidden)
    monkeypatch.setattr(storage, "save_checkpoint", forbidden)
    assert train_main(run_args(out)) == results  # from the checkpoints
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes


def test_raising_the_last_stages_epochs_trains_the_extra_ones(full_run, run_args, tmp_path, monkeypatch, capsys):
    full_out, full_results = full_run
    out = tmp_path / "longer"
    link_run(full_out, out)
    steps = []  # (stage, epoch) of every training step
    real_step = StagedEngine.forward_backward
    monkeypatch.setattr(StagedEngine, "forward_backward",
                        lambda engine, data: steps.append((engine.stage, engine.epoch)) or real_step(engine, data))
    args = run_args(out, "TRAIN.STAGE3.EPOCHS", "2")
    capsys.readouterr()
    results = train_main(args)
    printed = capsys.readouterr().out

    latest = out / "stage3" / "latest.pth.tar"
    assert set(steps) == {(3, 1)}  # the second epoch of stage 3 alone
    assert "=> Stage 1: finished (1 epoch), skipped" in printed
    assert "=> Stage 2: finished (2 epochs), skipped" in printed
    assert f"=> resumed stage 3 from the weights in {latest} (epoch 1)" in printed
    assert "=> Stage 3: epoch 2 of 2," in printed
    assert {s: metrics(results)[s] for s in (1, 2)} == {s: metrics(full_results)[s] for s in (1, 2)}
    state = storage.load_checkpoint(str(latest))
    assert state["epoch"] == 2 and "optimizers" not in state and state["results"] == results[3]
    before = storage.load_checkpoint(str(full_out / "stage3" / "latest.pth.tar"))["state_dict"]
    assert any(not torch.equal(v, before[k]) for k, v in state["state_dict"].items())
    assert os.path.samefile(out / "stage3" / "model.pth.tar-2", latest)  # the stage's weights once
    # model.pth.tar-1, the end of the first run and now a mid-stage snapshot, is the file it was (a hard link of
    # the first run's latest here: never written into)
    assert os.path.samefile(out / "stage3" / "model.pth.tar-1", full_out / "stage3" / "latest.pth.tar")
    for stage in (1, 2):  # not written again
        assert os.path.samefile(out / f"stage{stage}" / "latest.pth.tar", full_out / f"stage{stage}" / "latest.pth.tar")
    # the run's config.yaml now says 2, and still describes the earlier stages' checkpoints (tools/test.py)
    assert load_config(str(out / "config.yaml")).TRAIN.STAGE3.EPOCHS == 2
    assert ckpt.checkpoint_config(str(out / "stage1" / "latest.pth.tar"))[0].TRAIN.STAGE3.EPOCHS == 2

    steps.clear()  # the same command again: nothing left to train
    assert metrics(train_main(args)) == metrics(results) and steps == []
    assert "=> Stage 3: finished (2 epochs), skipped" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, expected", [
    (["TRAIN.STAGE3.LR", "0.001"], "{out}/stage1/latest.pth.tar was trained with another config (TRAIN.STAGE3.LR: "
                                   "0.0001 -> 0.001); set these keys back to resume, or train in a new OUTPUT_DIR"),
    (["TRAIN.STAGE2.EPOCHS", "1"], "TRAIN.STAGE2.EPOCHS 1: stage 2 has already trained 2 epochs "
                                   "({out}/stage2/latest.pth.tar); set TRAIN.STAGE2.EPOCHS 2 or more"),
    (["TRAIN.STAGE1.EPOCHS", "2"], "TRAIN.STAGE1.EPOCHS 2: stage 1 finished after 1 epoch and a later stage has "
                                   "started from it ({out}/stage2/latest.pth.tar); set TRAIN.STAGE1.EPOCHS 1, or "
                                   "train stage 1 longer in a new OUTPUT_DIR"),
])
def test_resume_refuses_what_the_checkpoints_cannot_continue(full_run, run_args, tmp_path, overrides, expected):
    out = tmp_path / "run"
    link_run(full_run[0], out)
    config = (out / "config.yaml").read_text()
    with pytest.raises(ISGANError) as info:
        train_main(run_args(out, *overrides))
    assert str(info.value).startswith(expected.format(out=out)) and "\n" not in str(info.value)
    assert (out / "config.yaml").read_text() == config  # refused before it is replaced


def test_checkpoint_frequencies(make_engine, monkeypatch):
    engine = make_engine("TRAIN.RESUME_FREQ", "2", "TRAIN.CHECKPOINT_FREQ", "4", "TRAIN.STAGE1.EPOCHS", "7")
    engine.enter_stage(1)
    saved, kept = [], []
    monkeypatch.setattr(ckpt, "write_training_state", lambda out, state: saved.append(state["epoch"]))
    monkeypatch.setattr(ckpt, "write_weights", lambda out, state: kept.append(state["epoch"]))
    hook = next(h for h in engine.hooks if isinstance(h, Checkpointer))
    for engine.epoch in range(7):
        hook.after_epoch()
    hook.writer.wait()
    assert saved == [2, 4, 6, 7] and kept == [4]
    hook.after_stage()  # after evaluation: the last epoch, with its results, in latest and (a hard link of it,
    assert saved == [2, 4, 6, 7, 7] and kept == [4]  # tests/test_checkpoint.py) model.pth.tar-7


def test_checkpoints_are_written_off_the_training_thread_from_a_snapshot(make_engine, monkeypatch):
    engine = make_engine("TRAIN.STAGE1.EPOCHS", "3")
    engine.enter_stage(1)
    hook = next(h for h in engine.hooks if isinstance(h, Checkpointer))
    real, started, release, writers = ckpt.write_training_state, threading.Event(), threading.Event(), []

    def held(out, state):
        writers.append(threading.current_thread().name)
        started.set()
        release.wait()
        real(out, state)

    monkeypatch.setattr(ckpt, "write_training_state", held)
    engine.epoch = 0
    hook.after_epoch()
    assert started.wait(10)  # the write has begun, and this thread goes on training
    expected = {k: v.clone() for k, v in engine.model.state_dict().items()}
    with torch.no_grad():
        for p in engine.model.parameters():
            p.add_(1.0)
    release.set()
    hook.writer.wait()
    assert writers == ["checkpoint-writer"]
    state = storage.load_checkpoint(engine.plan.layout.latest(1))
    assert state["epoch"] == 1 and "optimizers" in state
    assert all(torch.equal(state["state_dict"][k], v) for k, v in expected.items())  # the epoch's end, not later

    def full(out, state):
        raise ISGANError("could not write latest.pth.tar: no space left")

    monkeypatch.setattr(ckpt, "write_training_state", full)
    engine.epoch = 1
    hook.after_epoch()
    with pytest.raises(ISGANError, match="no space left"):  # at the next checkpoint (or the stage's end)
        hook.writer.wait()


def test_results_json_keeps_earlier_invocations_and_lists_this_ones_skipped_images(make_engine, tmp_path):
    engine = make_engine(seed=0)
    engine.skipped_images = {"synthperson/train": ["a.jpg", "b.jpg"], "synthperson/query": ["c.jpg"]}
    hook = next(h for h in engine.hooks if isinstance(h, ResultsWriter))
    engine.results = {1: {"synthperson": {"mAP": 0.5}}}
    hook.after_train()
    with open(engine.plan.layout.results) as f:
        assert json.load(f)["skipped_images"] == {"count": 3, "images": engine.skipped_images}
    engine.skipped_images = {}  # e.g. a later --stages 2 run, the images fixed meanwhile
    engine.results = {2: {"synthperson": {"mAP": 0.6}}}
    hook.after_train()
    with open(engine.plan.layout.results) as f:
        assert json.load(f) == {"stage1": {"synthperson": {"mAP": 0.5}}, "stage2": {"synthperson": {"mAP": 0.6}}}


# ---------------------------------------------------------------- 7. stages 2-3 without stage 1

def test_later_stages_need_stage1_weights(full_run, data_root, tmp_path, capsys):
    full_out, full_results = full_run
    out = tmp_path / "stages23"
    base = TINY + SMALL + ["DATA.ROOT", data_root, "OUTPUT_DIR", str(out), "TRAIN.STAGE3.EPOCHS", "0"]
    config = write_config(tmp_path / "stages23.yaml", base)
    missing = str(out / "stage1" / "latest.pth.tar")
    with pytest.raises(ISGANError, match=rf"{re.escape(missing)} does not exist.*TRAIN\.INIT_WEIGHTS"):
        train_main(["--config-file", config, "--debug", "--stages", "2", "3"])
    with pytest.raises(SystemExit) as exit_info:  # without --debug: one line on stderr, exit status 2
        train_main(["--config-file", config, "--stages", "2", "3"])
    assert exit_info.value.code == 2 and missing in capsys.readouterr().err

    init = str(full_out / "stage1" / "model.pth.tar-1")
    config = write_config(tmp_path / "init.yaml", base + ["TRAIN.INIT_WEIGHTS", init])
    results = train_main(["--config-file", config, "--debug", "--stages", "2", "3"])
    assert sorted(results) == [2, 3]
    assert not (out / "stage1").exists()
    assert storage.load_checkpoint(str(out / "stage2" / "latest.pth.tar"))["epoch"] == 1
    # E_R comes from the stage-1 checkpoint and stays frozen in stage 2 (stage 3 has 0 epochs here)
    assert metrics(results)[2] == metrics(results)[3] == metrics(full_results)[1]


@pytest.mark.parametrize("stage", [2, 3])
def test_diagnostics_leave_the_step_unchanged(make_engine, batches, stage):
    runs = {}
    for freq in (0, 1):
        engine = make_engine("TRAIN.GRAD_NORM_FREQ", str(freq))
        prepare(engine, stage)
        runs[freq] = floats(engine.forward_backward(batches[0])), snapshot(engine.model)
    (plain, before), (diagnosed, after) = runs[0], runs[1]
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    assert {"gan/D_real", "gan/D_fake", "gan/DC_acc_real", "gan/DC_acc_fake", "eu/kl", "eu/active"} <= set(plain)
    assert not any(k.startswith("grad_") for k in plain)
    grads = {k for k in diagnosed if k.startswith("grad_")}
    assert {"grad_G/L_S", "grad_G/L_D", "grad_E_U/L_U", "grad_E_U/L_S"} <= grads
    assert any(k.startswith("grad_E_R/") for k in grads) == (stage == 3)
    assert diagnosed["grad_G/L_U"] == 0 and diagnosed["grad_E_U/L_U"] > 0  # the KL reaches E_U only
