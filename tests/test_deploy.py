"""Trained models leave the trainer: torchreid interop, encoder files, load_encoder/embed, extract.py, export.

The checkpoints are the engine's own (``save_training_state`` at the stage's end on the tiny config: ``latest`` and
its hard link ``model.pth.tar-1``; ResNet-18 at 128x64, default parts so torchreid's factories fit them), with
every weight perturbed away from its initialisation so that a skipped tensor shows. ResNet-50/34 models are
checked without building them twice.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchreid
from PIL import Image

from isgan_torchreid import cli, storage
from isgan_torchreid.config import load_config
from isgan_torchreid.deploy import (Encoder, embed, encoder_spec, encoder_state, list_images, load_encoder,
                                    market_labels, read_encoder_file, save_encoder)
from isgan_torchreid.deploy import embedding as embed_module
from isgan_torchreid.deploy.export import export_onnx, export_torchscript
from isgan_torchreid.engine import checkpoint as ckpt
from isgan_torchreid.engine.plan import RunLayout
from isgan_torchreid.engine.evaluation import extract_features
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import ISGAN, build_model

from conftest import CONFIGS, REPO, TINY

FACTORY = {"isgan": "isgan_r18", "mgn": "mgn_r18"}


def descriptor_keys(state):
    return sorted(encoder_state(state))


def perturb_(model, seed, calibrate=True):
    """Move every tensor away from its initialisation as training would: parameters by noise (BN 1/0 included),
    BN statistics by running the model in train mode (so eval-mode activations stay of order 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = (p.std().item() if p.numel() > 1 else 0) or 0.5  # BN weights/biases start constant
            p.add_(0.1 * scale * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.add_(0.01 * torch.randn(m.running_mean.shape, generator=gen))
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2 if calibrate else 0):
            model(torch.randn(8, 3, 128, 64, generator=gen))  # runs trunk + E_R
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1
    model.eval()


@pytest.fixture(scope="module")
def runs(data_root, module_dir):
    """name -> (cfg, data manager, model, OUTPUT_DIR) of the engine's stage-1 checkpoints (latest + kept)."""
    made = {}

    def make(name):
        if name not in made:
            out = str(module_dir / name)
            opts = TINY + ["DATA.ROOT", data_root, "OUTPUT_DIR", out, "MODEL.NAME", name, "TRAIN.STAGES", "[1]"]
            cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), opts)
            device, (dm, _) = cli.setup(cfg)  # writes OUTPUT_DIR/config.yaml, as train.py does
            torch.manual_seed(0)
            model = build_model(cfg, dm.num_train_pids)
            perturb_(model, 1)
            engine = StagedEngine(cfg, dm, model, device)
            engine.enter_stage(1)
            ckpt.save_training_state(engine, 1)  # the stage's last epoch: model.pth.tar-1 is a hard link of latest
            assert os.path.samefile(checkpoint_path(out, "latest"), checkpoint_path(out, "kept"))
            save_encoder(model, cfg, os.path.join(RunLayout(out).stage_dir(1), "encoder.safetensors"))
            made[name] = cfg, dm, model.eval(), out
        return made[name]
    return make


def gallery_loader(dm):
    return dm.test_loader[dm.sources[0]]["gallery"]


def gallery_paths(dm, n=None):
    paths = [item[0] for item in gallery_loader(dm).dataset.data]
    return paths[:n] if n else paths


def checkpoint_path(out, kind):
    folder = RunLayout(out).stage_dir(1)
    return os.path.join(folder, {"latest": "latest.pth.tar", "kept": "model.pth.tar-1",
                                 "encoder": "encoder.safetensors"}[kind])


# ---------------------------------------------------------------- torchreid interop

@pytest.mark.parametrize("name", ["isgan", "mgn"])
def test_engine_checkpoints_store_weights_under_state_dict(runs, name):
    _, _, model, out = runs(name)
    state = torch.load(checkpoint_path(out, "latest"), map_location="cpu", weights_only=True)
    assert "model" not in state and state["state_dict"].keys() == model.state_dict().keys()


@pytest.mark.parametrize("name,kind", [("isgan", "latest"), ("isgan", "kept"), ("isgan", "encoder"),
                                       ("mgn", "latest"), ("mgn", "encoder")])
