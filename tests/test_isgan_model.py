"""Tests for the IS-GAN model bundle: reference parameter counts, forward contract, factories."""
import pytest
import torch
import torchvision

from isgan_torchreid.data.build import IMAGENET_MEAN, IMAGENET_STD
from isgan_torchreid.models.images import local_contrast, low_pass, luminance
from isgan_torchreid.models import isgan as isgan_module
from isgan_torchreid.models.isgan import ISGAN, isgan_r18, isgan_r34, isgan_r50

from conftest import floats


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    return isgan_r50(751, pretrained=False, use_gpu=False)  # 384x128


def test_reference_parameter_counts(r50_model):
    # All counts equal the authors' measured ones (reference notes 1.7). Our deliberate changes
    # (adaptive pooling, max/avg choice, no input Tanh, 'same' padding in D, logits instead of
    # Sigmoid, global average pool in D_C) add or remove no parameters.
    m = r50_model
    assert n_params(m.backbone) == 2_957_376
    assert all(n_params(b) == 20_550_656 for b in m.encoder_r.branches.branches)
    assert n_params(m.encoder_r.reductions) == 4_198_400
    assert n_params(m.encoder_r.classifiers) == 1_544_056
    assert n_params(m.backbone) + n_params(m.encoder_r) == 70_351_800
    assert n_params(m.encoder_u) == 63_750_144
    assert n_params(m.generator) == 16_056_192
    assert n_params(m.discriminator) == 4_033_744
    assert n_params(m) == 154_191_880


def test_forward_never_runs_eu_g_d(r50_model):
    def fail(module, args):
        raise AssertionError(f"{type(module).__name__} must not run in ISGAN.forward")

    m = r50_model
    handles = [
        sub.register_forward_pre_hook(fail) for sub in (m.encoder_u, m.generator, m.discriminator)
    ]
    try:
        x = torch.randn(2, 3, 128, 64)
        with torch.no_grad():
            m.eval()
            assert m(x).shape == (2, 2048)
            m.train()
            logits = m(x)
        assert len(logits) == 8 and all(t.shape == (2, 751) for t in logits)
    finally:
        for h in handles:
            h.remove()
        m.eval()


@pytest.mark.parametrize("hw", [(384, 128), (256, 128), (128, 64)])
def test_full_pipeline_shapes(hw):
    torch.manual_seed(0)
    m = isgan_r18(10, pretrained=False, use_gpu=False, height=hw[0], width=hw[1]).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        trunk = m.backbone(x)
        id_feat, logits = m.encoder_r(trunk)
        nid, mu, logvar = m.encoder_u(trunk)
        fake = m.generator(id_feat, nid, torch.tensor([3, 9]))
        patch, cls = m.discriminator(fake)
    assert trunk.shape == (2, 256, hw[0] // 16, hw[1] // 16)
    assert id_feat.shape == (2, 2048) and nid.shape == (2, 512)
    assert mu.shape == logvar.shape == (2, 8, 64)
    assert fake.shape == x.shape
    assert patch.shape == (2, 1, hw[0] // 32, hw[1] // 32) and cls.shape == (2, 10)


def test_config_builds_a_stripe_conditioned_generator():
    from isgan_torchreid.config import load_config
    from isgan_torchreid.models import build_model
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", "DATA.HEIGHT", "64",
                             "DATA.WIDTH", "32", "MODEL.G_WIDTH", "64", "MODEL.G_STRIPES", "both"])
    g = build_model(cfg, 5).generator
    assert g.stripes == [(2, [2, 3]), (3, [5, 6, 7])] and list(g.stripe_proj) == ["identity", "nuisance"]
    assert g.stripe_proj["identity"]["1"].in_features == 256 and g.stripe_proj["nuisance"]["1"].in_features == 64
    assert g(torch.randn(2, 2048), torch.randn(2, 512), torch.tensor([0, 4])).shape == (2, 3, 64, 32)


def test_config_builds_a_layout_grid():
    from isgan_torchreid.config import load_config
    from isgan_torchreid.models import build_model
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", "DATA.HEIGHT", "64",
                             "DATA.WIDTH", "32", "MODEL.G_WIDTH", "64", "MODEL.EU_BRANCHES", "shared",
                             "MODEL.EU_GRID", "[4, 2]"])
    m = build_model(cfg, 5).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trunk = m.backbone(x)
        nid, mu, _ = m.encoder_u(trunk)
        fake = m.generator(m.encoder_r(trunk)[0], nid, torch.tensor([0, 4]))
    assert nid.shape == (2, (8 + 8) * 64) and mu.shape == (2, 16, 64) and fake.shape == x.shape
    assert m.generator.grid == (4, 2) and m.generator.nid_part_dim == 64


