"""Tests for denormalisation and the sample-grid PNG writer."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from isgan_torchreid.visualize import denormalize, save_grid

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
PAD = 2  # make_grid's padding between tiles


def test_denormalize_inverts_normalisation_and_clamps():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 4, generator=gen)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(denormalize((x - mean) / std, MEAN, STD), x)
    out = denormalize(torch.full((1, 3, 2, 2), 10.0), MEAN, STD)
    assert out.max() == 1.0
    out = denormalize(torch.full((1, 3, 2, 2), -10.0), MEAN, STD)
    assert out.min() == 0.0


def _read(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_save_grid_layout_and_pixels(tmp_path):
    b, h, w = 3, 8, 4
    real = torch.ones(b, 3, h, w)  # white column
    recon = torch.zeros(b, 3, h, w)  # black column
    shuffled = torch.zeros(b, 3, h, w)
    shuffled[:, 0] = 1.0  # red column
    shuffled[1, :, 0, 0] = 0.5  # one grey pixel in row 1
    path = tmp_path / "new" / "folder" / "grid.png"
    save_grid(str(path), [real, recon, shuffled])
    pixels = _read(path)
    assert pixels.shape == (b * (h + PAD) + PAD, 3 * (w + PAD) + PAD, 3)

    def tile(row, col):
        top, left = PAD + row * (h + PAD), PAD + col * (w + PAD)
        return pixels[top : top + h, left : left + w]

    for row in range(b):
        assert (tile(row, 0) == 255).all()
        assert (tile(row, 1) == 0).all()
        red = tile(row, 2)
        if row == 1:
            assert tuple(red[0, 0]) == (128, 128, 128)
            red = red.reshape(-1, 3)[1:]
        assert (red.reshape(-1, 3) == [255, 0, 0]).all()
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left behind


def test_save_grid_with_titles_and_overwrite(tmp_path):
    b, h, w = 2, 16, 32
    path = tmp_path / "grid.png"
    save_grid(str(path), [torch.zeros(b, 3, h, w)])
    first = _read(path)
    save_grid(str(path), [torch.zeros(b, 3, h, w), torch.zeros(b, 3, h, w)], titles=["real", "fake"])
    pixels = _read(path)
    assert pixels.shape[1] == 2 * (w + PAD) + PAD and pixels.shape[1] != first.shape[1]
    band = pixels.shape[0] - (b * (h + PAD) + PAD)
    assert band > 0
    header = pixels[:band]
    assert (header == 255).any()  # white band
    for col in range(2):  # dark (anti-aliased) text above each column
        assert (header[:, PAD + col * (w + PAD) : (col + 1) * (w + PAD)] < 64).any()
    assert (pixels[band + PAD : band + PAD + h, PAD : PAD + w] == 0).all()


def test_save_grid_clamps_out_of_range(tmp_path):
    path = tmp_path / "grid.png"
    save_grid(str(path), [torch.full((1, 3, 4, 4), 2.0), torch.full((1, 3, 4, 4), -1.0)])
    pixels = _read(path)
    assert (pixels[PAD : PAD + 4, PAD : PAD + 4] == 255).all()
    assert (pixels[PAD : PAD + 4, 2 * PAD + 4 : 2 * PAD + 8] == 0).all()


def test_save_grid_errors(tmp_path):
    path = str(tmp_path / "grid.png")
    with pytest.raises(ValueError):
        save_grid(path, [])
    with pytest.raises(ValueError):
        save_grid(path, [torch.zeros(2, 3, 8, 4), torch.zeros(2, 3, 8, 6)])
    with pytest.raises(ValueError):
        save_grid(path, [torch.zeros(2, 3, 8, 4)], titles=["a", "b"])
    assert not os.listdir(tmp_path)