def test_torchreid_load_pretrained_weights_applies_every_descriptor_tensor(runs, name, kind):
    _, _, model, out = runs(name)
    path = checkpoint_path(out, kind)
    torch.manual_seed(7)
    target = torchreid.models.build_model(FACTORY[name], num_classes=1, pretrained=False)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    torchreid.utils.load_pretrained_weights(target, path)
    after, trained = target.state_dict(), model.state_dict()
    keys = descriptor_keys(after)
    assert len(keys) == len(descriptor_keys(trained)) > 100
    unchanged = [k for k in keys if torch.equal(after[k], before[k])]
    assert unchanged == []  # no silent skip
    assert all(torch.equal(after[k], trained[k]) for k in keys)


@pytest.mark.parametrize("name,kind", [("isgan", "latest"), ("isgan", "encoder"), ("mgn", "kept")])
def test_feature_extractor_equals_unflipped_features(runs, name, kind):
    _, dm, _, out = runs(name)
    path = checkpoint_path(out, kind)
    paths = gallery_paths(dm, 6)
    extractor = torchreid.utils.FeatureExtractor(model_name=FACTORY[name], model_path=path, image_size=(128, 64),
                                                 device="cpu", verbose=False)
    theirs = extractor(paths)
    ours = embed(load_encoder(path, "cpu"), paths, flip=False, normalize=False)
    assert theirs.shape == ours.shape == (6, 2048)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", ["isgan_r50", "isgan_r34", "mgn_r50"])
def test_resnet50_and_34_factories_take_every_saved_descriptor_tensor(factory):
    """What torchreid's loader matches (name and shape) for the larger backbones, without allocating them."""
    backbone = {"50": "resnet50", "34": "resnet34"}[factory[-2:]]
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"),
                      ["MODEL.NAME", factory.split("_")[0], "MODEL.BACKBONE", backbone, "MODEL.PRETRAINED", "False",
                       "TRAIN.STAGES", "[1]", "DATA.HEIGHT", "384", "DATA.WIDTH", "128"])
    with torch.device("meta"):
        ours = build_model(cfg, 5).state_dict()  # what the engine saves under state_dict
        theirs = torchreid.models.build_model(factory, num_classes=1, pretrained=False).state_dict()
        encoder = Encoder(encoder_spec(cfg)).state_dict()
    keys = descriptor_keys(ours)
    assert keys == sorted(encoder) and len(keys) > 200
    assert all(k in theirs and theirs[k].shape == ours[k].shape for k in keys)


def test_resnet50_encoder_file_size_and_torchreid_load(tmp_path):
    """ResNet-50 encoder file ~ 4 bytes per parameter; its engine-format checkpoint loads through torchreid."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"),
                      ["MODEL.NAME", "mgn", "MODEL.BACKBONE", "resnet50", "MODEL.PRETRAINED", "False",
                       "TRAIN.STAGES", "[1]", "DATA.HEIGHT", "384", "DATA.WIDTH", "128"])
    torch.manual_seed(0)
    model = build_model(cfg, 5)
    perturb_(model, 2, calibrate=False)
    path = save_encoder(model, cfg, str(tmp_path / "encoder.safetensors"))
    encoder = {k: v for k, v in model.state_dict().items() if k in encoder_state(model.state_dict())}
    params = sum(p.numel() for n, p in model.named_parameters() if n in encoder)
    assert 60e6 < params < 80e6  # trunk + 3 branches + 8 reductions
    assert abs(os.path.getsize(path) / (4 * params) - 1) < 0.01
    assert os.listdir(tmp_path) == ["encoder.safetensors"]  # no temp file left

    latest = str(tmp_path / "latest.pth.tar")
    storage.save_checkpoint({"state_dict": model.state_dict(), "epoch": 1}, latest)
    target = torchreid.models.build_model("mgn_r50", num_classes=1, pretrained=False)
    torchreid.utils.load_pretrained_weights(target, latest)
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder.items())


def test_torchreid_format_checkpoint_loads_into_our_models(runs, tmp_path):
    """{'state_dict': ...} with DataParallel 'module.' prefixes, written by torchreid's own save_checkpoint."""
    _, dm, model, out = runs("isgan")
    weights = {f"module.{k}": v for k, v in model.state_dict().items()}
    torchreid.utils.save_checkpoint({"state_dict": weights, "epoch": 3, "rank1": np.float32(0.5), "optimizer": {}},
                                    str(tmp_path), is_best=False)
    path = str(tmp_path / "model.pth.tar-3")
    encoder = load_encoder(path, "cpu", spec={"height": 128, "width": 64})
    reference = load_encoder(checkpoint_path(out, "encoder"), "cpu")
    paths = gallery_paths(dm, 4)
    torch.testing.assert_close(embed(encoder, paths), embed(reference, paths), rtol=0, atol=0)
    # the project's full models load it too (tools/test.py and TRAIN.INIT_WEIGHTS use this path)
    fresh = ISGAN(dm.num_train_pids, backbone="resnet18", pretrained=False, height=128, width=64)
    assert ckpt.load_weights(fresh, ckpt.model_state(storage.load_checkpoint(path)), verbose=False) == []