def test_luminance_keeps_grey_images_and_weights_channels_by_bt601():
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    grey = torch.rand(2, 1, 8, 4).expand(2, 3, 8, 4)  # [0, 1], R = G = B
    torch.testing.assert_close(luminance((grey - mean) / std), (grey - mean) / std)
    red = torch.zeros(1, 3, 8, 4)
    red[:, 0] = 1
    torch.testing.assert_close(luminance((red - mean) / std) * std + mean, torch.full((1, 3, 8, 4), 0.299))


def test_local_contrast_takes_out_the_brightness_of_regions():
    """MODEL.EU_INPUT contrast: a brighter light (gain) or a flat region made brighter (a shirt) changes E_U's
    image only where the region meets its surroundings; texture stays."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    scene = 0.3 + 0.4 * torch.rand(1, 1, 64, 32, generator=gen).expand(1, 3, 64, 32)  # textured grey, [0.3, 0.7]
    dark, bright = scene.clone(), scene.clone()
    dark[..., 24:, :], bright[..., 24:, :] = 0.25, 0.75  # the lower part, flat: dark or bright

    def seen(unit):
        return local_contrast((unit - mean) / std)

    def far(x):  # 16 rows (4 sigma) away from the border
        return x[..., 40:56, :], x[..., :8, :]

    out = seen(dark)
    assert out.shape == (1, 3, 64, 32) and torch.equal(out[:, 0], out[:, 1])
    assert 0.5 < seen(scene).std() < 2  # about as spread as a normalised image
    torch.testing.assert_close(seen(dark * 1.3), out, atol=0.05 * out.abs().max().item(), rtol=0)  # the light's gain
    for a, b in zip(far(out), far(seen(bright))):  # the region's brightness: seen only at its border
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (out - seen(bright)).abs().max() > 1  # ... where it is
    assert (seen(scene) - luminance((scene - mean) / std)).abs().max() > 0.5  # not the luminance


def test_low_pass_takes_out_patterns_and_keeps_the_brightness_of_regions():
    """MODEL.EU_INPUT blur: a striped shirt and a flat one of the same mean grey give E_U nearly the same image
    away from their border; a darker or brighter region stays darker or brighter; no colour."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def seen(unit):
        return low_pass((unit - mean) / std) * std + mean  # back to [0, 1] grey levels

    flat = torch.full((1, 3, 64, 32), 0.5)
    striped = flat.clone()
    striped[..., 24:, :] = (torch.arange(40) // 2 % 2).float().view(1, 1, 40, 1) * 0.6 + 0.2  # period 4: 0.2, 0.8
    dark = flat.clone()
    dark[..., 24:, :] = 0.2
    assert (striped - flat).abs().max() > 0.29 and seen(flat).shape == (1, 3, 64, 32)
    torch.testing.assert_close(seen(striped)[..., 32:56, :], seen(flat)[..., 32:56, :], atol=0.01, rtol=0)
    torch.testing.assert_close(seen(dark)[..., 40:, :], torch.full((1, 3, 24, 32), 0.2), atol=1e-3, rtol=0)
    torch.testing.assert_close(seen(dark)[..., :8, :], torch.full((1, 3, 8, 32), 0.5), atol=1e-3, rtol=0)
    red = torch.zeros(1, 3, 64, 32)
    red[:, 0] = 1
    torch.testing.assert_close(seen(red), torch.full((1, 3, 64, 32), 0.299), atol=1e-5, rtol=0)


def test_gray_eu_input_sees_no_colour():
    """MODEL.EU_INPUT gray: two images of equal luminance give E_U the same map (the trunk, in eval mode, of the
    luminance image); rgb gives it the trunk map itself. The trunk's training mode and statistics are kept."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 32)
    for eu_input, image in (("rgb", None), ("gray", luminance), ("contrast", local_contrast), ("blur", low_pass)):
        m = isgan_r18(10, pretrained=False, use_gpu=False, height=64, width=32, eu_input=eu_input).train()
        trunk = m.backbone(x)
        if eu_input == "rgb":
            assert m.nuisance_input(x, trunk) is trunk
            continue
        stats = [b.clone() for b in m.backbone.buffers()]
        seen = m.nuisance_input(x, trunk)
        assert m.backbone.training and not seen.requires_grad
        assert all(torch.equal(a, b) for a, b in zip(stats, m.backbone.buffers()))
        torch.testing.assert_close(seen, m.nuisance_input(luminance(x), trunk))  # same luminance, same map
        torch.testing.assert_close(seen, m.backbone.eval()(image(x)))


def test_encode_decode_and_identity_class_are_the_modules_path():
    """ISGAN.encode: E_R's features and E_U's code of what E_U reads (its mean in eval mode); decode: G;
    identity_class: the argmax of the mean of E_R's classifiers' logits on the code's parts."""
    torch.manual_seed(0)
    m = isgan_r18(10, pretrained=False, use_gpu=False, height=64, width=32, eu_input="gray", eu_grid=(2, 1)).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        identity, nuisance = m.encode(x)
        trunk = m.backbone(x)
        torch.testing.assert_close(identity, m.encoder_r(trunk)[0])
        _, mu, _ = m.encoder_u(m.nuisance_input(x, trunk))
        torch.testing.assert_close(nuisance, mu.flatten(1))  # eval: the mean, K parts then the cells
        noise = torch.randn(3, m.generator.noise_dim)
        labels = torch.tensor([0, 4, 9])
        torch.testing.assert_close(m.decode(identity, nuisance, labels, noise), m.generator(identity, nuisance, labels,
                                                                                           noise=noise))
        logits = m.encoder_r(trunk)[1]
        assert torch.equal(m.identity_class(identity), torch.stack(logits).mean(0).argmax(1))


def test_one_resnet_copied_everywhere():
    torch.manual_seed(0)
    m = ISGAN(4, backbone="resnet18", pretrained=False, height=128, width=64)
    r_branches = m.encoder_r.branches.branches
    u_branches = m.encoder_u.branches.branches
    for r_branch, u_branch in zip(r_branches, u_branches):
        for p, q in zip(r_branch.parameters(), u_branch.parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # same values, own storage
    for r_branch in r_branches[1:]:  # conv4_2.. of every branch is the same ImageNet block
        for p, q in zip(r_branch[0].parameters(), r_branches[0][0].parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_pretrained_weights_loaded_once(monkeypatch):
    state = torchvision.models.resnet18().state_dict()
    state["layer4.0.conv1.weight"].fill_(0.25)
    state["conv1.weight"].fill_(-0.5)
    calls = []

    def fake_load(url, *args, **kwargs):
        calls.append(url)
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_load)
    m = isgan_r18(5, pretrained=True, use_gpu=False, height=128, width=64)
    assert len(calls) == 1
    assert torch.all(m.backbone[0].weight == -0.5)
    for encoder in (m.encoder_r, m.encoder_u):
        for branch in encoder.branches.branches:
            assert torch.all(branch[1][0].conv1.weight == 0.25)


@pytest.mark.parametrize("parts, k", [((2,), 3), ((3,), 4), ((1, 2), 4), ((1, 3), 5)])
def test_table3_variants(parts, k):
    m = isgan_r18(6, pretrained=False, use_gpu=False, parts=parts, height=128, width=64)
    assert m.encoder_r.num_features == m.encoder_u.num_features == k
    assert m.generator.fc[0].in_features == 256 * k + 64 * k + 128 + 6
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 128, 64)).shape == (2, 256 * k)


