"""tools/benchmark.py --disentangle: the measures, checked on generators whose answers are known, and the tool.

Two stand-in generators copy one code into the image (a G that ignores the other code): the benchmark must
score the one that copies the nuisance code as perfect reconstruction that keeps b's camera and none of a's
identity beyond what b's own image carries, and the one that copies the identity code as the real image a.
"""
import dataclasses
import json
import os

import pytest
import torch

from isgan_torchreid.benchmarks import benchmark_main, disentangle
from isgan_torchreid.benchmarks.disentangle import (MeasuredSplit, Settings, _augment, by_camera_of, by_camera_table,
                                                    choose_subset, disentangle_table, measure, nuisance_factors,
                                                    training_split)
from isgan_torchreid.config import load_config
from isgan_torchreid.data.build import IMAGENET_MEAN, IMAGENET_STD, build_data
from isgan_torchreid.deploy import load_gan
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.visualize import denormalize
from isgan_torchreid.engine.plan import RunLayout

from conftest import CONFIGS, TINY, make_run


@pytest.fixture(scope="module")
def run(data_root, module_dir):
    """A run folder with a stage-2 checkpoint of random weights, and the test split of its data."""
    weights = make_run(str(module_dir), data_root, "isgan", 2)
    os.link(weights, RunLayout(os.path.dirname(os.path.dirname(weights))).latest(2))
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), TINY + ["DATA.ROOT", data_root])
    dm = build_data(cfg).manager
    query, gallery = dm.fetch_test_loaders("synthperson")
    return {"weights": weights, "dir": os.path.dirname(os.path.dirname(weights)), "query": query,
            "gallery": gallery, "train": dm.train_loader.dataset.train}


