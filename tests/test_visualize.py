"""Pictures: the drawing helpers, the part layout, the disentangling maths and tools/visualize.py's subcommands.

The subcommands run on tiny checkpoints built directly (random weights of the tiny config, saved as a run's
stage-2/3 checkpoint beside its config.yaml): the tools' behaviour does not depend on training.
"""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont, features

from isgan_torchreid.config import config_hash, load_config
from isgan_torchreid.data.build import check_datasets
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.losses.shuffle import part_shuffle
from isgan_torchreid.visualize import canvas
from isgan_torchreid.visualize.canvas import (PAD, Tile, denormalize, font, market_label, parse_market_name,
                                              part_mask_bar, save_png, sheet)
from isgan_torchreid.deploy.gan import load_gan
from isgan_torchreid import storage
from isgan_torchreid.engine import checkpoint as ckpt
from isgan_torchreid.visualize.disentangle import (decode_with_classes, interpolated_codes, parse_slots, region_cells,
                                                   region_slots, slot_names, swapped_codes)
from isgan_torchreid.visualize.main import load_images, visualize_main

from conftest import CONFIGS, REPO, TINY, make_run

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def pixels(path_or_picture):
    if isinstance(path_or_picture, Image.Image):
        return np.asarray(path_or_picture.convert("RGB"))
    with Image.open(path_or_picture) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------- canvas

def test_denormalize_inverts_normalisation_and_clamps():
    x = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(denormalize((x - mean) / std, MEAN, STD), x)
    assert denormalize(torch.full((1, 3, 2, 2), 10.0), MEAN, STD).max() == 1.0
    assert denormalize(torch.full((1, 3, 2, 2), -10.0), MEAN, STD).min() == 0.0


def solid(colour, w, h):
    return Image.new("RGB", (w, h), colour)


def test_sheet_places_tiles_without_text():
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 200, 0)
    picture = sheet([[Tile(solid(red, 10, 20)), Tile(solid(blue, 6, 20))], [None, Tile(solid(green, 6, 12))]],
                    min_width=0)
    px = pixels(picture)
    # columns as wide as their widest tile, rows as high as their highest, PAD between and around
    assert px.shape == (PAD + 20 + PAD + 12 + PAD + PAD, PAD + 10 + PAD + 6 + PAD, 3)
    assert (px[PAD:PAD + 20, PAD:PAD + 10] == red).all()
    assert (px[PAD:PAD + 20, 2 * PAD + 10:2 * PAD + 16] == blue).all()
    assert (px[2 * PAD + 20:2 * PAD + 32, 2 * PAD + 10:2 * PAD + 16] == green).all()
    assert (px[2 * PAD + 20:2 * PAD + 32, PAD:PAD + 10] == 255).all()  # the empty cell stays white


def test_sheet_text_adds_bands_and_wraps():
    tiles = [[Tile(solid((0, 0, 0), 64, 128), "pid 2, cam 1"), Tile(solid((0, 0, 0), 64, 128), "cls 3")]]
    bare = pixels(sheet(tiles, min_width=0))
    titled = pixels(sheet(tiles, title="a title", column_titles=["a", "b"], row_labels=["row one"],
                          caption="a caption " * 40, font_size=14, min_width=0))
    assert titled.shape[0] > bare.shape[0] + 4 * 14 and titled.shape[1] > bare.shape[1]  # label column, bands
    assert titled.shape[1] < 2 * bare.shape[1] + 200  # the caption wrapped instead of widening the sheet
    assert (titled[:PAD + 14] < 100).any()  # dark title text
    with pytest.raises(ValueError, match="column titles"):
        sheet(tiles, column_titles=["only one"])


def test_readable_font():
    if features.check("freetype2"):
        assert isinstance(font(16), ImageFont.FreeTypeFont) and font(16).size == 16