def test_r34_factory_and_options():
    m = isgan_r34(
        3, pretrained=False, use_gpu=False, loss="triplet", id_dim=32, nid_dim=8,
        noise_dim=16, height=128, width=64, eu_pool="max",
    )
    assert m.encoder_r.branches.out_channels == 512
    assert len(m.encoder_r.branches.branches[0][0]) == 5  # layer3[1:] of resnet34
    assert m.encoder_u.branches.pool == "max" and m.loss == "triplet"
    assert m.generator.fc[0].in_features == 8 * 32 + 8 * 8 + 16 + 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 100}, "DATA.HEIGHT"),
        ({"width": 72}, "DATA.WIDTH"),  # 8 x 9: fewer than four x2 upsamplings
        ({"loss": "center"}, "softmax, triplet"),
        ({"parts": ()}, "MODEL.PARTS"),
        ({"backbone": "resnet152"}, "resnet18, resnet34, resnet50"),
        ({"eu_pool": "median"}, "'max' or 'avg'"),
        ({"eu_input": "hsv"}, "MODEL.EU_INPUT"),
        ({"eu_trunk": "copied"}, "MODEL.EU_TRUNK"),
    ],
)
def test_errors(monkeypatch, kwargs, match):
    if "backbone" not in kwargs and "eu_pool" not in kwargs:
        # settings errors are raised before any ResNet is built or downloaded
        monkeypatch.setattr(isgan_module, "load_resnet", lambda *a: pytest.fail("loaded a ResNet"))
    with pytest.raises(ValueError, match=match):
        ISGAN(3, **{"backbone": "resnet18", "pretrained": False, **kwargs})


def test_a_layout_grid_trains_in_stages_2_and_3(tiny_cfg):
    """The cells' KL joins L_U and their heads and G's grid maps learn from the stage-2/3 losses."""
    from isgan_torchreid.benchmarks.common import our_engine
    cfg = tiny_cfg("DATA.HEIGHT", "64", "DATA.WIDTH", "32", "MODEL.EU_BRANCHES", "shared", "MODEL.EU_GRID", "[2, 1]")
    engine, model, data = our_engine(cfg, "isgan", 8, torch.device("cpu"))
    heads = [model.encoder_u.cell_mu.weight, model.encoder_u.cell_logvar.weight, model.generator.grid_proj["0"].weight]
    for stage in (2, 3):
        engine.enter_stage(stage)
        before = [w.detach().clone() for w in heads]
        summary = floats(engine.forward_backward(data))
        assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())
        assert all(not torch.equal(b, w) for b, w in zip(before, heads)), stage
