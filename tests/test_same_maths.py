"""The step computes Eq. 1-8, whatever was done to make it fast (issue 26, part 4).

One step of each stage, in float64 on the CPU, against the paper's objective written out plainly below: each fake
set on its own (no row slicing), Eq. 6 and 7 as sums over the sets, the KL as nats per image, every activation
out of place, D's update from D's terms only and G's from G's. The terms and every parameter's gradient must agree
to float64 rounding (1e-9 of their scale); a wrong weight, a set counted twice or left out, a gradient reaching a
frozen module or an in-place activation that changed a gradient differs by far more.

The reference computes each term from torch.nn.functional; the step, with losses/isgan.py. What is checked
here is how a step assembles and differentiates them.
"""
import copy
import dataclasses
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from isgan_torchreid.benchmarks.common import NoData
from isgan_torchreid.config import load_config
from isgan_torchreid.data.build import IMAGENET_MEAN, IMAGENET_STD
from isgan_torchreid.engine.objective import LossSettings
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.losses.shuffle import part_shuffle_mask, sample_partners, sample_strangers
from isgan_torchreid.models import build_model

from conftest import CONFIGS, DRAWING_MODULES, TINY, FixedDraws

P, K = 4, 2  # identities x images: a batch of 8
SMALL = ["MODEL.PARTS", "[2]", "DATA.HEIGHT", "64", "DATA.WIDTH", "32", "SAMPLER.P", str(P), "SAMPLER.K", str(K)]
# D's smoothed targets are drawn for all fakes at once, the reference draws per set: targets 1 and 0 here
PLAIN_TARGETS = ["LOSS.D_LABEL_SMOOTH", "False"]


class Recorder:
    """Stands in for the engine's optimiser updates: records each update's terms and the gradients of their sum."""

    def __init__(self, model):
        self.model = model
        self.terms, self.grads = {}, {}

    def __getitem__(self, name):
        def update(terms):
            sum(terms.values()).backward()
            self.terms[name] = {k: v.detach().clone() for k, v in terms.items()}
            self.grads[name] = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
            self.model.zero_grad(set_to_none=True)
        return update


def _config(options):
    return load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + SMALL + PLAIN_TARGETS + options)


def _engine(options, stage):
    cfg = _config(options)
    torch.manual_seed(0)
    model = build_model(cfg, P).double()
    engine = StagedEngine(cfg, NoData(P), model, torch.device("cpu"), hooks=[])
    engine.enter_stage(stage)  # the stage's freezing policy
    return engine


