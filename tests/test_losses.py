"""Tests for the IS-GAN loss terms [Eq. 1-7]."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from isgan_torchreid.losses.isgan import (
    class_loss,
    confusion_loss,
    discriminator_domain_loss,
    feature_loss,
    generator_domain_loss,
    identity_loss,
    kl_loss,
    reconstruction_loss,
)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _closed_form_kl(mu, logvar):
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) written out."""
    var = logvar.exp()
    return 0.5 * (mu**2 + var - logvar - 1)


def test_identity_loss_mean_sum_and_per_head(gen):
    b, c, k = 6, 5, 8
    labels = torch.randint(0, c, (b,), generator=gen)
    logits = [torch.randn(b, c, generator=gen) for _ in range(k)]
    per_head = torch.stack([F.cross_entropy(x, labels) for x in logits])
    mean = identity_loss(logits, labels)
    total = identity_loss(logits, labels, reduction="sum")
    torch.testing.assert_close(mean, per_head.mean())
    torch.testing.assert_close(total, k * mean)
    smoothed = identity_loss(logits, labels, label_smooth=0.1)
    expected = torch.stack([F.cross_entropy(x, labels, label_smoothing=0.1) for x in logits]).mean()
    torch.testing.assert_close(smoothed, expected)
    assert not torch.isclose(smoothed, mean)


def test_identity_loss_weights_each_images_cross_entropy(gen):
    b, c, k = 6, 5, 3
    labels = torch.randint(0, c, (b,), generator=gen)
    logits = [torch.randn(b, c, generator=gen, requires_grad=True) for _ in range(k)]
    weights = torch.rand(b, generator=gen, requires_grad=True)
    torch.testing.assert_close(identity_loss(logits, labels, weights=torch.ones(b)), identity_loss(logits, labels))
    weighted = identity_loss(logits, labels, label_smooth=0.1, weights=weights)
    per_image = torch.stack([F.cross_entropy(x, labels, label_smoothing=0.1, reduction="none") for x in logits])
    torch.testing.assert_close(weighted, (per_image * weights).mean(1).mean())
    weighted.backward()
    assert weights.grad is None and all(x.grad is not None for x in logits)  # the weights pass no gradient
    assert identity_loss(logits, labels, weights=torch.zeros(b)).item() == 0


def test_identity_loss_errors():
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError):
        identity_loss([torch.zeros(2, 3)], labels, reduction="max")
    with pytest.raises(ValueError):
        identity_loss([], labels)


def test_kl_matches_closed_form_and_torch_distributions(gen):
    b, k, d = 4, 8, 6
    mu = torch.randn(b, k, d, generator=gen)
    logvar = torch.randn(b, k, d, generator=gen)
    elem = _closed_form_kl(mu, logvar)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(elem, reference)
    official = kl_loss(mu, logvar)
    paper = kl_loss(mu, logvar, reduction="paper")
    torch.testing.assert_close(official, reference.sum(dim=(0, 2)).mean())
    torch.testing.assert_close(paper, reference.sum(dim=(1, 2)).mean())
    # official = total / K, paper = total / B
    torch.testing.assert_close(official * k, paper * b)


def test_kl_zero_at_standard_normal_and_positive_elsewhere():
    zeros = torch.zeros(3, 8, 4)
    assert kl_loss(zeros, zeros).item() == 0.0
    assert kl_loss(zeros, zeros, reduction="paper").item() == 0.0
    assert kl_loss(zeros + 0.1, zeros).item() > 0.0
    assert kl_loss(zeros, zeros - 0.1).item() > 0.0


def test_kl_free_bits_charge_a_part_at_least_the_threshold_and_stop_its_gradient(gen):
    b, k, d = 4, 3, 6
    mu = torch.randn(b, k, d, generator=gen)
    mu[:, 0] *= 0.01  # part 0 carries almost nothing; parts 1 and 2 about d / 2 nats per image
    mu.requires_grad_(True)
    logvar = torch.zeros(b, k, d)
    per_part = _closed_form_kl(mu, logvar).sum(dim=2).mean(dim=0)  # (K,)
    free = 0.5
    assert per_part[0] < free < per_part[1:].min()
    charged = torch.stack([per_part[0].detach().clamp(min=free), *per_part[1:]])
    for reduction, expected in (("official", b * charged.mean()), ("paper", charged.sum())):
        torch.testing.assert_close(kl_loss(mu, logvar, reduction, free_bits=free), expected)
    kl_loss(mu, logvar, free_bits=free).backward()
    assert mu.grad[:, 0].abs().max() == 0 and mu.grad[:, 1:].abs().min() > 0
    torch.testing.assert_close(kl_loss(mu, logvar, free_bits=0.0), kl_loss(mu, logvar))


