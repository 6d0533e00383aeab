"""Tests for the ResNet trunk, weight loading, stripe pooling and MGN-style part branches."""
import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models.branches import (
    PartBranches,
    build_trunk,
    load_resnet,
    part_pool,
    stripe_bounds,
    validate_parts,
)

# parts -> (K, global indices, local indices); (1, 2, 3) is the paper's model, the rest Table 3
VARIANTS = {
    (1, 2, 3): (8, [0, 1, 4], [2, 3, 5, 6, 7]),
    (2,): (3, [0], [1, 2]),
    (3,): (4, [0], [1, 2, 3]),
    (1, 2): (4, [0, 1], [2, 3]),
    (1, 3): (5, [0, 1], [2, 3, 4]),
}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return load_resnet("resnet18", pretrained=False)


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return load_resnet("resnet50", pretrained=False)


def test_load_resnet_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50"):
        load_resnet("resnet101", pretrained=False)


@pytest.mark.parametrize("error", [URLError("no network"), RuntimeError("corrupt file")])
def test_load_resnet_download_failure_is_actionable(monkeypatch, tmp_path, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fail)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(ISGANError) as info:
        load_resnet("resnet18", pretrained=True)
    msg = str(info.value)
    assert url in msg
    assert os.path.basename(url) in msg
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in msg
    assert "MODEL.PRETRAINED False" in msg
    assert "\n" not in msg


def test_load_resnet_pretrained_uses_weights_api(monkeypatch):
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"].fill_(0.5)
    seen = []

    def fake_load(url, *args, **kwargs):
        seen.append(url)
        return state

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_load)
    net = load_resnet("resnet18", pretrained=True)
    assert seen == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(net.conv1.weight, torch.full_like(net.conv1.weight, 0.5))


def test_trunk_r18_shape_and_copy(r18):
    trunk = build_trunk(r18).eval()
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 128, 64))
    assert out.shape == (2, 256, 8, 4)  # (B, C4, H/16, W/16)
    with torch.no_grad():
        trunk[0].weight.add_(1.0)
    assert not torch.equal(trunk[0].weight, r18.conv1.weight)  # a copy, not shared


def test_trunk_and_branch_r50_params_and_channels(r50):
    trunk = build_trunk(r50)
    assert n_params(trunk) == 2_957_376  # reference backbone (notes 1.1)
    assert trunk[-1].conv3.out_channels == 1024
    branches = PartBranches(r50, parts=(1, 2))
    assert branches.out_channels == 2048
    for branch in branches.branches:
        assert n_params(branch) == 20_550_656  # layer3[1:] + layer4 (notes 1.2)


def test_part_pool_known_stripe_maxima():
    x = torch.zeros(1, 2, 6, 2)  # (B, C, H, W)
    # rows r has maximum 10*r+1 in channel 0 and -(10*r) + 5 in channel 1
    for r in range(6):
        x[0, 0, r] = torch.tensor([10.0 * r, 10.0 * r + 1])
        x[0, 1, r] = torch.tensor([-10.0 * r + 5, -10.0 * r])
    out = part_pool(x, 3, "max")
    assert out.shape == (1, 4, 2)  # global + 3 stripes
    assert out[0, :, 0].tolist() == [51.0, 11.0, 31.0, 51.0]  # rows (0,1), (2,3), (4,5)
    assert out[0, :, 1].tolist() == [5.0, 5.0, -15.0, -35.0]
    out2 = part_pool(x, 2, "max")
    assert out2[0, :, 0].tolist() == [51.0, 21.0, 51.0]  # rows (0..2), (3..5)
    assert part_pool(x, 1, "max").shape == (1, 1, 2)


def test_part_pool_avg_and_non_divisible_height():
    x = torch.arange(10.0).view(1, 1, 5, 2)  # row r holds 2r, 2r+1
    avg = part_pool(x, 2, "avg")
    assert avg[0, 0, 0].item() == pytest.approx(4.5)
    # H=5 is not divisible by 2: torch's adaptive bins are rows 0..2 and 2..4 (row 2 shared)
    assert avg[0, 1, 0].item() == pytest.approx(x[0, 0, 0:3].mean().item())
    assert avg[0, 2, 0].item() == pytest.approx(x[0, 0, 2:5].mean().item())