def _out_of_place(model):
    """A copy of ``model`` whose activations (and dropout) all compute out of place."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def _grads(total, params):
    """name -> gradient of ``total`` for the named parameters it reaches."""
    names = list(params)
    grads = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}


def _unit(imgs):
    mean = imgs.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = imgs.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return imgs * std + mean, mean, std


def _reference(model, imgs, pids, stage, s: LossSettings, gan_weight):
    """Eq. 1-8 for one step: ({"discriminator": D's terms, "model": the encoders' and G's}, the same for their
    gradients)."""
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if stage == 1:  # Eq. 1: the mean of the K cross-entropies
        logits = model(imgs)
        terms = {"L_R": sum(F.cross_entropy(z, pids) for z in logits) / len(logits)}
        return {"model": terms}, {"model": _grads(sum(terms.values()), trained)}

    disc = model.discriminator
    d_params = {n: p for n, p in trained.items() if n.startswith("discriminator.")}
    g_params = {n: p for n, p in trained.items() if n not in d_params}
    unit, mean, std = _unit(imgs)
    target = unit * 2 - 1  # G draws [-1, 1] RGB
    with torch.set_grad_enabled(stage == 3):  # stage 2: E_R and the trunk give fixed inputs
        trunk = model.backbone(imgs)
        id_feat, logits = model.encoder_r(trunk)
    if model.eu_input == "gray":  # the trunk of the luminance, on running statistics, without gradient
        gray = (unit * unit.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        was_training = model.backbone.training
        with torch.no_grad():
            eu_input = model.backbone.eval()((gray - mean) / std)
        model.backbone.train(was_training)
    else:
        eu_input = trunk if stage == 3 else trunk.detach()
    nid, mu, logvar = model.encoder_u(eu_input)

    # the fake sets [Eq. 3, 4] (+ the cross-identity set), each (identity code, label)
    partner = sample_partners(pids)
    mask = part_shuffle_mask(len(pids), model.encoder_r.branches.num_features,
                             model.encoder_r.branches.local_indices)
    parts = id_feat.view(len(pids), mask.size(1), -1)
    shuffled_parts = torch.where(mask[:, :, None], parts[partner], parts).view_as(id_feat)
    sets = {"auto": (id_feat, pids), "shuffled": (id_feat[partner], pids), "part_shuffled": (shuffled_parts, pids)}
    if s.lambda_x > 0:
        stranger = sample_strangers(pids)
        sets["crossed"] = (id_feat[stranger], pids[stranger])
    names = list(sets)
    fakes = model.generator(torch.cat([c for c, _ in sets.values()]), nid.repeat(len(sets), 1),
                            torch.cat([y for _, y in sets.values()]))  # one BatchNorm batch, as trained
    fake = dict(zip(names, fakes.chunk(len(sets))))
    label = {name: y for name, (_, y) in sets.items()}

    # D [Eq. 6, 7]: real against each set of detached fakes, in one pass
    patch, cls = disc(torch.cat([target, fakes.detach()]))
    patch, cls = dict(zip(["real", *names], patch.chunk(len(sets) + 1))), dict(zip(["real", *names],
                                                                                   cls.chunk(len(sets) + 1)))
    d_counted = [n for n in names if n != "auto" or s.class_on_auto]
    d_terms = {
        "D_dom": s.d_lambda_d * (F.binary_cross_entropy_with_logits(patch["real"], torch.ones_like(patch["real"]))
                                 + sum(F.binary_cross_entropy_with_logits(patch[n], torch.zeros_like(patch[n]))
                                       for n in names)),
        "D_cls": s.d_lambda_c * (F.cross_entropy(cls["real"], pids)
                                 + sum(F.cross_entropy(cls[n], label[n]) for n in d_counted)),
    }

    # the encoders and G [Eq. 3-8] against D as it stands
    patch, cls = disc(fakes)
    patch, cls = dict(zip(names, patch.chunk(len(sets)))), dict(zip(names, cls.chunk(len(sets))))
    kl_per_image = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(2).mean(1)  # (B,) nats, mean over parts
    terms = {
        "L_S": s.lambda_s * ((fake["auto"] - target).abs().mean() + (fake["shuffled"] - target).abs().mean()),
        "L_PS": s.lambda_ps * (fake["part_shuffled"] - target).abs().mean(),
        "L_U": s.lambda_u[stage - 2] * kl_per_image.sum(),  # 'official': summed over the batch
        "L_D": gan_weight * s.lambda_d * sum(F.binary_cross_entropy_with_logits(patch[n], torch.ones_like(patch[n]))
                                             for n in names),
        "L_C": gan_weight * s.lambda_c * sum(F.cross_entropy(cls[n], label[n]) for n in names
                                             if n != "crossed" and (n != "auto" or s.class_on_auto)),
    }
    if s.lambda_x > 0:
        terms["L_X"] = gan_weight * s.lambda_x * F.cross_entropy(cls["crossed"], label["crossed"])
    if stage == 3:
        terms["L_R"] = s.lambda_r * sum(F.cross_entropy(z, pids) for z in logits) / len(logits)
    grads = {"discriminator": _grads(sum(d_terms.values()), d_params),
             "model": _grads(sum(terms.values()), g_params)}
    return {"discriminator": d_terms, "model": terms}, grads


def _close(got, expected, what, floor=0.0):
    """Equal to float64 rounding: 1e-9 of the tensor's largest element, at least ``floor`` (for gradients that
    are zero but for rounding, e.g. a bias before a normalisation)."""
    atol = max(1e-9 * expected.abs().max().item(), floor, 1e-300)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


def _step_and_reference(options, stage, monkeypatch, step_losses=None):
    """One step of ``stage`` (with ``step_losses`` in place of the config's, if given) and the reference's terms
    and gradients for the config's losses: (recorder, terms, grads, engine)."""
    for module in DRAWING_MODULES:  # the same partners, masks and noise for the step and the reference
        monkeypatch.setattr(sys.modules[module], "torch", FixedDraws(P * K))
    engine = _engine(options, stage)
    objective = engine.objective
    objective.gan_weight = 0.6  # mid-warm-up: G's L_D, L_C and L_X scaled, D's terms not
    losses = objective.losses
    objective.losses = step_losses or losses
    reference_model = _out_of_place(engine.model)
    imgs = torch.randn(P * K, 3, 64, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pids = torch.arange(P).repeat_interleave(K)
    recorder = Recorder(engine.model)
    torch.manual_seed(2)  # G's dropout
    objective.step(imgs, pids, stage, recorder)
    torch.manual_seed(2)
    terms, grads = _reference(reference_model, imgs, pids, stage, losses, objective.gan_weight)
    return recorder, terms, grads, engine


def _check(recorder, terms, grads):
    assert recorder.terms.keys() == terms.keys()
    for update in terms:
        assert recorder.terms[update].keys() == terms[update].keys(), update
        for name, value in terms[update].items():
            _close(recorder.terms[update][name], value, f"{update} {name}")
        assert recorder.grads[update].keys() == grads[update].keys(), update
        floor = 1e-12 * max(g.abs().max().item() for g in grads[update].values())
        for name, grad in grads[update].items():
            _close(recorder.grads[update][name], grad, f"{update} gradient of {name}", floor)


@pytest.mark.parametrize("stage, options", [
    (1, []),
    (2, []),
    (3, []),
    (2, ["MODEL.EU_INPUT", "gray", "LOSS.CLASS_ON_AUTO", "False", "LOSS.LAMBDA_X", "0.3"]),
    (3, ["LOSS.LAMBDA_X", "0.3"]),
], ids=["stage1", "stage2", "stage3", "stage2-gray-no-auto-class-crossed", "stage3-crossed"])
def test_one_step_is_the_papers_objective(stage, options, monkeypatch):
    recorder, terms, grads, engine = _step_and_reference(options, stage, monkeypatch)
    assert any(getattr(m, "inplace", False) for m in engine.model.modules())  # the step does compute in place
    _check(recorder, terms, grads)
    # what each update reaches: D only its own; the encoders and G, the stage's modules
    expected = {1: {"backbone", "encoder_r"}, 2: {"encoder_u", "generator"},
                3: {"backbone", "encoder_r", "encoder_u", "generator"}}[stage]
    assert {n.split(".")[0] for n in recorder.grads["model"]} == expected
    if stage > 1:
        assert {n.split(".")[0] for n in recorder.grads["discriminator"]} == {"discriminator"}


def test_a_step_that_counts_other_fakes_is_caught(monkeypatch):
    """The comparison can fail: a step whose L_C leaves out the auto-encoded fakes (the reference counts them)."""
    losses = LossSettings.from_config(_config([]))
    assert losses.class_on_auto
    step_losses = dataclasses.replace(losses, class_on_auto=False)
    recorder, terms, grads, _ = _step_and_reference([], 2, monkeypatch, step_losses)
    with pytest.raises(AssertionError, match="D_cls|L_C"):
        _check(recorder, terms, grads)
