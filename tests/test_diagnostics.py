"""The GAN diagnostics of a step: E_U's posterior, D's verdicts, each loss term's gradient norm per module."""
import pytest
import torch
from torch import nn

from isgan_torchreid.engine.diagnostics import discriminator_stats, latent_stats, term_grad_norms
from isgan_torchreid.losses.isgan import kl_loss


def test_latent_stats_kl_per_part_and_active_units():
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 3, 8), torch.randn(16, 3, 8) * 0.1
    mu[:, :, 4:] = 0.5  # half the units: the same mean for every image (inactive)
    stats = latent_stats(mu, logvar)
    assert stats["eu/kl"] == pytest.approx(kl_loss(mu, logvar, "paper").item(), rel=1e-5)  # nats per image
    assert sum(stats[f"eu/kl_p{k}"] for k in range(3)) == pytest.approx(stats["eu/kl"].item(), rel=1e-5)
    assert stats["eu/active"] == 0.5
    assert stats["eu/mu_std"] == pytest.approx(mu.var(0).sqrt().mean().item())
    collapsed = latent_stats(torch.zeros(4, 2, 5), torch.zeros(4, 2, 5))  # the prior itself
    assert collapsed["eu/kl"] == 0 and collapsed["eu/active"] == 0
    assert "eu/active" not in latent_stats(mu[:1], logvar[:1])  # no spread from one image


def test_discriminator_stats_probabilities_and_class_accuracy():
    patch = torch.cat([torch.full((2, 1, 3, 2), 20.0), torch.full((4, 1, 3, 2), -20.0)])  # real: 2, fakes: 4
    cls = torch.zeros(6, 5)
    cls[[0, 1, 2, 3, 4, 5], [1, 0, 3, 3, 2, 4]] = 1.0  # argmax per row
    stats = discriminator_stats(patch, cls, 2, torch.tensor([1, 2]), torch.tensor([3, 3, 0, 0]))
    assert stats["gan/D_real"] == pytest.approx(1.0) and stats["gan/D_fake"] == pytest.approx(0.0, abs=1e-6)
    assert stats["gan/DC_acc_real"] == 0.5 and stats["gan/DC_acc_fake"] == 0.5


def test_term_grad_norms_per_module_without_touching_grad():
    torch.manual_seed(0)
    a, b, frozen = nn.Linear(3, 2), nn.Linear(2, 1), nn.Linear(3, 1)
    frozen.requires_grad_(False)
    x = torch.randn(5, 3)
    hidden = a(x)
    terms = {"first": b(hidden).sum(), "second": hidden.pow(2).sum(), "constant": frozen(x).sum()}
    norms = term_grad_norms(terms, {"A": [a], "B": [b], "F": [frozen]})
    assert set(norms) == {"grad_A/first", "grad_B/first", "grad_A/second", "grad_B/second"}
    expected = torch.autograd.grad(terms["second"], list(a.parameters()), retain_graph=True)
    assert norms["grad_A/second"] == pytest.approx(torch.cat([g.flatten() for g in expected]).norm().item())
    assert norms["grad_B/second"] == 0  # the term does not reach B
    assert all(p.grad is None for m in (a, b) for p in m.parameters())
    sum(terms.values()).backward()  # the graph is still there for the update
