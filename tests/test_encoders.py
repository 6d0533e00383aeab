"""Tests for the identity-related encoder E_R and the identity-unrelated encoder E_U."""
import math

import pytest
import torch

from isgan_torchreid.models.branches import load_resnet
from isgan_torchreid.models.encoders import IdentityEncoder, NuisanceEncoder

NUM_CLASSES = 11


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return load_resnet("resnet18", pretrained=False)


@pytest.fixture(scope="module")
def e_r(r18):
    torch.manual_seed(1)
    return IdentityEncoder(r18, NUM_CLASSES)


@pytest.fixture(scope="module")
def e_u(r18):
    torch.manual_seed(2)
    return NuisanceEncoder(r18)


@pytest.mark.parametrize("hw", [(24, 8), (16, 8), (8, 4)])  # trunk maps of 384x128, 256x128, 128x64
def test_identity_encoder_shapes(e_r, hw):
    e_r.train()
    x = torch.randn(2, 256, *hw)
    with torch.no_grad():
        feat, logits = e_r(x)
    assert e_r.num_features == 8 and e_r.feat_dim == 256
    assert feat.shape == (2, 8 * 256)
    assert len(logits) == 8
    assert all(logit.shape == (2, NUM_CLASSES) for logit in logits)


def test_identity_feature_is_concatenated_bn_outputs(e_r):
    e_r.eval()
    x = torch.randn(2, 256, 16, 8)
    with torch.no_grad():
        feat, logits = e_r(x)
        pooled = e_r.branches(x)  # (B, K, 512)
        for k in range(8):
            part = e_r.reductions[k](pooled[:, k, :, None, None]).flatten(1)
            assert torch.allclose(feat[:, 256 * k: 256 * (k + 1)], part)
            assert torch.allclose(logits[k], e_r.classifiers[k](part))
    assert e_r.branches.pool == "max"


def test_identity_encoder_init(e_r):
    for reduction in e_r.reductions:
        conv, bn = reduction
        assert conv.bias is None and conv.kernel_size == (1, 1)
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)  # fan_in
        assert torch.all(bn.bias == 0)
        assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert bn.weight.std().item() == pytest.approx(0.02, rel=0.35)
    weights = torch.cat([fc.weight.flatten() for fc in e_r.classifiers])
    assert weights.std().item() == pytest.approx(math.sqrt(2 / NUM_CLASSES), rel=0.1)  # fan_out
    assert all(torch.all(fc.bias == 0) for fc in e_r.classifiers)


def test_nuisance_encoder_shapes_and_heads(e_u):
    e_u.train()
    x = torch.randn(2, 256, 8, 4)
    with torch.no_grad():
        z, mu, logvar = e_u(x)
    assert z.shape == (2, 8 * 64)
    assert mu.shape == logvar.shape == (2, 8, 64)
    assert e_u.branches.pool == "avg"
    assert len(e_u.mu) == len(e_u.logvar) == 8
    assert all(head.in_features == 512 and head.out_features == 64 for head in e_u.mu)


def test_nuisance_pool_is_configurable(r18):
    assert NuisanceEncoder(r18, parts=(2,), pool="max").branches.pool == "max"


def test_reparameterisation(e_u):
    x = torch.randn(2, 256, 8, 4)
    e_u.train()
    with torch.no_grad():
        torch.manual_seed(5)
        z1, mu, logvar = e_u(x)
        torch.manual_seed(5)
        z2, _, _ = e_u(x)
        torch.manual_seed(6)
        z3, _, _ = e_u(x)
        # z = mu + exp(logvar / 2) * eps with eps from the given generator
        z4, _, _ = e_u(x, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(z1, z2)
    assert not torch.allclose(z1, z3)
    assert torch.allclose(z4, (mu + torch.exp(logvar / 2) * eps).flatten(1), atol=1e-6)
    e_u.eval()
    with torch.no_grad():
        z_eval, mu_eval, _ = e_u(x)
    assert torch.equal(z_eval, mu_eval.flatten(1))


@pytest.mark.parametrize("shared", [True, False])
def test_nuisance_grid_encodes_each_cell_of_the_last_branch_map(r18, shared):
    """MODEL.EU_GRID: K part features, then rows x cols cells average-pooled from the last branch's map."""
    torch.manual_seed(3)
    e_u = NuisanceEncoder(r18, shared=shared, grid=(4, 2)).eval()
    x = torch.randn(2, 256, 8, 4)
    with torch.no_grad():
        z, mu, logvar = e_u(x)
        _, last_map = e_u.branches.pooled_and_map(x)  # the 3-stripe branch's (shared: the one) map at stride one
    assert e_u.num_cells == 8 and last_map.shape == (2, 512, 8, 4)
    assert z.shape == (2, 16 * 64) and mu.shape == logvar.shape == (2, 16, 64)
    cells = last_map.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(4, 5))  # (2, 512, 4, 2): 2x2 blocks
    torch.testing.assert_close(mu[:, 8:], e_u.cell_mu(cells.flatten(2).transpose(1, 2)))
    torch.testing.assert_close(mu[:, 9], e_u.cell_mu(cells[:, :, 0, 1]))  # row-major: cell (0, 1) is the second
    assert torch.equal(z, mu.flatten(1))  # eval: the means
    plain = NuisanceEncoder(r18, shared=shared)
    assert plain.num_cells == 0 and not hasattr(plain, "cell_mu")
