"""load_gan: a stage-2/3 IS-GAN checkpoint -> GAN.encode (images -> identity, nuisance) and GAN.decode (-> images).

The checkpoints are random weights of the tiny config saved as a run's checkpoints (conftest.make_run): encoding
and decoding do not depend on training.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import isgan_torchreid
from isgan_torchreid.deploy import GAN, load_encoder, save_encoder
from isgan_torchreid.errors import ISGANError

from conftest import make_run


@pytest.fixture(scope="module")
def runs(data_root, module_dir):
    from isgan_torchreid.config import load_config
    from isgan_torchreid.data.build import check_datasets

    from conftest import CONFIGS, TINY
    check_datasets(load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root]))
    query = os.path.join(data_root, "synthperson", "query")
    return {
        "stage2": make_run(str(module_dir), data_root, "isgan", 2),
        "stage1": make_run(str(module_dir), data_root, "isgan_s1", 1),
        "mgn": make_run(str(module_dir), data_root, "mgn", 3, "MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]"),
        "query": sorted(os.path.join(query, f) for f in os.listdir(query))[:5],
    }


@pytest.fixture(scope="module")
def gan(runs):
    return isgan_torchreid.load_gan(runs["stage2"], device="cpu")


def test_load_gan_builds_the_runs_isgan_in_eval_mode(gan, runs):
    assert isinstance(gan, GAN) and not gan.model.training
    assert gan.device == torch.device("cpu") and gan.parts == (1, 2, 3) and gan.num_features == 8
    state = torch.load(runs["stage2"], map_location="cpu", weights_only=True)["state_dict"]
    for key, value in gan.model.state_dict().items():  # every tensor, E_U and G included
        assert torch.equal(value, state[key]), key


def test_encode_takes_images_as_embed_does(gan, runs):
    paths = runs["query"]
    identity, nuisance = gan.encode(paths, batch_size=2)  # two batches and a remainder
    assert identity.shape == (5, 8 * 256) and nuisance.shape == (5, 8 * 64)
    pil = [Image.open(p).convert("RGB") for p in paths]
    arrays = [np.asarray(img) for img in pil]
    tensor = gan.images(paths)
    assert tensor.shape == (5, 3, 128, 64)
    for images in (pil, arrays, tensor):
        other = gan.encode(images)
        torch.testing.assert_close(other[0], identity)
        torch.testing.assert_close(other[1], nuisance)
    # the identity code is E_R's descriptor before flip and normalisation: what load_encoder's Encoder returns
    encoder = load_encoder(runs["stage2"], device="cpu")
    torch.testing.assert_close(encoder(tensor), identity)


def test_nuisance_code_is_the_mean_of_eu(gan, runs):
    imgs = gan.images(runs["query"][:2])
    with torch.no_grad():
        _, mu, _ = gan.model.encoder_u(gan.model.backbone(imgs))  # (2, K, p_U)
    torch.testing.assert_close(gan.encode(imgs)[1], mu.flatten(1))


def test_decode_is_deterministic_rgb_at_the_input_size(gan, runs):
    identity, nuisance = gan.encode(runs["query"])
    fakes = gan.decode(identity, nuisance, batch_size=3)
    assert fakes.shape == (5, 3, 128, 64) and fakes.dtype == torch.float32
    assert 0 <= fakes.min() and fakes.max() <= 1 and fakes.std() > 0
    torch.testing.assert_close(gan.decode(identity, nuisance, batch_size=3), fakes, rtol=0, atol=0)  # noise 0, eval
    # other batches, other convolution kernels on some CPUs: equal to float32 rounding (seen: 7e-6)
    torch.testing.assert_close(gan.decode(identity, nuisance), fakes)
    # G sees zero noise and the class E_R's classifiers predict
    classes = gan.predicted_class(identity)
    noise = torch.zeros(5, gan.model.generator.noise_dim)
    with torch.no_grad():
        raw = gan.model.generator(identity, nuisance, classes, noise=noise)
    torch.testing.assert_close(fakes, ((raw + 1) / 2).clamp(0, 1))
    other = (classes + 1) % 8
    assert not torch.allclose(gan.decode(identity, nuisance, other), fakes)  # the class input is used


def test_decode_mixes_codes_row_by_row(gan, runs):
    identity, nuisance = gan.encode(runs["query"][:3])
    mixed = gan.decode(identity, nuisance.flip(0))
    for i in range(3):
        torch.testing.assert_close(mixed[i], gan.decode(identity[i:i + 1], nuisance[2 - i:3 - i])[0])
    with pytest.raises(ValueError, match="3 identity codes but 2 nuisance codes"):
        gan.decode(identity, nuisance[:2])


def test_tanh_target_space_decodes_to_unit_rgb(runs, data_root, module_dir):
    weights = make_run(str(module_dir), data_root, "tanh", 2, "LOSS.TARGET_SPACE", "tanh")
    gan = isgan_torchreid.load_gan(weights, device="cpu")
    fakes = gan.decode(*gan.encode(runs["query"][:2]))
    assert fakes.shape == (2, 3, 128, 64) and 0 <= fakes.min() and fakes.max() <= 1


def test_what_load_gan_refuses_is_one_line(runs, tmp_path):
    encoder_file = str(tmp_path / "encoder.safetensors")
    save_encoder(load_encoder(runs["stage2"], device="cpu"), load_encoder(runs["stage2"]).spec, encoder_file)
    alone = tmp_path / "alone.pth.tar"
    os.link(runs["stage2"], alone)
    cases = [(runs["stage1"], "stage-1 checkpoint, whose E_U and G are untrained"),
             (runs["mgn"], "mgn model without E_U and G: this needs an IS-GAN checkpoint"),
             (encoder_file, "encoder file .E_R only, no E_U or G.; load_gan needs a stage-2"),
             (str(alone), "not in a run folder with a config.yaml"),
             (str(tmp_path / "none.pth.tar"), "checkpoint not found")]
    for weights, message in cases:
        with pytest.raises(ISGANError, match=message) as error:
            isgan_torchreid.load_gan(weights, device="cpu")
        assert "\n" not in str(error.value)
    config = os.path.join(os.path.dirname(os.path.dirname(runs["stage2"])), "config.yaml")
    assert isinstance(isgan_torchreid.load_gan(alone, device="cpu", config_file=config), GAN)