def test_part_mask_bar_marks_taken_features():
    cell, height = 10, 60
    # parts (1, 2): features p1g, p2g, p2s1, p2s2; take p2s1 (the upper stripe of the part-2 branch)
    bar = pixels(part_mask_bar((1, 2), [False, False, True, False], height, cell))
    assert bar.shape == (height, 2 * (cell + 3), 3)
    centre = cell // 2 + 1
    assert tuple(bar[height // 2, centre]) == canvas.GREY  # part-1: one own cell
    second = cell + 3 + centre
    assert tuple(bar[height // 4, second]) == canvas.MASK_COLOUR  # upper stripe taken
    assert tuple(bar[3 * height // 4, second]) == canvas.LIGHT  # lower stripe own
    assert tuple(bar[height // 2, cell + 3 + 1]) == canvas.GREY  # the frame: its global feature, own
    taken_global = pixels(part_mask_bar((1, 2), [False, True, False, False], height, cell))
    assert tuple(taken_global[height // 2, cell + 3 + 1]) == canvas.MASK_COLOUR
    with pytest.raises(ValueError):
        part_mask_bar((1, 2), [True], height)


def test_save_png_is_atomic_and_readable(tmp_path):
    path = tmp_path / "new" / "p.png"
    save_png(solid((1, 2, 3), 5, 7), str(path))
    assert pixels(path).shape == (7, 5, 3) and os.listdir(path.parent) == ["p.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_save_png_palette(tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    save_png(picture, str(tmp_path / "rgb.png"))
    save_png(picture, str(tmp_path / "palette.png"), colors=16)
    with Image.open(tmp_path / "palette.png") as img:
        assert img.mode == "P" and len(img.getcolors()) <= 16 and img.size == (30, 40)
    assert os.path.getsize(tmp_path / "palette.png") < os.path.getsize(tmp_path / "rgb.png")


def test_market_names():
    assert parse_market_name("/x/0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("-1_c3s2_000001_00.jpg") == (-1, 3)
    assert parse_market_name("photo.jpg") is None
    assert market_label("a/0012_c4s1_000001_00.jpg") == "pid 12, cam 4" and market_label("x/p.jpg") == "p.jpg"


# ---------------------------------------------------------------- the part layout

def test_slot_names_and_regions_follow_the_parts():
    assert slot_names((1, 2, 3)) == ["p1g", "p2g", "p2s1", "p2s2", "p3g", "p3s1", "p3s2", "p3s3"]
    assert region_slots((1, 2, 3), "upper") == [2, 5] and region_slots((1, 2, 3), "lower") == [3, 7]
    assert region_slots((1, 2, 3), "all") == list(range(8))
    # another layout: the middle stripe of part-3 is in neither half, part-4 splits 2 / 2
    assert region_slots((2, 3), "upper") == [1, 4] and region_slots((2, 3), "lower") == [2, 6]
    assert region_slots((4,), "upper") == [1, 2] and region_slots((4,), "lower") == [3, 4]
    assert region_slots((1,), "upper") == []


def test_parse_slots():
    assert parse_slots(["p2s1", "5"], (1, 2, 3)) == [2, 5]
    assert parse_slots(["lower"], (2,)) == [2]
    with pytest.raises(ISGANError, match=r"--parts upper: MODEL.PARTS \[1\] has no stripe in the upper half"):
        parse_slots(["upper"], (1,))
    with pytest.raises(ISGANError, match=r"--parts 9: .*0=p1g 1=p2g 2=p2s1"):
        parse_slots(["9"], (1, 2, 3))


# ---------------------------------------------------------------- tiny checkpoints

@pytest.fixture(scope="module")
def runs(data_root, module_dir):
    """Checkpoints: IS-GAN stage 2 and stage 1 (default parts), MGN stage 3 (parts [2]); the synthetic data."""
    root = str(module_dir)
    check_datasets(load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root]))
    yield {
        "isgan": make_run(root, data_root, "isgan", 2),
        "stage1": make_run(root, data_root, "isgan_s1", 1),
        "mgn": make_run(root, data_root, "mgn", 3, "MODEL.NAME", "mgn", "MODEL.PARTS", "[2]", "TRAIN.STAGES", "[1]"),
        "query": sorted(os.path.join(data_root, "synthperson", "query", f)
                        for f in os.listdir(os.path.join(data_root, "synthperson", "query"))),
    }


@pytest.fixture(scope="module")
def gan(runs):
    return load_gan(runs["isgan"], device="cpu")


def two_codes(gan, runs):
    imgs, _ = load_images(gan, runs["query"][:2])
    identity, nuisance = gan.encode(imgs)
    return (identity[:1], nuisance[:1]), (identity[1:], nuisance[1:]), imgs


# ---------------------------------------------------------------- the maths of the pictures

@pytest.mark.parametrize("what", ["identity", "nuisance"])
def test_interpolation_of_an_image_with_itself_is_constant(gan, runs, what):
    a, _, _ = two_codes(gan, runs)
    images, classes = decode_with_classes(gan, *interpolated_codes(a, a, 5, what))
    assert images.shape == (5, 3, 128, 64) and len(set(classes.tolist())) == 1
    for row in images[1:]:
        torch.testing.assert_close(row, images[0], rtol=0, atol=1e-6)


def test_interpolation_ends_are_the_sources(gan, runs):
    a, b, _ = two_codes(gan, runs)
    images, classes = decode_with_classes(gan, *interpolated_codes(a, b, 4, "identity"))
    first = gan.decode(*a)
    last, last_class = decode_with_classes(gan, b[0], a[1])  # b's identity with a's nuisance
    torch.testing.assert_close(images[0], first[0])
    torch.testing.assert_close(images[-1], last[0])
    assert classes[-1] == last_class[0]
    assert not torch.allclose(images[0], images[-1])


def test_swapping_all_identity_parts_is_generating_from_b(gan, runs):
    a, b, _ = two_codes(gan, runs)
    all_parts = region_slots(gan.parts, "all")
    swapped = gan.decode(*swapped_codes(a, b, all_parts, "identity", gan.num_features))
    torch.testing.assert_close(swapped, gan.decode(b[0], a[1]))
    swapped = gan.decode(*swapped_codes(a, b, all_parts, "nuisance", gan.num_features))
    torch.testing.assert_close(swapped, gan.decode(a[0], b[1]))


def test_swapping_upper_parts_takes_only_those_features(gan, runs):
    a, b, _ = two_codes(gan, runs)
    identity, nuisance = swapped_codes(a, b, region_slots(gan.parts, "upper"), "identity", gan.num_features)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [2, 5]] = True
    assert torch.equal(identity, part_shuffle(a[0], b[0], mask)) and torch.equal(nuisance, a[1])
    assert not torch.equal(identity, a[0]) and not torch.equal(identity, b[0])


def test_predicted_class_is_the_classifiers_mean_argmax(gan, runs):
    _, _, imgs = two_codes(gan, runs)
    identity, _ = gan.encode(imgs)
    with torch.no_grad():
        _, logits = gan.model.encoder_r(gan.model.backbone(imgs))
    assert gan.predicted_class(identity).tolist() == torch.stack(logits).mean(0).argmax(1).tolist()


# ---------------------------------------------------------------- the subcommands

def draw(tmp_path, *argv):
    out = str(tmp_path / f"{argv[0]}-{len(os.listdir(tmp_path))}.png")
    picture = visualize_main(list(argv) + ["--out", out])
    assert pixels(out).shape == (picture.height, picture.width, 3)
    return pixels(out)


def test_interpolate_writes_one_row_per_kind(runs, tmp_path):
    q = runs["query"]
    args = ["interpolate", "--weights", runs["isgan"], "--a", q[0], "--b", q[3]]
    both = draw(tmp_path, *args, "--steps", "3")
    wider = draw(tmp_path, *args, "--steps", "5")
    one = draw(tmp_path, *args, "--steps", "3", "--what", "identity")
    tile_h, tile_w = 2 * 128, 2 * 64  # 128x64 images enlarged twice
    assert wider.shape[1] - both.shape[1] == 2 * (tile_w + PAD)  # (the caption wraps to the width)
    assert both.shape[1] >= 5 * tile_w and both.shape[0] - one.shape[0] > tile_h


def test_swap_and_grid(runs, tmp_path):
    q = runs["query"]
    swap = draw(tmp_path, "swap", "--weights", runs["isgan"], "--a", q[0], "--b", q[3], "--parts", "lower",
                "--what", "nuisance")
    assert 2 * 256 < swap.shape[0] and 4 * 128 < swap.shape[1]  # 2 rows; input, auto, swapped, other, bar
    by_index = draw(tmp_path, "swap", "--weights", runs["isgan"], "--a", q[0], "--b", q[3], "--parts", "3,7")
    assert by_index.shape[1] == swap.shape[1]
    small = draw(tmp_path, "grid", "--weights", runs["isgan"], "--images", *q[:3])
    large = draw(tmp_path, "grid", "--weights", runs["isgan"], "--images", ",".join(q[:4]))
    assert large.shape[1] - small.shape[1] == 128 + PAD  # one more column of tiles
    assert small.shape[0] > 4 * 256 and large.shape[0] > 5 * 256  # the images' row, then one row per image


def test_rank_several_models(runs, tmp_path):
    topk = 4
    ranked = draw(tmp_path, "rank", "--weights", runs["isgan"], "--weights", runs["mgn"], "--topk", str(topk),
                  "--scale", "1", "--query", "0", runs["query"][5])
    # a row per model and query, each torchreid's strip of the query and its top-k (64x128 images)
    assert ranked.shape[0] > 4 * (128 + PAD) and ranked.shape[1] > (topk + 1) * 64
    r, g, b = (ranked[..., c].astype(int) for c in range(3))
    framed = ((g > 200) & (r < 90) & (b < 90)) | ((r > 200) & (g < 90) & (b < 90))  # green or red (JPEG'd) borders
    assert framed.sum() > 4 * topk * 2 * 128  # every listed image's left and right borders, at least


@pytest.mark.parametrize("key, argv, message", [
    ("stage1", ["interpolate", "--a", "A", "--b", "A"], "stage-1 checkpoint, whose E_U and G are untrained"),
    ("mgn", ["swap", "--a", "A", "--b", "A"], "needs an IS-GAN checkpoint of stage 2 or 3"),
    ("isgan", ["interpolate", "--a", "A", "--b", "/nonexistent.jpg"], "image not found: /nonexistent.jpg"),
    ("isgan", ["interpolate", "--a", "A", "--b", "A", "--steps", "1"], "at least 2 steps"),
    ("isgan", ["grid", "--images", "A"], "two or more images"),
    ("isgan", ["rank", "--query", "99"], "the query set has"),
])
def test_user_errors(runs, tmp_path, key, argv, message):
    argv = [runs["query"][0] if a == "A" else a for a in argv]
    with pytest.raises(ISGANError, match=message):
        visualize_main(argv + ["--weights", runs[key], "--out", str(tmp_path / "x.png"), "--debug"])
    assert not os.listdir(tmp_path)


def test_checkpoint_outside_a_run_needs_a_config(runs, tmp_path):
    alone = tmp_path / "alone.pth.tar"
    os.link(runs["isgan"], alone)
    with pytest.raises(ISGANError, match="not in a run folder with a config.yaml.*--config-file"):
        ckpt.checkpoint_config(str(alone), None, [])
    config = os.path.join(os.path.dirname(os.path.dirname(runs["isgan"])), "config.yaml")
    cfg, state = ckpt.checkpoint_config(str(alone), config, ["DEVICE", "cpu"])
    assert state["config_hash"] == config_hash(cfg) and cfg.DEVICE == "cpu"


def test_tool_help():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "visualize.py"), "swap", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "--parts" in proc.stdout and "config.yaml" in proc.stdout


def test_rank_refuses_an_incomplete_descriptor(runs, tmp_path):
    state = torch.load(runs["mgn"], weights_only=True)
    del state["state_dict"]["encoder_r.reductions.0.0.weight"]
    bad = str(tmp_path / "bad.pth.tar")
    storage.save_checkpoint(state, bad)
    config = os.path.join(os.path.dirname(os.path.dirname(runs["mgn"])), "config.yaml")
    out = tmp_path / "rank.png"
    with pytest.raises(ISGANError, match=f"{bad} does not hold the whole descriptor of this MGN: 1 of its"):
        visualize_main(["rank", "--weights", bad, "--config-file", config, "--out", str(out), "--debug"])
    assert not out.exists()


def test_region_cells_follow_the_grid_rows_after_the_part_features():
    assert region_cells((4, 2), "upper", 8) == [8, 9, 10, 11] and region_cells((4, 2), "lower", 8) == [12, 13, 14, 15]
    assert region_cells((4, 2), "all", 8) == list(range(8, 16))
    assert region_cells((3, 1), "upper", 8) == [8] and region_cells((3, 1), "lower", 8) == [10]
    assert region_cells(None, "upper", 8) == [] and region_cells((4, 2), "chosen features", 8) == []
    # a nuisance code of 8 parts + 8 cells: swapping every part and cell gives the other's code whole
    x, y = (torch.zeros(1, 4), torch.zeros(1, 16 * 3)), (torch.ones(1, 4), torch.arange(48.0)[None])
    _, nuisance = swapped_codes(x, y, region_slots((1, 2, 3), "all") + region_cells((4, 2), "all", 8), "nuisance", 16)
    assert torch.equal(nuisance, y[1])
    _, upper = swapped_codes(x, y, region_slots((1, 2, 3), "upper") + region_cells((4, 2), "upper", 8), "nuisance", 16)
    taken = upper.view(16, 3)[:, 0] != 0
    assert taken.nonzero().flatten().tolist() == [2, 5, 8, 9, 10, 11] and upper.view(16, 3)[2, 0] == 6