# ---------------------------------------------------------------- encoder file, load_encoder

def test_encoder_file_holds_the_descriptor_only(runs):
    from safetensors import safe_open

    cfg, _, model, out = runs("isgan")
    path = checkpoint_path(out, "encoder")
    with safe_open(path, framework="pt") as f:  # readable without this project
        keys, metadata = sorted(f.keys()), f.metadata()
    assert keys == descriptor_keys(model.state_dict())
    assert not any(k.startswith(("encoder_r.classifiers", "encoder_u", "generator", "discriminator")) for k in keys)
    assert metadata["format"] == "isgan-torchreid-encoder/1"
    spec = {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    assert spec == {"backbone": "resnet18", "parts": [1, 2, 3], "id_dim": 256, "height": 128, "width": 64,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "flip": True, "normalize": True}
    assert read_encoder_file(path)[1] == spec == encoder_spec(cfg)


def test_load_encoder_every_kind_gives_the_same_encoder(runs, tmp_path, capsys):
    cfg, dm, model, out = runs("isgan")
    paths = gallery_paths(dm, 3)
    reference = embed(load_encoder(checkpoint_path(out, "encoder"), "cpu"), paths)
    # weights away from their OUTPUT_DIR (no config.yaml): spec inferred from the tensors + factory defaults
    weights = encoder_state(model.state_dict())
    alone = str(tmp_path / "copied.pth.tar")
    storage.save_checkpoint({"state_dict": weights}, alone)
    inferred = load_encoder(alone, "cpu")
    assert "holds no encoder spec" in capsys.readouterr().out
    assert inferred.spec["backbone"] == "resnet18" and (inferred.spec["height"], inferred.spec["width"]) == (384, 128)
    # with the encoder_spec entry (what the engine can store), no config.yaml is needed
    with_spec = str(tmp_path / "with_spec.pth.tar")
    storage.save_checkpoint({"state_dict": weights, "encoder_spec": encoder_spec(cfg)}, with_spec)
    # old checkpoints keep the weights under 'model'
    old = str(tmp_path / "old.pth.tar")
    storage.save_checkpoint({"model": weights, "encoder_spec": encoder_spec(cfg)}, old)
    for path in (checkpoint_path(out, "latest"), with_spec, old):
        encoder = load_encoder(path, "auto")
        assert isinstance(encoder, Encoder) and not encoder.training
        assert encoder.spec == encoder_spec(cfg)  # from config.yaml (same config hash) or the entry
        torch.testing.assert_close(embed(encoder, paths), reference, rtol=0, atol=0)
    assert capsys.readouterr().out == ""  # nothing was guessed


def test_load_encoder_refuses_what_does_not_fit(runs, tmp_path):
    _, _, model, out = runs("isgan")
    with pytest.raises(ISGANError, match=r"does not fit a resnet18 encoder with parts \[1, 2\].* 66 unused.*spec="
                       ) as err:
        load_encoder(checkpoint_path(out, "encoder"), "cpu", spec={"parts": [1, 2]})
    assert "\n" not in str(err.value)
    osnet = str(tmp_path / "osnet.pth")
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, osnet)
    with pytest.raises(ISGANError, match="no IS-GAN/MGN identity encoder.*FeatureExtractor"):
        load_encoder(osnet)
    broken = str(tmp_path / "encoder.safetensors")
    with open(checkpoint_path(out, "encoder"), "rb") as f:
        data = f.read()
    with open(broken, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ISGANError, match="corrupt safetensors file"):
        load_encoder(broken)