def test_kl_errors():
    with pytest.raises(ValueError):
        kl_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), reduction="mean")
    with pytest.raises(ValueError):
        kl_loss(torch.zeros(2, 12), torch.zeros(2, 12))
    with pytest.raises(ValueError):
        kl_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


def test_reconstruction_is_mean_absolute_error(gen):
    fake = torch.rand(2, 3, 8, 4, generator=gen)
    target = torch.rand(2, 3, 8, 4, generator=gen)
    torch.testing.assert_close(reconstruction_loss(fake, target), (fake - target).abs().sum() / fake.numel())
    assert reconstruction_loss(target, target).item() == 0.0
    with pytest.raises(ValueError):
        reconstruction_loss(torch.zeros(1, 3, 8, 4), torch.zeros(1, 3, 8, 6))


def _bce(logits, target):
    p = torch.sigmoid(logits)
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean()


def test_discriminator_domain_loss_hard_targets(gen):
    real = torch.randn(4, 1, 10, 2, generator=gen)
    fake = torch.randn(4, 1, 10, 2, generator=gen)
    loss = discriminator_domain_loss(real, fake, smooth=False)
    torch.testing.assert_close(loss, _bce(real, torch.ones_like(real)) + _bce(fake, torch.zeros_like(fake)))


def test_discriminator_domain_loss_fake_weight_sums_the_fake_sets(gen):
    real = torch.randn(4, 1, 10, 2, generator=gen)
    fakes = torch.randn(3 * 4, 1, 10, 2, generator=gen)  # three concatenated fake sets
    loss = discriminator_domain_loss(real, fakes, smooth=False, fake_weight=3)
    per_set = sum(_bce(f, torch.zeros_like(f)) for f in fakes.chunk(3))  # Eq. 6: one term per fake set
    torch.testing.assert_close(loss, _bce(real, torch.ones_like(real)) + per_set)


def _implied_targets(smoothed_side, calls=2000):
    """Recover each drawn target from one-element losses: BCE(0, t) = log 2 and BCE(10, t) = softplus(10) - 10 t."""
    gen = torch.Generator().manual_seed(11)
    zero, ten = torch.zeros(1), torch.full((1,), 10.0)
    real, fake = (ten, zero) if smoothed_side == "real" else (zero, ten)
    losses = torch.stack([discriminator_domain_loss(real, fake, generator=gen) for _ in range(calls)])
    return (F.softplus(ten) - (losses - math.log(2))) / 10


def test_discriminator_domain_loss_smoothed_real_targets_in_range():
    t = _implied_targets("real")
    assert t.min() >= 0.7 - 1e-5 and t.max() <= 1.0 + 1e-5
    assert t.min() < 0.71 and t.max() > 0.99 and abs(t.mean() - 0.85) < 0.01  # spread over U(0.7, 1.0)


def test_discriminator_domain_loss_smoothed_fake_targets_in_range():
    t = _implied_targets("fake")
    assert t.min() >= -1e-5 and t.max() <= 0.3 + 1e-5
    assert t.min() < 0.01 and t.max() > 0.29 and abs(t.mean() - 0.15) < 0.01  # spread over U(0.0, 0.3)


def test_discriminator_domain_loss_reproducible():
    real, fake = torch.randn(8), torch.randn(8)
    a = discriminator_domain_loss(real, fake, generator=torch.Generator().manual_seed(5))
    b = discriminator_domain_loss(real, fake, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_generator_domain_loss_and_class_loss(gen):
    fake = torch.randn(4, 1, 10, 2, generator=gen)
    torch.testing.assert_close(generator_domain_loss(fake), _bce(fake, torch.ones_like(fake)))
    logits = torch.randn(5, 7, generator=gen)
    labels = torch.randint(0, 7, (5,), generator=gen)
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(5), labels].mean()
    torch.testing.assert_close(class_loss(logits, labels), expected)


