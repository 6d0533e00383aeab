"""Tests for the shared-trunk discriminator (D_D patch logits, D_C class logits)."""
import pytest
import torch
from torch import nn

from isgan_torchreid.models.discriminator import Discriminator


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def disc():
    torch.manual_seed(0)
    return Discriminator(751)


def test_parameter_count_matches_reference(disc):
    # Same counts as the reference: 'same' padding adds no parameters (only the map size differs).
    assert n_params(disc.trunk) == 1_738_976
    assert n_params(disc.patch_head) == 1_052_929
    assert n_params(disc.class_conv) == 1_048_832
    assert n_params(disc.class_fc) == 193_007
    assert n_params(disc) == 4_033_744


@pytest.mark.parametrize("hw", [(384, 128), (256, 128), (128, 64)])
def test_output_shapes(disc, hw):
    with torch.no_grad():
        patch, logits = disc(torch.randn(2, 3, *hw))
    # 384x128 gives 12x4 (the reference's unpadded k4 s1 convs gave 10x2)
    assert patch.shape == (2, 1, hw[0] // 32, hw[1] // 32)
    assert logits.shape == (2, 751)


def test_no_squashing_of_input_or_output(disc):
    kinds = {type(m) for m in disc.modules()}
    assert nn.Tanh not in kinds and nn.Sigmoid not in kinds
    assert isinstance(disc.trunk[0], nn.Conv2d)  # the image reaches the first conv unchanged
    torch.manual_seed(0)
    sign = torch.randint(0, 2, (1, 3, 128, 64)).float() * 2 - 1
    x = sign * (6 + 4 * torch.rand(1, 3, 128, 64))  # |x| in [6, 10]: tanh(x) is sign(x) to 1e-5
    y = sign * 20
    with torch.no_grad():
        # with a Tanh on the input both images would look the same to D ...
        assert torch.allclose(disc(torch.tanh(x))[0], disc(torch.tanh(y))[0], atol=1e-3)
        # ... without it D sees the difference
        assert not torch.allclose(disc(x)[0], disc(y)[0], atol=1e-3)


def test_class_head_is_global_average(disc):
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        _, logits = disc(x)
        pooled = disc.class_conv(disc.trunk(x)).mean(dim=(2, 3))  # (B, 256)
    assert torch.allclose(logits, disc.class_fc(pooled), atol=1e-5)


def test_class_logits_depend_on_the_image(disc):
    """Pooling the InstanceNorm output directly (the authors' head) gives 0 per channel: constant logits."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 128, 64)
    with torch.no_grad():
        _, logits = disc(x)
        normalised = disc.class_conv[:2](disc.trunk(x))  # conv + InstanceNorm, before the activation
    assert normalised.mean(dim=(2, 3)).abs().max() < 1e-4  # why the activation must come before the pool
    assert (logits[1:] - logits[:1]).abs().amax(dim=1).min() > 1e-3  # every image gets its own logits


def test_class_loss_reaches_the_trunk(disc):
    x = torch.randn(2, 3, 128, 64)
    _, logits = disc(x)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert disc.trunk[0].weight.grad.abs().sum() > 0 and disc.class_conv[0][1].weight.grad.abs().sum() > 0