def test_embed_equals_the_evaluators_features(runs):
    """embed() is exactly what tools/test.py evaluates: extract_features on the data manager's test loader."""
    cfg, dm, model, out = runs("isgan")
    query = dm.test_loader[dm.sources[0]]["query"]
    loader = torch.utils.data.DataLoader(query.dataset, batch_size=4)  # its dataset and transform, several batches
    expected, pids, camids = extract_features(model, loader, torch.device("cpu"), cfg.TEST.FLIP, cfg.TEST.NORMALIZE)
    paths = [item[0] for item in query.dataset.data]
    ours = embed(load_encoder(checkpoint_path(out, "encoder"), "cpu"), paths, batch_size=4)
    assert ours.shape == expected.shape == (len(paths), 2048) and len(paths) > 8
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    labels = market_labels(paths)
    np.testing.assert_array_equal(labels[0], pids)
    np.testing.assert_array_equal(labels[1], camids)
    # images already transformed, and PIL images, give the same descriptors
    encoder = load_encoder(checkpoint_path(out, "encoder"), "cpu")
    tensors = torch.stack([embed_module.test_transform(encoder.spec)(embed_module.read_image(p)) for p in paths[:5]])
    torch.testing.assert_close(embed(encoder, tensors), ours[:5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embed(encoder, [Image.open(p) for p in paths[:2]]), ours[:2], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- extract.py

def bad_images(folder):
    """A zero-byte, a truncated and a non-image .jpg."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    with open(os.path.join(folder, "text.jpg"), "w") as f:
        f.write("not an image")
    return [os.path.join(folder, n) for n in ("empty.jpg", "text.jpg")]


def test_extract_tool_walks_skips_bad_images_and_streams(runs, tmp_path, monkeypatch, capsys):
    _, dm, _, out = runs("isgan")
    images = tmp_path / "images"
    good = gallery_paths(dm, 7)
    for i, path in enumerate(good):  # nested folders
        folder = images / f"cam{i % 2}" / "sub"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder)
    with open(good[0], "rb") as f:
        data = f.read()
    truncated = images / "cam0" / "0001_c1s1_000001_00.jpg"
    truncated.write_bytes(data[:len(data) // 3])
    bad = bad_images(str(images / "cam1")) + [str(truncated)]
    sizes = []
    real = embed_module.descriptor

    def recording(*args):  # size of the features on disk whenever a batch is embedded
        sizes.append(sum(os.path.getsize(p) for p in (tmp_path / "feats").glob("*.features.tmp.*")))
        return real(*args)

    monkeypatch.setattr(embed_module, "descriptor", recording)
    weights = checkpoint_path(out, "encoder")
    feats = str(tmp_path / "feats" / "gallery.npz")
    cli.extract_main(["--weights", weights, "--images", str(images), "--out", feats, "--batch-size", "3",
                      "--workers", "0"])
    printed = capsys.readouterr().out
    assert "skipped 3 unreadable image(s) of 10" in printed and "7 of 10 images" in printed
    # features reach the disk batch by batch: before each batch, those of the earlier ones are there
    assert len(sizes) >= 3 and sizes[0] == 0 and all(b > a for a, b in zip(sizes, sizes[1:]))
    assert all(size % (2048 * 4) == 0 for size in sizes)
    assert os.listdir(tmp_path / "feats") == ["gallery.npz"]  # no temp file left

    with np.load(feats) as archive:
        assert sorted(archive.files) == ["bad_paths", "camids", "features", "paths", "pids", "spec"]
        paths = list(archive["paths"])
        assert sorted(os.path.basename(p) for p in paths) == sorted(os.path.basename(p) for p in good)
        assert paths == [p for p in list_images(str(images)) if p not in bad]  # input order
        assert sorted(archive["bad_paths"]) == sorted(bad)
        expected = embed(load_encoder(weights, "cpu"), paths)
        torch.testing.assert_close(torch.from_numpy(archive["features"]), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(archive["pids"], market_labels(paths)[0])
        assert json.loads(str(archive["spec"]))["flip"] is True
        with zipfile.ZipFile(feats) as z:
            assert z.getinfo("features.npy").compress_type == zipfile.ZIP_STORED


def test_extract_from_a_list_with_workers(runs, tmp_path):
    _, dm, _, out = runs("mgn")
    good = gallery_paths(dm, 4)
    listing = tmp_path / "list.txt"
    listing.write_text("# gallery\n" + "\n".join(good + bad_images(str(tmp_path / "bad"))) + "\n\n")
    feats = str(tmp_path / "f.npz")
    (tmp_path / f"f.npz.tmp.{2 ** 22 + 1}").write_bytes(b"debris of a killed run")  # no such pid
    summary = cli.extract_main(["--weights", checkpoint_path(out, "latest"), "--images", str(listing), "--out", feats,
                                "--workers", "1", "--no-flip"])
    assert summary["embedded"] == 4 and summary["skipped"] == 2
    assert not (tmp_path / f"f.npz.tmp.{2 ** 22 + 1}").exists()
    with np.load(feats) as archive:
        expected = embed(load_encoder(checkpoint_path(out, "latest"), "cpu"), good, flip=False)
        torch.testing.assert_close(torch.from_numpy(archive["features"]), expected, rtol=1e-5, atol=1e-6)


def test_extract_user_errors_are_one_line(runs, tmp_path, capsys):
    _, _, _, out = runs("mgn")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in [(["--images", str(empty)], "no images under"),
                           (["--images", str(tmp_path / "nope")], "neither a folder nor a list file"),
                           (["--images", str(empty), "--out", "x.h5"], None)]:
        with pytest.raises(SystemExit) as exit_info:
            cli.extract_main(["--weights", checkpoint_path(out, "encoder"), *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and (expected is None or expected in err)
    assert market_labels(["a/0002_c1s1_000451_03.jpg", "b/-1_c6s2_1.jpg"])[1].tolist() == [0, 5]
    assert market_labels(["0002_c1.jpg", "photo.jpg"]) is None


# ---------------------------------------------------------------- export

# (format, height, width, raw): ONNX raw output at the three sizes (H/16 = 24, 16, 8 rows: stripes of 3 that
# are not a factor at 256 and 128), each format's evaluated descriptor (flip + L2) once, TorchScript raw once
EXPORTS = [("onnx", 384, 128, True), ("onnx", 256, 128, True), ("onnx", 128, 64, True), ("onnx", 128, 64, False),
           ("torchscript", 256, 128, True), ("torchscript", 128, 64, False)]


@pytest.fixture(scope="module")
def exported(runs, module_dir):
    """(fmt, height, width, raw) -> (path, input (3, 3, H, W), PyTorch output)."""
    _, _, _, out = runs("isgan")
    encoder = load_encoder(checkpoint_path(out, "encoder"), "cpu")
    folder = module_dir / "exported"
    folder.mkdir()
    gen = torch.Generator().manual_seed(3)
    files = {}
    for fmt, height, width, raw in EXPORTS:
        x = torch.randn(3, 3, height, width, generator=gen)
        expected = embed(encoder, x, flip=not raw, normalize=not raw)
        path = str(folder / f"{fmt}_{height}x{width}_{'raw' if raw else 'desc'}")
        (export_onnx if fmt == "onnx" else export_torchscript)(encoder, path, height, width, raw=raw)
        files[fmt, height, width, raw] = path, x, expected
    return files


def _run(fmt, path, x):
    if fmt == "onnx":
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks torch.jit as deprecated
        return torch.jit.load(path)(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_at_three_sizes_with_dynamic_batch(exported, fmt):
    for (f, height, width, raw), (path, x, expected) in exported.items():
        if f != fmt:
            continue
        for batch in (1, 3):  # the export ran with batch 2
            got = _run(fmt, path, x[:batch])
            assert got.shape == (batch, 2048)
            assert (got - expected[:batch]).abs().max().item() <= 1e-4, (height, width, raw)


def test_exported_files_run_without_the_project(exported, tmp_path):
    """A fresh interpreter without the project (site-packages without .pth hooks: no editable install)."""
    jobs, cases = [], [exported["onnx", 128, 64, False], exported["torchscript", 128, 64, False]]
    for i, (path, x, expected) in enumerate(cases):
        np.save(tmp_path / f"in{i}.npy", x.numpy())
        jobs.append((("onnx", "torchscript")[i], path, str(tmp_path / f"in{i}.npy"), str(tmp_path / f"out{i}.npy")))
    site = sorted({os.path.dirname(os.path.dirname(m.__file__)) for m in (torch, ort, np)})
    code = textwrap.dedent(f"""
        import importlib.util, json, sys
        sys.path[:0] = {site!r}
        assert importlib.util.find_spec("isgan_torchreid") is None, "the project is importable"
        import numpy as np
        for fmt, model, x, out in {jobs!r}:
            if fmt == "onnx":
                import onnxruntime as ort
                session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
                meta = json.loads(session.get_modelmeta().custom_metadata_map["isgan_torchreid_spec"])
                y = session.run(None, {{"images": np.load(x)}})[0]
            else:
                import torch
                extra = {{"spec.json": ""}}
                module = torch.jit.load(model, _extra_files=extra)
                meta = json.loads(extra["spec.json"])
                with torch.no_grad():
                    y = module(torch.from_numpy(np.load(x))).numpy()
            assert meta["height"] == np.load(x).shape[2], meta
            np.save(out, y)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for (fmt, _, _, out), (path, x, expected) in zip(jobs, cases):
        assert np.abs(np.load(out) - expected.numpy()).max() <= 1e-4, path


def test_export_tool(runs, tmp_path, capsys):
    _, _, _, out = runs("mgn")
    target = str(tmp_path / "encoder.onnx")
    cli.export_main(["--weights", checkpoint_path(out, "kept"), "--format", "onnx", "--out", target])
    assert "input images (B, 3, 128, 64), output features (B, 2048)" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["encoder.onnx"]
    with pytest.raises(SystemExit) as exit_info:
        cli.export_main(["--weights", checkpoint_path(out, "kept"), "--format", "onnx", "--out", target,
                         "--height", "8"])
    assert exit_info.value.code == 2 and "--height 8 is too small" in capsys.readouterr().err


# ---------------------------------------------------------------- no debris

WRITER = """
import sys, time, torch
from isgan_torchreid import storage

def slow_save(obj, f, *args, **kwargs):  # half the payload, then stall: the kill comes mid-write
    f.write(b"PK" + bytes(1 << 20))
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

torch.save = slow_save
storage.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, sys.argv[1])
"""


def test_killed_writer_leaves_previous_checkpoint_and_its_temp_file_is_removed(tmp_path):
    folder = tmp_path / "stage1"
    latest = str(folder / "latest.pth.tar")
    storage.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, latest)
    env = dict(os.environ, PYTHONPATH=REPO)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, latest], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
        temp = folder / f"latest.pth.tar.tmp.{writer.pid}"
        assert temp.stat().st_size > 1 << 20
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.stdout.close()
    state = storage.load_checkpoint(latest)
    assert state["epoch"] == 1 and torch.equal(state["state_dict"]["w"], torch.zeros(3))
    assert temp.exists()  # the dead writer's debris, until the next start
    live = folder / f"results.json.tmp.{os.getpid()}"  # a live writer's temp file stays
    live.write_text("{}")
    assert storage.remove_stale_temp_files(str(tmp_path)) == [str(temp)]
    assert sorted(os.listdir(folder)) == ["latest.pth.tar", live.name]