def test_losses_finite_and_gradients_reach_inputs(gen):
    b, c, k, d = 4, 6, 8, 3
    labels = torch.randint(0, c, (b,), generator=gen)
    logits = [torch.randn(b, c, generator=gen, requires_grad=True) for _ in range(k)]
    mu = torch.randn(b, k, d, generator=gen, requires_grad=True)
    logvar = torch.randn(b, k, d, generator=gen, requires_grad=True)
    fake = torch.rand(b, 3, 8, 4, generator=gen, requires_grad=True)
    target = torch.rand(b, 3, 8, 4, generator=gen)
    real_d = torch.randn(b, 1, 3, 2, generator=gen, requires_grad=True)
    fake_d = torch.randn(b, 1, 3, 2, generator=gen, requires_grad=True)
    cls = torch.randn(b, c, generator=gen, requires_grad=True)
    terms = [
        identity_loss(logits, labels),
        identity_loss(logits, labels, reduction="sum", label_smooth=0.1),
        kl_loss(mu, logvar),
        kl_loss(mu, logvar, reduction="paper"),
        reconstruction_loss(fake, target),
        discriminator_domain_loss(real_d, fake_d, generator=gen),
        discriminator_domain_loss(real_d, fake_d, smooth=False),
        generator_domain_loss(fake_d),
        class_loss(cls, labels),
    ]
    for term in terms:
        assert term.dim() == 0 and torch.isfinite(term)
    torch.stack(terms).sum().backward()
    for x in [*logits, mu, logvar, fake, real_d, fake_d, cls]:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_losses_accept_half_precision_logits(gen):
    """Half-precision inputs (as under autocast) give float32 losses that match the float32 computation."""
    labels = torch.randint(0, 5, (4,), generator=gen)
    logits = torch.randn(4, 5, generator=gen).half()
    patches = torch.randn(4, 1, 3, 2, generator=gen).half()
    mu = torch.randn(4, 2, 3, generator=gen).half()
    assert identity_loss([logits], labels).dtype == torch.float32
    torch.testing.assert_close(class_loss(logits, labels), class_loss(logits.float(), labels))
    torch.testing.assert_close(generator_domain_loss(patches), generator_domain_loss(patches.float()))
    torch.testing.assert_close(kl_loss(mu, mu), kl_loss(mu.float(), mu.float()))
    big_logvar = torch.full((1, 1, 1), 20.0, dtype=torch.half)  # exp(20) overflows float16
    assert torch.isfinite(kl_loss(big_logvar, big_logvar))


def test_confusion_loss_is_the_kl_of_uniform_from_the_classifier(gen):
    """L_nu's value: KL(U || softmax(logits)), 0 for a classifier that cannot tell (any constant row), positive
    and bounded below otherwise; its gradient flattens the classifier's output."""
    assert confusion_loss(torch.full((3, 7), 2.5)).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(4, 7, generator=gen, requires_grad=True)
    uniform = torch.full((4, 7), 1 / 7)
    expected = F.kl_div(F.log_softmax(logits, dim=1), uniform, reduction="batchmean")
    value = confusion_loss(logits)
    torch.testing.assert_close(value, expected)
    assert value > 0
    value.backward()
    flatter = logits - 0.5 * logits.grad / logits.grad.norm()
    assert confusion_loss(flatter) < value


def test_feature_loss_is_scale_free_per_position_and_bounded(gen):
    """L_feat's distance: 0 for maps that differ only by a positive factor at each position, 4 for opposite
    features, the mean over the pairs of maps; maps of different shapes are refused."""
    a = torch.randn(2, 5, 3, 4, generator=gen)
    scale = torch.rand(2, 1, 3, 4, generator=gen) + 0.5
    assert feature_loss([a], [a * scale]).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss([a], [-a]).item() == pytest.approx(4.0, rel=1e-5)
    b = torch.randn(2, 7, 2, 2, generator=gen)
    assert feature_loss([a, b], [-a, b]).item() == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        feature_loss([a], [b])
    with pytest.raises(ValueError, match="maps"):
        feature_loss([a, b], [a])