class CopyingGAN:
    """A GAN whose decoder returns the image stored in one of the two codes; E_R is the real model's."""

    def __init__(self, gan, copies):
        self.gan, self.copies, self.model, self.device = gan, copies, gan.model, gan.device

    def images(self, paths):
        return self.gan.images(paths)

    def encode(self, imgs):
        identity, nuisance = self.gan.encode(imgs)
        code = imgs.flatten(1)
        return (code, nuisance) if self.copies == "identity" else (identity, code)

    def decode(self, identity, nuisance):
        code = identity if self.copies == "identity" else nuisance
        return denormalize(code.view(-1, 3, 128, 64), IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def subset(run):
    settings = Settings(ids=6, pairs=12, train_images=30, probe_steps=20)
    return choose_subset(run["query"], run["gallery"], run["train"], settings), settings


def test_choose_subset_is_deterministic_and_pairs_differ_in_identity_and_camera(run, subset):
    chosen, settings = subset
    again = choose_subset(run["query"], run["gallery"], run["train"], settings)
    assert chosen == again
    assert len({item[1] for item in chosen.query}) == 6 and len(chosen.pairs) == 12 and len(chosen.train) == 30
    assert {item[1] for item in chosen.gallery} == {item[1] for item in chosen.query}
    for i, j in chosen.pairs:
        assert chosen.query[i][1] != chosen.query[j][1] and chosen.query[i][2] != chosen.query[j][2]
    one_camera = [item for item in run["query"] if item[2] == 0]
    with pytest.raises(ISGANError, match="no two of them seen by different cameras"):
        choose_subset(one_camera, run["gallery"], run["train"], settings)


def test_training_split_holds_out_one_query_image_per_camera_of_each_identity(run):
    train = run["train"]
    query, gallery = training_split(train, seed=0)
    assert training_split(train, seed=0) == (query, gallery)
    cameras = {}
    for item in train:
        cameras.setdefault(item[1], set()).add(item[2])
    multi = {pid for pid, cams in cameras.items() if len(cams) >= 2}
    assert multi and sorted((item[1], item[2]) for item in query) == sorted((p, c) for p in multi for c in cameras[p])
    paths = [item[0] for item in query + gallery]
    assert len(set(paths)) == len(paths)  # queries and gallery do not overlap
    assert sorted(paths) == sorted(item[0] for item in train if item[1] in multi)
    assert training_split(train, seed=1) != (query, gallery)


def test_settings_name_the_identities_to_measure():
    with pytest.raises(ISGANError, match="identities 'val': measure one of test, train"):
        Settings(identities="val")


def test_a_generator_copying_the_nuisance_code_reconstructs_and_keeps_bs_image(run, subset):
    chosen, settings = subset
    r = measure(CopyingGAN(load_gan(run["weights"], device="cpu"), "nuisance"), chosen, settings)
    assert r["recon_l1"] < 1e-5 and r["recon_vs_camera_mean"] < 1e-4
    assert r["delta_identity_swap"] < 1e-6 and r["delta_nuisance_swap"] > 0.05
    assert r["probe_auto_vs_b"] == r["probe_real_id_vs_b"]  # its reconstruction is a's real image
    # G(id_a, nu_b) is b's image: the probe sees b's camera, view... exactly as often as on the real b
    assert r["factors"] == ["camera", "occluded", "view"]
    for name in r["factors"]:
        if r[f"pairs_{name}"]:
            assert r[f"transfer_{name}"] == r[f"probe_real_{name}_vs_other"], name
            assert r[f"probe_auto_{name}_vs_other"] == r[f"probe_real_{name}_vs_other"], name  # G(id_b, nu_b) is b
    assert r["pairs_camera"] == len(chosen.pairs) and r["pairs_view"] > 0


def test_a_generator_copying_the_identity_code_is_scored_as_the_real_image(run, subset):
    chosen, settings = subset
    r = measure(CopyingGAN(load_gan(run["weights"], device="cpu"), "identity"), chosen, settings)
    assert r["recon_l1"] < 1e-5 and r["delta_nuisance_swap"] < 1e-6 and r["delta_identity_swap"] > 0.05
    # G(id_a, nu_b) is a's image: retention equals the real image's, by E_R and by the probe
    assert r["er_retention_vs_b"] == r["er_real_vs_b"] == r["er_auto_vs_b"]
    assert r["probe_retention_vs_b"] == r["probe_real_id_vs_b"] == r["probe_auto_vs_b"]
    assert r["er_retention_vs_b_corrected"] == pytest.approx(2 * r["er_retention_vs_b"] - 1)
    # camera by camera: every image reconstructed exactly; the pairs' verdicts split by b's camera add up
    cams = r["by_camera"].values()
    assert sum(c["images"] for c in cams) == len(chosen.query) + len(chosen.gallery)
    assert all(c["recon_l1"] < 1e-5 for c in cams)
    assert sum(c["pairs"] for c in cams) == len(chosen.pairs)
    for key in ("er_retention_vs_b", "probe_retention_vs_b"):
        total = sum(c["pairs"] * c[key] for c in cams if c["pairs"])
        assert total == pytest.approx(len(chosen.pairs) * r[key]), key


def test_cue_probes_score_a_copy_of_a_as_the_real_image_and_reduce_the_image_as_named(run, subset):
    chosen, settings = subset
    r = measure(CopyingGAN(load_gan(run["weights"], device="cpu"), "identity"), chosen,
                dataclasses.replace(settings, cues=True))
    for cue in disentangle.CUES:
        assert r[f"cue_{cue}_retention_vs_b"] == r[f"cue_{cue}_real_vs_b"] == r[f"cue_{cue}_auto_vs_b"], cue
    assert "probe on gray only" in disentangle_table(r) and "probe on bands only" in disentangle_table(r)
    x = torch.rand(2, 3, 64, 32)
    bands = disentangle.band_colours(x)
    assert bands.shape == x.shape and torch.equal(bands[..., :8, :], bands[..., :1, :1].expand(-1, -1, 8, 32))
    assert torch.allclose(bands.mean((2, 3)), x.mean((2, 3)), atol=1e-6)
    gray = disentangle.CUES["gray"](x)
    levels = [gray[:, c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in range(3)]
    assert torch.allclose(levels[0], levels[2], atol=1e-6)  # one grey level in every channel


def test_by_camera_splits_images_by_their_camera_and_swaps_by_the_nuisance_codes_camera():
    cams = torch.tensor([0, 0, 1, 2])  # four test images
    recon, camera_mean = torch.tensor([0.1, 0.3, 0.2, 0.4]), torch.tensor([0.4, 0.4, 0.4, 0.5])
    nu_cams = torch.tensor([1, 1, 0])  # three pairs: b of the first two seen by camera 2, of the third by camera 1
    er, probe = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    r = by_camera_of(cams, recon, camera_mean, nu_cams, er, probe)
    assert list(r) == ["camera 1", "camera 2", "camera 3"]
    assert r["camera 1"] == pytest.approx({"images": 2, "recon_l1": 0.2, "camera_mean_l1": 0.4,
                                           "recon_vs_camera_mean": 0.5, "pairs": 1, "er_retention_vs_b": 1.0,
                                           "probe_retention_vs_b": 0.0})
    assert r["camera 2"]["pairs"] == 2 and r["camera 2"]["er_retention_vs_b"] == 0.5
    assert r["camera 2"]["probe_retention_vs_b"] == 1.0
    assert r["camera 3"]["pairs"] == 0 and r["camera 3"]["er_retention_vs_b"] is None
    table = by_camera_table(r)
    assert "camera 3" in table and "0.50" in table


def test_trivial_predictors_are_the_mean_images(run, subset):
    chosen, settings = subset
    one_image = MeasuredSplit(chosen.query, chosen.gallery, [chosen.query[0]], chosen.pairs)
    r = measure(CopyingGAN(load_gan(run["weights"], device="cpu"), "identity"), one_image, settings)
    gan = load_gan(run["weights"], device="cpu")
    paths = [item[0] for item in chosen.query + chosen.gallery]
    real = denormalize(gan.images(paths), IMAGENET_MEAN, IMAGENET_STD)
    expected = (real - real[0]).abs().mean().item()  # the only training image is every camera's mean
    assert r["mean_image_l1"] == pytest.approx(expected, rel=1e-5)
    assert r["camera_mean_l1"] == pytest.approx(expected, rel=1e-5)


def test_the_probe_learns_identities_from_the_gallery_and_nuisance_from_the_training_images_too(run, subset,
                                                                                                monkeypatch):
    chosen, settings = subset
    seen = {}

    def capture(images, labels, heads, steps, seed, device):
        seen.update(images=images, labels=labels, heads=heads, steps=steps)
        return real_train_probe(images, labels, heads, steps, seed, device)

    real_train_probe = disentangle.train_probe
    monkeypatch.setattr(disentangle, "train_probe", capture)
    measure(CopyingGAN(load_gan(run["weights"], device="cpu"), "identity"), chosen, settings)
    n_gallery, n_train = len(chosen.gallery), len(chosen.train)
    assert seen["images"].shape[0] == n_gallery + n_train and seen["steps"] == settings.probe_steps
    identity = seen["labels"]["identity"]
    assert (identity[:n_gallery] >= 0).all() and (identity[n_gallery:] == -1).all()  # test identities only
    gallery_cams = {item[2] for item in chosen.gallery}
    train_cams = torch.unique(seen["labels"]["camera"][n_gallery:])
    assert (train_cams >= 0).all() and len(train_cams) >= 2 and len(gallery_cams) >= 2
    assert (seen["labels"]["view"][n_gallery:] >= 0).any()  # the training images' factors.json entries


def test_nuisance_factors_come_from_the_datasets_factors_file(run, tmp_path):
    paths = [item[0] for item in run["query"][:3]] + [str(tmp_path / "query" / "0001_c1s1_000001_00.jpg")]
    factors = nuisance_factors(paths)
    assert sorted(factors) == ["occluded", "view"]  # the camera is left out: the file name has it
    root = os.path.dirname(os.path.dirname(paths[0]))
    with open(os.path.join(root, "factors.json")) as f:
        stored = json.load(f)
    for k, path in enumerate(paths[:3]):
        assert factors["view"][k] == stored["query/" + os.path.basename(path)]["view"]
    assert factors["view"][3] is None  # a dataset without factors.json
    assert nuisance_factors(paths[3:]) == {}


def test_augment_keeps_shape_and_colours():
    x = torch.rand(4, 3, 16, 8)
    y = _augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert set(y.unique().tolist()) <= set(x.unique().tolist())  # flips and shifts only move pixels


def test_tool_writes_table_and_json(run, tmp_path, capsys):
    out = str(tmp_path / "d.json")
    result = benchmark_main(["--disentangle", run["dir"], "--ids", "4", "--pairs", "5", "--train-images", "20",
                             "--probe-steps", "3", "--cues", "--out", out])
    printed = capsys.readouterr().out
    assert "recon / camera mean" in printed and "has b's camera" in printed and "stage 2, epoch 1" in printed
    assert "G(id_b, nu_b)" in printed
    assert "probe on gray only" in printed and "probe on bands only" in printed
    assert "pairs with nu_b from it" in printed
    with open(out) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert saved["test_ids"] == 4 and saved["pairs"] == 5 and saved["dataset"] == "synthperson"
    for key in ("er_retention_vs_b", "probe_retention_vs_b", "nuisance_transfer", "transfer_camera",
                "probe_real_id_accuracy", "cue_gray_retention_vs_b", "cue_bands_real_vs_b",
                "probe_auto_camera_vs_other"):
        assert 0 <= saved[key] <= 1
    assert saved["cues"] is True
    assert os.listdir(tmp_path) == ["d.json"]


def test_tool_measures_the_training_identities_on_held_out_queries(run, tmp_path, capsys, monkeypatch):
    seen = {}

    def capture(gan, subset, settings):
        seen.update(subset=subset, settings=settings)
        return real_measure(gan, subset, settings)

    real_measure = disentangle.measure
    monkeypatch.setattr(disentangle, "measure", capture)
    out = str(tmp_path / "d.json")
    result = benchmark_main(["--disentangle", run["dir"], "--identities", "train", "--ids", "4", "--pairs", "5",
                             "--train-images", "20", "--probe-steps", "3", "--out", out])
    assert "4 training (held-out queries) identities" in capsys.readouterr().out
    assert result["identities"] == "train" and result["test_ids"] == 4
    subset, train_paths = seen["subset"], {item[0] for item in run["train"]}
    queries = {item[0] for item in subset.query}
    assert queries <= train_paths and {item[0] for item in subset.gallery} <= train_paths
    assert not queries & {item[0] for item in subset.train}  # the queries are held out of the probe's images
    pids = {item[1] for item in subset.query}
    assert {item[1] for item in subset.gallery} == pids and len(pids) == 4


@pytest.mark.parametrize("argv, message", [
    (["--disentangle", "EMPTY"], "no stage3/ or stage2/ latest.pth.tar there"),
    (["--disentangle", "RUN", "--ids", "1"], "--ids 1: use a positive number of at least 2"),
    (["--disentangle", "RUN", "--out", "x.txt"], "name it FILE.json"),
    (["--inference"], "needs --config-file"),
])
def test_tool_errors_are_one_line(run, tmp_path, argv, message):
    argv = [str(tmp_path) if a == "EMPTY" else run["dir"] if a == "RUN" else a for a in argv]
    with pytest.raises(ISGANError, match=message):
        benchmark_main(argv + ["--debug"])