def test_onnx_through_torch_export(runs, tmp_path):
    """--dynamo: the torch.export-based exporter (onnxscript) gives the same parity and dynamic batch."""
    _, _, _, out = runs("isgan")
    encoder = load_encoder(checkpoint_path(out, "encoder"), "cpu")
    path = export_onnx(encoder, str(tmp_path / "encoder.onnx"), raw=True, dynamo=True)
    x = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(4))
    expected = embed(encoder, x, flip=False, normalize=False)
    for batch in (1, 3):
        assert (_run("onnx", path, x[:batch]) - expected[:batch]).abs().max().item() <= 1e-4
    assert os.listdir(tmp_path) == ["encoder.onnx"]  # weights inside, no external data file


def test_inference_benchmark_at_small_settings(tiny_cfg):
    from isgan_torchreid.benchmarks.inference import bench_inference, inference_tables

    cfg = tiny_cfg("MODEL.PARTS", "[2]")
    rows, sizes, params = bench_inference(cfg, batches=(1, 2), iters=1, warmup=0, threads=1)
    assert [(r[0], r[1]) for r in rows] == [(n, b) for b in (1, 2) for n in ("pytorch eager", "torchscript",
                                                                             "onnxruntime")]
    assert all(ms > 0 and ips > 0 for _, _, ms, ips in rows)
    per_param = {name: bpp for name, _, bpp in sizes}
    assert abs(per_param["safetensors"] - 4) < 0.04 and abs(per_param["torchscript"] - 4) < 0.1
    assert 3.5 < per_param["onnx"] < 4.1  # BN folded into the convolutions
    assert "onnxruntime" in inference_tables(rows, sizes, params)