def test_stripe_bounds_are_torchs_adaptive_bins():
    """part_pool's explicit slices give exactly torch's adaptive pooling at every height (max) and the same
    average (avg), and the same gradients for a map without ties (what training sees)."""
    gen = torch.Generator().manual_seed(0)
    for height in range(1, 31):
        for n in range(1, 8):
            x = torch.randn(2, 3, height, 5, generator=gen, requires_grad=True)
            ours = part_pool(x, n, "max")
            ref = torch.cat([F.adaptive_max_pool2d(x, 1).flatten(2), F.adaptive_max_pool2d(x, (n, 1)).flatten(2)],
                            dim=2).transpose(1, 2)
            ref = ref if n > 1 else ref[:, :1]
            assert torch.equal(ours, ref), (height, n)
            weights = torch.randn(ours.shape, generator=gen)
            grad, = torch.autograd.grad((ours * weights).sum(), x)
            ref_grad, = torch.autograd.grad((ref * weights).sum(), x)
            assert torch.equal(grad != 0, ref_grad != 0), (height, n)  # the same maxima receive the gradient
            torch.testing.assert_close(grad, ref_grad)  # (shared rows sum in another order)
            avg = torch.cat([F.adaptive_avg_pool2d(x, 1).flatten(2), F.adaptive_avg_pool2d(x, (n, 1)).flatten(2)],
                            dim=2).transpose(1, 2)
            torch.testing.assert_close(part_pool(x, n, "avg"), avg if n > 1 else avg[:, :1])
    assert stripe_bounds(8, 3) == [(0, 3), (2, 6), (5, 8)] and stripe_bounds(24, 3) == [(0, 8), (8, 16), (16, 24)]


@pytest.mark.parametrize("parts", list(VARIANTS))
def test_feature_order_and_indices(r18, parts):
    k, global_idx, local_idx = VARIANTS[parts]
    branches = PartBranches(r18, parts=parts).eval()
    assert branches.num_features == k
    assert branches.global_indices == global_idx
    assert branches.local_indices == local_idx
    x = torch.randn(2, 256, 16, 8)  # trunk map of a 256x128 image
    with torch.no_grad():
        out = branches(x)
        expected = torch.cat(
            [part_pool(b(x), n, "max") for b, n in zip(branches.branches, parts)], dim=1
        )
    assert out.shape == (2, k, 512)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("parts", [(1, 2, 3), (2,), (1, 3)])
def test_shared_branch_pools_every_part_from_one_stride_one_map(r18, parts):
    k, global_idx, local_idx = VARIANTS[parts]
    branches = PartBranches(r18, parts=parts, pool="avg", shared=True).eval()
    assert len(branches.branches) == 1 and branches.branches[0][1][0].conv1.stride == (1, 1)
    assert (branches.num_features, branches.global_indices, branches.local_indices) == (k, global_idx, local_idx)
    assert n_params(branches) == n_params(PartBranches(r18, parts=parts[:1]))  # one branch's weights
    x = torch.randn(2, 256, 16, 8)
    with torch.no_grad():
        shared_map = branches.branches[0](x)  # (2, 512, 16, 8)
        expected = torch.cat([part_pool(shared_map, n, "avg") for n in parts], dim=1)
        assert torch.equal(branches(x), expected)


def test_strides_and_weights_of_branches(r18):
    branches = PartBranches(r18, parts=(1, 2, 3), pool="avg").eval()
    x = torch.randn(1, 256, 24, 8)  # trunk map of a 384x128 image
    with torch.no_grad():
        shapes = [tuple(b(x).shape) for b in branches.branches]
    assert shapes == [(1, 512, 12, 4), (1, 512, 24, 8), (1, 512, 24, 8)]
    for branch in branches.branches:  # all start from the same (ImageNet) layer4 weights
        for (name, p), q in zip(branch[1].named_parameters(), r18.layer4.parameters()):
            assert torch.equal(p, q), name
    assert branches.branches[1][1][0].conv1.stride == (1, 1)
    assert branches.branches[0][1][0].conv1.stride == (2, 2)


def test_bottleneck_stride_one(r50):
    layer4 = PartBranches(r50, parts=(2,)).branches[0][1]
    assert layer4[0].conv2.stride == (1, 1)
    assert layer4[0].downsample[0].stride == (1, 1)
    assert r50.layer4[0].conv2.stride == (2, 2)  # the source is untouched


@pytest.mark.parametrize("parts", [(), (0,), (1, 1), (1, -2), (1.5,), (True,), "123", None])
def test_invalid_parts(r18, parts):
    with pytest.raises(ValueError, match="MODEL.PARTS"):
        PartBranches(r18, parts=parts)


def test_validate_parts_accepts_lists():
    assert validate_parts([1, 3]) == (1, 3)


def test_invalid_pool(r18):
    with pytest.raises(ValueError, match="'max' or 'avg'"):
        PartBranches(r18, pool="sum")
