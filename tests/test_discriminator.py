"""Tests for the shared-trunk discriminator (D_D patch logits, D_C class logits)."""
import os

import pytest
import torch
from torch import nn

from isgan_torchreid.benchmarks import benchmark_main
from isgan_torchreid.benchmarks.dc import class_accuracy, load_identity_images, split_per_identity, train_class_head
from isgan_torchreid.data.synthetic.spec import SynthSpec
from isgan_torchreid.models.discriminator import Discriminator

from conftest import CONFIGS


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


@pytest.mark.parametrize("hw", [(384, 128), (256, 128), (128, 64), (64, 32)])
def test_output_shapes(disc, hw):
    with torch.no_grad():
        patch, logits = disc(torch.randn(2, 3, *hw))
    # 384x128 gives 12x4 (the reference's unpadded k4 s1 convs gave 10x2)
    assert patch.shape == (2, 1, hw[0] // 32, hw[1] // 32)
    assert logits.shape == (2, 751)


def test_width_scales_every_layer():
    d = Discriminator(10, base_channels=64)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [8, 16, 32, 64, 64, 64, 1, 64]  # trunk, patch head, class conv
    assert d.class_fc.in_features == 64
    with torch.no_grad():
        patch, logits = d(torch.randn(2, 3, 64, 32))
    assert patch.shape == (2, 1, 2, 1) and logits.shape == (2, 10)


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


def test_class_head_is_global_average_of_the_activation(disc):
    """D_C pools LeakyReLU(class conv) with no normalisation in between (the authors' head pools InstanceNorm)."""
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        _, logits = disc(x)
        conv = disc.class_conv[0](disc.trunk(x))  # (B, 256, 8, 4)
        pooled = nn.functional.leaky_relu(conv, 0.2).mean(dim=(2, 3))  # (B, 256)
    assert torch.allclose(logits, disc.class_fc(pooled), atol=1e-5)


def test_class_logits_depend_on_the_image(disc):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 128, 64)
    with torch.no_grad():
        _, logits = disc(x)
    assert (logits[1:] - logits[:1]).abs().amax(dim=1).min() > 1e-3  # every image gets its own logits


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    """16 synthetic identities x 10 images at 128x64 in D's input space, and their labels."""
    spec = SynthSpec(num_train_ids=16, num_test_ids=1, num_cams=3, images_per_id=10, height=128, width=64,
                     num_distractors=0)
    return load_identity_images(str(tmp_path_factory.mktemp("dc-data")), spec, 128, 64)


def test_class_head_generalises_to_held_out_images(identities):
    """D_C trained alone on 6 images of each of 16 identities names the 4 held-out images of each (L_C's premise).

    Seed 0 gives 0.95 held-out; seeds 0-5 gave 0.86-0.98 with this head and 0.25-0.80 with the old one
    (InstanceNorm -> LeakyReLU -> average pool); chance is 1/16.
    """
    imgs, labels = identities
    train_idx, held_idx = split_per_identity(labels, train_per_id=6, seed=0)
    torch.manual_seed(0)
    disc = Discriminator(16)
    train_class_head(disc, imgs, labels, train_idx, steps=150, batch=16, lr=0.02, momentum=0.9, weight_decay=1e-4,
                     seed=0, device=torch.device("cpu"))
    assert class_accuracy(disc, imgs, labels, held_idx, "cpu") >= 8 / 16  # 8x chance


def test_class_loss_reaches_the_trunk(disc):
    x = torch.randn(2, 3, 128, 64)
    _, logits = disc(x)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert disc.trunk[0].weight.grad.abs().sum() > 0 and disc.class_conv[0][1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("opts, message", [
    (["--dc-heads", "IN-LReLU-avg,foo"], "unknown foo"),
    (["--dc-train-per-id", "12"], "leaves no held-out image"),
    (["--dc-seeds", "0,a"], "not a list of integers"),
])
def test_dc_benchmark_reports_bad_options(opts, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--dc"] + opts)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
