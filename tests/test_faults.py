"""Fault injection: unreadable images, empty or unmatched splits, stuck and orphaned workers, damaged and
unwritable checkpoints, out-of-range values. Each fault is survived or ends in one clear line; none hangs.

Image faults use the tiny synthetic images copied into torchreid's Market-1501 layout (read by torchreid's own
Market1501 class); training runs use a small E_R baseline (BASELINE) on the tiny config.
"""
import errno
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import textwrap
import time
import traceback
import uuid
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from isgan_torchreid import compat, image_files, storage
from isgan_torchreid.cli import build_engine, setup, train_main
from isgan_torchreid.config import get_default_config, in_interval, load_config
from isgan_torchreid.defaults import RANGES
from isgan_torchreid.data import loaders
from isgan_torchreid.data.build import Data, build_data, check_datasets
from isgan_torchreid.engine import checkpoint as ckpt
from isgan_torchreid.engine.plan import RunLayout
from isgan_torchreid.errors import BadImageError, ISGANError

from conftest import CONFIGS, REPO, TINY

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
# the E_R baseline (stage 1 alone) with one 2-stripe branch at 64x32: a training run in seconds
BASELINE = ["MODEL.NAME", "baseline", "TRAIN.STAGES", "[1]", "MODEL.PARTS", "[2]", "DATA.HEIGHT", "64",
            "DATA.WIDTH", "32", "TEST.FLIP", "False"]


# ---------------------------------------------------------------- helpers


def corrupt(path):
    with open(path, "wb") as f:
        f.write(os.urandom(300))  # not an image at all


def zero(path):
    open(path, "wb").close()


def truncate(path, keep=0.6):
    """Cut a file short in place (a JPEG keeps its header, so only decoding notices)."""
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def raised(error_type, call):
    """The ``error_type`` that ``call()`` raises. Its tracebacks are cleared first: they hold the DataLoader
    iterator, which must end its worker now, through reference counting; a later garbage collection was measured
    to stall for 5 s on that worker's shutdown."""
    try:
        call()
    except error_type as e:
        chained = e
        while chained is not None:
            traceback.clear_frames(chained.__traceback__)
            chained = chained.__context__
        return e
    raise AssertionError(f"{call} raised no {error_type.__name__}")


def one_line(message):
    assert "\n" not in message, message
    return message


class Market:
    """The tiny synthetic images copied to ``root/market1501/Market-1501-v15.09.15/``."""

    def __init__(self, tiny_cfg, data_root, root):
        check_datasets(tiny_cfg())  # generates the tiny synthperson in data_root
        self.make_cfg, self.root = tiny_cfg, root
        self.base = root / "market1501" / "Market-1501-v15.09.15"
        for split in SPLITS:
            shutil.copytree(os.path.join(data_root, "synthperson", split), self.base / split)

    def cfg(self, *overrides):
        return self.make_cfg("DATA.ROOT", str(self.root), "DATA.SOURCES", "[market1501]", *overrides)

    def images(self, split):
        """The images torchreid keeps (junk, person id -1, is dropped by its parser), sorted."""
        return [p for p in sorted(glob.glob(str(self.base / split / "*.jpg")))
                if not os.path.basename(p).startswith("-1")]


@pytest.fixture
def market(tiny_cfg, data_root, tmp_path):
    return Market(tiny_cfg, data_root, tmp_path / "reid")


def write_config(path, opts):
    """A YAML config file equal to isgan_synthetic.yaml + ``opts`` (for the command-line tools)."""
    cfg = load_config(os.path.join(CONFIGS, "isgan_synthetic.yaml"), opts)
    path.write_text(cfg.dump())
    return str(path)


# ---------------------------------------------------------------- 1. images


def test_bad_images_are_found_before_training_reported_once_and_left_out(market, capsys):
    train, query, gallery = (market.images(s) for s in SPLITS)
    bad_train = [train[0], train[7], train[13]]
    corrupt(train[0])
    zero(train[7])
    truncate(train[13])
    corrupt(query[0])
    truncate(gallery[5])
    with Image.open(train[13]) as img:  # the truncated JPEG passes a header check...
        img.verify()
    dm, skipped = build_data(market.cfg())  # ...but not the check before training

    out = capsys.readouterr().out
    for path in bad_train + [query[0], gallery[5]]:
        assert out.count(path) == 1, out  # reported once, by path
    assert "left out 5 unreadable image(s)" in out
    assert skipped == {"market1501/train": sorted(bad_train), "market1501/query": [query[0]],
                                 "market1501/gallery": [gallery[5]]}
    dataset = dm.train_loader.dataset
    assert len(dataset.train) == len(train) - 3 and not {item[0] for item in dataset.train} & set(bad_train)
    test_sets = {split: dm.test_loader["market1501"][split].dataset for split in ("query", "gallery")}
    assert query[0] not in {item[0] for item in test_sets["query"].data}
    assert gallery[5] not in {item[0] for item in test_sets["gallery"].data}
    assert sum(len(batch["pid"]) for batch in dm.train_loader) > 0  # an epoch loads; nothing hangs

    # the engine hears of them from the data (cli.build_engine), and says so beside each target's results
    engine = build_engine(market.cfg("TRAIN.STAGES", "[1]"), Data(dm, skipped), torch.device("cpu"), hooks=[])
    assert engine.skipped_images == skipped
    engine.evaluate_targets(key="test")
    assert "(without 1 query and 1 gallery image(s) that cannot be read)" in capsys.readouterr().out


def test_an_identity_left_without_images_is_dropped_and_labels_stay_contiguous(market):
    train = market.images("bounding_box_train")
    lost = [p for p in train if os.path.basename(p).startswith("0003_")]
    for path in lost:
        zero(path)
    dm, skipped = build_data(market.cfg())
    labels = sorted({item[1] for item in dm.train_loader.dataset.train})
    assert labels == list(range(7)) and dm.num_train_pids == 7  # 8 identities, one lost
    assert len(skipped["market1501/train"]) == len(lost) == 6


def test_image_checks_are_cached_per_folder(market, monkeypatch):
    build_data(market.cfg())
    checked = []
    decode = image_files.unreadable
    monkeypatch.setattr(image_files, "unreadable", lambda path: checked.append(path) or decode(path))
    build_data(market.cfg())
    assert checked == []  # nothing decoded again
    train = market.images("bounding_box_train")
    corrupt(train[3])
    assert build_data(market.cfg()).skipped_images == {"market1501/train": [train[3]]}
    assert checked == [train[3]]  # only the changed file


def test_on_bad_image_error_stops_before_training(market, tmp_path, capsys):
    path = market.images("bounding_box_train")[2]
    zero(path)
    with pytest.raises(ISGANError) as info:
        build_data(market.cfg("DATA.ON_BAD_IMAGE", "error"))
    message = one_line(str(info.value))
    assert path in message and "DATA.ON_BAD_IMAGE skip" in message and "bounding_box_train" in message
    cfg = market.cfg("DATA.ON_BAD_IMAGE", "error")
    config = write_config(tmp_path / "error.yaml", [])
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config-file", config, *TINY, "DATA.ROOT", cfg.DATA.ROOT, "DATA.SOURCES", "[market1501]",
                    "OUTPUT_DIR", cfg.OUTPUT_DIR, "DATA.ON_BAD_IMAGE", "error"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and path in err
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "stage1"))  # nothing trained


def test_an_image_that_breaks_during_the_run_is_replaced_or_fatal_never_retried_forever(market, capsys):
    fatal = build_data(market.cfg("DATA.ON_BAD_IMAGE", "error")).manager.train_loader.dataset
    skipping = build_data(market.cfg()).manager.train_loader.dataset
    path, pid = skipping.train[0][:2]
    truncate(path)  # after the check: e.g. a disk fault during a long run
    capsys.readouterr()

    item = skipping[0]  # DATA.ON_BAD_IMAGE skip: another image of the same identity
    assert item["pid"] == pid and item["impath"] != path and item["img"].shape == (3, 128, 64)
    assert skipping[0]["impath"] == item["impath"]
    assert capsys.readouterr().out.count(path) == 1  # reported once

    with pytest.raises(BadImageError) as info:  # DATA.ON_BAD_IMAGE error: one line naming the file
        fatal[0]
    assert path in one_line(str(info.value)) and "truncated" in str(info.value)
    loader = torch.utils.data.DataLoader(fatal, batch_size=2, num_workers=1, sampler=[0, 1])
    error = raised(BadImageError, lambda: next(iter(loader)))  # raised in a worker process
    assert one_line(str(error)).startswith(f"image {path} cannot be read")


def test_torchreid_read_image_retried_forever_and_is_replaced_everywhere(tmp_path, monkeypatch):
    path = str(tmp_path / "empty.jpg")
    zero(path)
    tools = compat._submodule("utils.tools")
    retries = []

    def stop_after_three(*args, **kwargs):
        retries.append(args[0])
        if len(retries) == 3:
            raise InterruptedError("still retrying")

    monkeypatch.setattr(tools, "print", stop_after_three, raising=False)  # torchreid prints on every retry
    with pytest.raises(InterruptedError):
        tools.read_image.__wrapped__(path)  # torchreid's own: no way out but the interruption
    assert "Will redo" in retries[0]
    modules = (tools, compat._submodule("utils"), compat._submodule("data.datasets.dataset"))
    for module in modules:
        with pytest.raises(BadImageError, match="cannot identify image file"):
            module.read_image(path)
    dataset = compat._submodule("data.datasets.dataset").ImageDataset
    patched = [m.read_image for m in modules] + [dataset.__init__]
    compat.apply_patches()  # idempotent: nothing wrapped twice
    assert [m.read_image for m in modules] + [dataset.__init__] == patched


def test_read_image_retries_io_errors_a_bounded_number_of_times(monkeypatch, tmp_path):
    attempts = []

    def flaky(path):
        attempts.append(path)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(image_files, "decode", flaky)
    monkeypatch.setattr(image_files, "READ_PAUSE", 0)
    with pytest.raises(BadImageError, match="Input/output error"):
        image_files.read_image("x.jpg")
    assert len(attempts) == image_files.READ_ATTEMPTS
    monkeypatch.undo()
    path = str(tmp_path / "noise.jpg")
    corrupt(path)
    started = time.perf_counter()
    with pytest.raises(BadImageError):
        image_files.read_image(path)  # a file that cannot be decoded: at once
    assert time.perf_counter() - started < image_files.READ_PAUSE


# ---------------------------------------------------------------- 2. checks before training


@pytest.mark.parametrize("split", SPLITS)
def test_empty_split_is_named_by_folder(market, split):
    for path in glob.glob(str(market.base / split / "*.jpg")):
        os.remove(path)
    with pytest.raises(ISGANError) as info:  # torchreid: IndexError: list index out of range
        build_data(market.cfg())
    assert str(market.base / split) in one_line(str(info.value)) and "holds no images" in str(info.value)


def test_split_with_only_unreadable_images(market):
    for path in market.images("bounding_box_train"):
        zero(path)
    with pytest.raises(ISGANError, match=r"all 48 images in .*bounding_box_train are unreadable"):
        build_data(market.cfg())


def test_queries_without_a_true_match_are_refused_before_training(market):
    for path in glob.glob(str(market.base / "query" / "*.jpg")):  # identities absent from the gallery
        name = os.path.basename(path)
        os.rename(path, os.path.join(os.path.dirname(path), "1400" + name[name.index("_"):]))
    with pytest.raises(ISGANError) as info:
        build_data(market.cfg())
    assert "nothing to rank" in one_line(str(info.value)) and str(market.base / "query") in str(info.value)


def test_a_stage_that_cannot_start_fails_before_any_training(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("MODEL.PARTS", "[2]")
    config = write_config(tmp_path / "c.yaml", TINY + ["MODEL.PARTS", "[2]", "DATA.ROOT", cfg.DATA.ROOT,
                                                       "OUTPUT_DIR", cfg.OUTPUT_DIR])
    with pytest.raises(SystemExit) as exit_info:  # IS-GAN's stage 3 starts from stage 2, which never ran
        train_main(["--config-file", config, "--stages", "1", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "run stage 2 first" in err
    assert not os.path.exists(RunLayout(cfg.OUTPUT_DIR).latest(1))  # stage 1 was not trained first


# ---------------------------------------------------------------- 3. checkpoints


def test_damaged_latest_spares_earlier_kept_checkpoints_and_the_advice_works(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(*BASELINE)
    config = write_config(tmp_path / "c.yaml", TINY + BASELINE + [
        "DATA.ROOT", cfg.DATA.ROOT, "OUTPUT_DIR", cfg.OUTPUT_DIR, "TRAIN.STAGE1.EPOCHS", "2",
        "TRAIN.RESUME_FREQ", "2", "TRAIN.CHECKPOINT_FREQ", "1"])
    train_main(["--config-file", config])
    folder = RunLayout(cfg.OUTPUT_DIR).stage_dir(1)
    latest = RunLayout(cfg.OUTPUT_DIR).latest(1)
    kept = [os.path.join(folder, f"model.pth.tar-{epoch}") for epoch in (1, 2)]
    final = storage.load_checkpoint(latest)["state_dict"]
    assert os.path.samefile(latest, kept[1]) and not os.path.samefile(latest, kept[0])
    truncate(latest, keep=0.5)  # damage in place: to the stage's one copy of its last weights (model.pth.tar-2)

    state = storage.load_checkpoint(kept[0])  # a mid-stage snapshot is a file of its own
    assert state["epoch"] == 1 and set(state["state_dict"]) == set(final)
    with pytest.raises(ISGANError, match="corrupt"):
        storage.load_checkpoint(kept[1])

    capsys.readouterr()
    with pytest.raises(SystemExit):
        train_main(["--config-file", config])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "delete it and copy a model.pth.tar-<epoch> of the same folder in its place" in err
    os.remove(latest)  # as the error says
    subprocess.run(["cp", kept[0], latest], check=True)
    results = train_main(["--config-file", config])
    out = capsys.readouterr().out
    assert f"resumed stage 1 from the weights in {latest} (epoch 1)" in out and "=> Stage 1: epoch 2 of 2" in out
    assert 0 <= results[1]["synthperson"]["mAP"] <= 1
    assert storage.load_checkpoint(latest)["epoch"] == 2  # finished again, model.pth.tar-2 with it
    assert os.path.samefile(latest, kept[1]) and storage.load_checkpoint(kept[0])["epoch"] == 1

    truncate(latest, keep=0.5)
    os.remove(latest)  # the error's other advice: "delete it to start the stage again"
    cfg = load_config(config)
    device, data = setup(cfg)
    engine = build_engine(cfg, data, device, hooks=[])
    engine.enter_stage(1)
    assert ckpt.resume_or_initialize(engine, 1) == 0  # epoch 0: the stage starts again


class FullDisk(io.FileIO):
    """A file on a disk that is full after ``room`` bytes."""

    room = 1 << 16

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_one(tiny_cfg, tmp_path, capsys,
                                                                               monkeypatch):
    cfg = tiny_cfg(*BASELINE)
    config = write_config(tmp_path / "c.yaml", TINY + BASELINE + [
        "DATA.ROOT", cfg.DATA.ROOT, "OUTPUT_DIR", cfg.OUTPUT_DIR, "TRAIN.STAGE1.EPOCHS", "3"])
    latest = RunLayout(cfg.OUTPUT_DIR).latest(1)
    writes = []  # epochs 1 and 2 hold optimiser state (a finished stage's latest does not)

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        if os.path.basename(path).startswith("latest.pth.tar.tmp."):
            writes.append(path)
            if len(writes) == 2:  # epoch 2's checkpoint: the disk is full
                return FullDisk(path, "wb")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", open_on_a_filling_disk, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config-file", config])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot write checkpoint {latest}: No space left on device (errno 28)")
    assert f"the last good checkpoint, {latest}, is intact" in err
    needed = float(re.search(r"needs about ([\d,]+) MiB", err).group(1).replace(",", ""))
    assert needed == pytest.approx(os.path.getsize(latest) / 2 ** 20, rel=0.05)  # the state's size
    assert storage.load_checkpoint(latest)["epoch"] == 1  # the previous checkpoint, intact
    assert not glob.glob(latest + ".tmp.*")


@pytest.mark.parametrize("fails", ["torch.save", "os.fsync", "os.replace"])
def test_any_os_error_while_writing_is_one_line(tmp_path, monkeypatch, fails):
    path = str(tmp_path / "stage1" / "model.pth.tar-3")
    module, name = fails.split(".")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr({"torch": torch, "os": os}[module], name, broken)
    with pytest.raises(ISGANError) as info:
        storage.save_checkpoint({"state_dict": {"w": torch.zeros(1024)}}, path)
    message = one_line(str(info.value))
    assert message.startswith(f"cannot write checkpoint {path}: Input/output error (errno 5)")
    assert "needs about 4 KiB" in message and "no earlier checkpoint is in" in message
    monkeypatch.undo()
    assert os.listdir(tmp_path / "stage1") == []


# ---------------------------------------------------------------- 4. values


def numeric_keys(node=None, prefix=""):
    """Every key whose value is a number or a list of numbers (MILESTONES: empty lists of epochs)."""
    node = get_default_config() if node is None else node
    keys = set()
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            keys |= numeric_keys(value, full + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.add(full)
        elif isinstance(value, list) and (key == "MILESTONES" or any(isinstance(v, (int, float)) for v in value)):
            keys.add(full)
    return keys


def test_every_numeric_key_has_a_range_and_defaults_are_in_it():
    assert set(RANGES) == numeric_keys()
    cfg = get_default_config()
    for key, interval in RANGES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        assert all(in_interval(v, interval) for v in (value if isinstance(value, list) else [value])), key


def outside(interval, default):
    """A value just outside ``interval``'s lower bound, of the default's type."""
    low = float(interval[1:-1].split(",")[0])
    if isinstance(default, int) and not isinstance(default, float):
        return int(low) - 1 if interval[0] == "[" else int(low)
    return low - 0.5 if interval[0] == "[" else low


@pytest.mark.parametrize("key", sorted(RANGES))
def test_a_value_below_each_range_is_refused_at_load(key):
    default = get_default_config()
    for part in key.split("."):
        default = default[part]
    example = default[0] if isinstance(default, list) and default else (1 if isinstance(default, list) else default)
    bad = outside(RANGES[key], example)
    value = f"[{bad}]" if isinstance(default, list) else str(bad)
    with pytest.raises(ISGANError) as info:
        load_config(None, [key, value])
    message = one_line(str(info.value))
    assert message.startswith(f"{key}{'[0]' if isinstance(default, list) else ''} = {bad!r} is outside")
    assert RANGES[key] in message


@pytest.mark.parametrize("opts, expected", [
    (["TRAIN.STAGE2.LR", "nan"], "TRAIN.STAGE2.LR = nan is outside its allowed range (0, inf)"),
    (["LOSS.LAMBDA_R", "-1"], "LOSS.LAMBDA_R = -1.0 is outside its allowed range [0, inf)"),
    (["TRAIN.STAGE1.LR", "inf"], "TRAIN.STAGE1.LR = inf is outside"),
    (["TRAIN.GAMMA", "1.5"], "TRAIN.GAMMA = 1.5 is outside its allowed range (0, 1]"),
    (["TRAIN.ADAM_BETAS", "[0.9, 1.0]"], "TRAIN.ADAM_BETAS[1] = 1.0 is outside its allowed range [0, 1)"),
    (["LOSS.LABEL_SMOOTH", "1"], "LOSS.LABEL_SMOOTH = 1.0 is outside its allowed range [0, 1)"),
    (["LOSS.LAMBDA_U", "[0.001, .nan]"], "LOSS.LAMBDA_U[1] = nan is outside"),
    (["DATA.SYNTH.NUM_CAMS", "7"], "DATA.SYNTH.NUM_CAMS = 7 is outside its allowed range [2, 6]"),
    (["TRAIN.STAGE2.MILESTONES", "[10, x]"], "TRAIN.STAGE2.MILESTONES[1] = 'x' is not a number"),
    (["TRAIN.ADAM_BETAS", "[0.9]"], "TRAIN.ADAM_BETAS = [0.9]: give two values"),
    (["TRAIN.D_ADAM_BETAS", "[0.5, 0.9, 0.99]"], "TRAIN.D_ADAM_BETAS = [0.5, 0.9, 0.99]: give two values"),
    (["TRAIN.D_OPTIMIZER", "rmsprop"], "TRAIN.D_OPTIMIZER"),
    (["MODEL.G_INIT", "xavier"], "MODEL.G_INIT"),
    (["MODEL.G_DROPOUT", "1.0"], "MODEL.G_DROPOUT = 1.0 is outside its allowed range [0, 1)"),
])
def test_bad_values_are_one_line_naming_key_value_and_range(opts, expected):
    with pytest.raises(ISGANError) as info:
        load_config(None, opts)
    assert one_line(str(info.value)).startswith(expected)


def test_nan_learning_rate_stops_the_tool_before_anything_runs(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "OUTPUT_DIR", str(out),
                    "TRAIN.STAGE2.LR", "nan"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == "error: TRAIN.STAGE2.LR = nan is outside its allowed range " \
        "(0, inf); set a finite value within it\n"
    assert not out.exists()


# ---------------------------------------------------------------- 5. workers and processes


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        time.sleep(0.6)
        return index


def test_a_stuck_worker_stops_the_run_with_one_line():
    loader = loaders.guarded(torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=1), timeout=0.2)
    error = raised(ISGANError, lambda: next(iter(loader)))
    assert "no batch in 0.2 s (DATA.LOADER_TIMEOUT)" in one_line(str(error))


def test_loaders_get_the_timeout_and_workers_that_end_with_the_trainer(tiny_cfg):
    dm = build_data(tiny_cfg("DATA.WORKERS", "2", "DATA.LOADER_TIMEOUT", "42")).manager
    all_loaders = [dm.train_loader] + [l for split in dm.test_loader.values() for l in split.values()]
    for loader in all_loaders:
        assert isinstance(loader, loaders.GuardedLoader) and loader.timeout == 42
        assert loader.worker_init_fn is loaders.exit_with_trainer
    assert len(dm.train_loader) == 4 and dm.train_loader.sampler.sampler.base.num_instances == 4  # P x K batches kept
    dm = build_data(tiny_cfg()).manager  # DATA.WORKERS 0: loading in the trainer, no timeout possible
    assert dm.train_loader.timeout == 0 and dm.train_loader.worker_init_fn is None


@pytest.mark.parametrize("pidfd", [True, False])
def test_wait_for_exit(monkeypatch, pidfd):
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open on this system")
    proc = subprocess.Popen(["sleep", "30"])
    waiter = threading.Thread(target=loaders.wait_for_exit, args=(proc.pid, 0.05), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    proc.kill()
    if not pidfd:
        proc.wait()  # polling sees the process gone once it is reaped
    waiter.join(5)
    assert not waiter.is_alive()
    proc.wait()


def _processes_marked(marker):
    """PIDs of live processes whose environment holds ``marker`` (the trainer's and everything it started)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours
            continue
        if state != "Z" and marker.encode() in environ:
            found.add(int(name))
    return found


KILLS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "Ctrl-C": signal.SIGINT}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_trainers_leave_no_worker_or_forkserver(tiny_cfg, tmp_path):
    """Three trainers (run side by side to save time), each killed mid-epoch in its own way."""
    cfg = tiny_cfg(*BASELINE)
    config = write_config(tmp_path / "c.yaml", TINY + BASELINE + [
        "DATA.ROOT", cfg.DATA.ROOT, "DATA.WORKERS", "2", "TRAIN.STAGE1.EPOCHS", "500", "TRAIN.PRINT_FREQ", "1",
        "TRAIN.RESUME_FREQ", "1000", "TRAIN.CHECKPOINT_FREQ", "1000"])
    runs = {}
    try:
        for how in KILLS:  # every process a trainer starts inherits its marker
            marker = uuid.uuid4().hex
            env = dict(os.environ, PYTHONPATH=REPO, ISGAN_FAULT_TEST=marker, OMP_NUM_THREADS="1")
            log = tmp_path / f"{how}.log"
            with open(log, "w") as f:
                trainer = subprocess.Popen(
                    [sys.executable, os.path.join(REPO, "tools", "train.py"), "--config-file", config,
                     "OUTPUT_DIR", str(tmp_path / how)], env=env, stdout=f, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, as a terminal's foreground job
                    # SIGINT as a terminal leaves it: a suite started in the background (`&`) ignores it, and
                    # Python then installs no KeyboardInterrupt handler
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            runs[how] = (trainer, f"ISGAN_FAULT_TEST={marker}", log)
        deadline = time.monotonic() + 150
        waiting = dict(runs)
        while waiting:  # mid-epoch: a training step is done and both workers are up
            assert time.monotonic() < deadline, {how: log.read_text()[-2000:] for how, (_, _, log) in waiting.items()}
            for how, (trainer, marker, log) in list(waiting.items()):
                assert trainer.poll() is None, log.read_text()
                started = _processes_marked(marker) - {trainer.pid}  # resource tracker, forkserver, 2 workers
                if "[s1 e1/500 1/" in log.read_text() and len(started) >= 4:
                    if how == "Ctrl-C":
                        os.killpg(trainer.pid, KILLS[how])  # the terminal signals the whole foreground group
                    else:
                        trainer.send_signal(KILLS[how])
                    del waiting[how]
            time.sleep(0.2)
        for trainer, _, _ in runs.values():
            trainer.wait(30)
        deadline = time.monotonic() + 10  # "within a few seconds"
        while any(_processes_marked(m) for _, m, _ in runs.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {how: _processes_marked(m) for how, (_, m, _) in runs.items()} == {how: set() for how in KILLS}
    finally:
        for trainer, marker, _ in runs.values():
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait()
            for pid in _processes_marked(marker):  # only what this test started
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- evaluation refuses an incomplete descriptor

def _evaluation_run(data_root, root):
    """A stage-1 checkpoint of random weights (tiny config, 8 classes) in a run folder: its path."""
    from conftest import make_run
    return make_run(str(root), data_root, "run", 1)


@pytest.mark.parametrize("damage", ["torchvision", "removed", "reshaped", "unused"])
def test_evaluation_refuses_weights_whose_descriptor_did_not_load(data_root, tmp_path, damage, capsys):
    import torchvision

    from isgan_torchreid.cli import test_main

    weights = _evaluation_run(data_root, tmp_path)
    state = torch.load(weights, weights_only=True)["state_dict"]
    if damage == "torchvision":  # a plain ImageNet ResNet: none of the descriptor's names
        state = torchvision.models.resnet18().state_dict()
    elif damage == "removed":
        del state["encoder_r.reductions.3.0.weight"]
    elif damage == "reshaped":
        state["encoder_r.reductions.0.0.weight"] = state["encoder_r.reductions.0.0.weight"][:128]
    else:  # a fourth branch's reduction the config's model does not have
        state["encoder_r.reductions.8.0.weight"] = state["encoder_r.reductions.0.0.weight"]
    bad = str(tmp_path / "bad.pth.tar")
    storage.save_checkpoint({"state_dict": state, "num_classes": 8}, bad)
    out = tmp_path / "eval"
    argv = ["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--weights", bad, *TINY,
            "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)]
    with pytest.raises(SystemExit) as exit_:
        test_main(argv)
    message = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in message
    assert message.startswith(f"error: {bad} does not hold the whole descriptor of this ISGAN")
    assert not out.exists()  # nothing written


def test_evaluation_skips_classifiers_of_another_class_count_with_a_note(data_root, tmp_path, capsys):
    from isgan_torchreid.cli import test_main

    weights = _evaluation_run(data_root, tmp_path)
    state = torch.load(weights, weights_only=True)["state_dict"]
    torchreid_style = str(tmp_path / "torchreid.pth.tar")
    storage.save_checkpoint({"state_dict": state}, torchreid_style)  # no num_classes: built with 1 class
    results = test_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), "--weights",
                         torchreid_style, *TINY, "DATA.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "eval")])
    assert "encoder_r.classifiers.0.weight" in capsys.readouterr().out  # listed as skipped
    assert 0 <= results["test"]["synthperson"]["mAP"] <= 1


def test_torchreid_models_need_every_tensor_but_the_classifier():
    from isgan_torchreid.deploy.encoder import load_for_evaluation

    model = compat.torchreid_base().models.build_model("resnet18", 5, pretrained=False)
    other = compat.torchreid_base().models.build_model("resnet18", 9, pretrained=False).state_dict()
    skipped = load_for_evaluation(model, other, "other.pth")  # classifier of 9 classes: skipped
    assert skipped == ["classifier.bias", "classifier.weight"]
    del other["layer4.1.bn2.running_var"]
    with pytest.raises(ISGANError, match="1 of its .* tensors missing.*layer4.1.bn2.running_var"):
        load_for_evaluation(model, other, "other.pth")


# ---------------------------------------------------------------- one trainer per OUTPUT_DIR

def test_output_dir_lock_is_exclusive_names_its_holder_and_goes_with_the_block(tmp_path):
    import socket

    from isgan_torchreid.engine.lock import output_dir_lock

    out = tmp_path / "run"
    with output_dir_lock(str(out)):
        assert (out / ".lock").read_text().split() == [str(os.getpid()), socket.gethostname()]
        holder = re.escape(f"{out} is in use by another trainer (pid {os.getpid()} on {socket.gethostname()})")
        with pytest.raises(ISGANError, match=holder):
            with output_dir_lock(str(out)):
                pass
        with output_dir_lock(str(out), enabled=False):  # ranks other than 0
            pass
    assert not (out / ".lock").exists()
    with output_dir_lock(str(out)):  # free again
        pass


def test_a_killed_trainer_leaves_no_stale_lock(tmp_path):
    from isgan_torchreid.engine.lock import output_dir_lock

    out = str(tmp_path / "run")
    code = ("import sys, time\nfrom isgan_torchreid.engine.lock import output_dir_lock\n"
            "with output_dir_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ISGANError, match=f"pid {holder.pid} on "):
            with output_dir_lock(out):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays
        holder.wait()
        holder.stdout.close()
    assert os.path.exists(os.path.join(out, ".lock"))
    with output_dir_lock(out):  # the kernel released the dead holder's lock
        pass


def test_a_second_trainer_on_the_same_output_dir_exits_2_and_writes_nothing(data_root, tmp_path, capsys):
    from isgan_torchreid.engine.lock import output_dir_lock

    out = tmp_path / "run"
    with output_dir_lock(str(out)):
        before = sorted(os.listdir(out))
        with pytest.raises(SystemExit) as exit_:
            train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), *TINY,
                        "DATA.ROOT", data_root, "OUTPUT_DIR", str(out)])
        assert sorted(os.listdir(out)) == before  # no config.yaml, no train.log
    message = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in message and f"pid {os.getpid()} on " in message


# ---------------------------------------------------------------- a latest that does not fit on resume

@pytest.mark.parametrize("damage, expected", [
    ("missing", "1 model tensors missing, 0 unexpected, 0 of another shape"),
    ("unexpected", "0 model tensors missing, 1 unexpected, 0 of another shape (e.g. extra.weight)"),
    ("reshaped", "0 model tensors missing, 0 unexpected, 1 of another shape"),
    ("epoch", "no epoch count"),
    ("optimizer", "parameter group"),
])
def test_a_latest_that_does_not_fit_is_one_line_and_the_advice_works(tiny_cfg, tmp_path, damage, expected, capsys):
    cfg = tiny_cfg(*BASELINE, "TRAIN.STAGE1.EPOCHS", "2")
    device, data = setup(cfg)
    engine = build_engine(cfg, data, device, hooks=[])
    engine.enter_stage(1)
    ckpt.save_training_state(engine, 1)  # unfinished: weights and optimisers
    latest = RunLayout(cfg.OUTPUT_DIR).latest(1)
    state = torch.load(latest, weights_only=True)
    first = next(iter(state["state_dict"]))
    if damage == "missing":
        del state["state_dict"][first]
    elif damage == "unexpected":
        state["state_dict"]["extra.weight"] = torch.zeros(1)
    elif damage == "reshaped":
        state["state_dict"][first] = torch.zeros(1)
    elif damage == "epoch":
        del state["epoch"]
    else:
        state["optimizers"]["model"]["optimizer"]["param_groups"] = []
    torch.save(state, latest)
    engine = build_engine(cfg, data, device, hooks=[])
    engine.enter_stage(1)
    with pytest.raises(ISGANError) as info:
        ckpt.resume_or_initialize(engine, 1)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{latest} cannot resume stage 1 of this model (")
    assert expected in message and "delete it (or move it aside) to restart stage 1" in message
    if damage == "missing":  # the tool's line
        config = write_config(tmp_path / "c.yaml", TINY + BASELINE + [
            "DATA.ROOT", cfg.DATA.ROOT, "OUTPUT_DIR", cfg.OUTPUT_DIR, "TRAIN.STAGE1.EPOCHS", "2"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            train_main(["--config-file", config])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "cannot resume stage 1" in err
    os.remove(latest)  # as the error advises
    assert ckpt.resume_or_initialize(engine, 1) == 0  # the stage starts again


# ---------------------------------------------------------------- test options change on a finished run

@pytest.fixture(scope="module")
def finished_run(data_root, module_dir):
    """A finished one-stage baseline run (BASELINE, one epoch): its folder and the options that trained it."""
    out = str(module_dir / "finished")
    opts = TINY + BASELINE + ["DATA.ROOT", data_root, "OUTPUT_DIR", out]
    train_main(["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), *opts])
    return out, opts


@pytest.mark.parametrize("key, value", [
    ("TEST.RANKS", "[1, 3]"), ("TEST.FLIP", "True"), ("TEST.NORMALIZE", "False"), ("TEST.METRIC", "cosine"),
    ("TEST.RERANK", "True"), ("TEST.CUHK03_METRIC", "True"), ("TEST.VISRANK", "True"), ("TEST.VISRANK_TOPK", "3"),
    ("DATA.TARGETS", "[synthperson, synthperson_b]"), ("TEST.BATCH_SIZE", "7"),
])
def test_every_test_option_may_change_on_a_finished_run(finished_run, tmp_path, key, value, capsys):
    out, opts = finished_run
    run = str(tmp_path / "run")
    shutil.copytree(out, run)
    opts = [run if v == out else v for v in opts]
    before = storage.load_checkpoint(RunLayout(run).latest(1))
    argv = ["--config-file", os.path.join(CONFIGS, "isgan_synthetic.yaml"), *opts, key, value]
    capsys.readouterr()
    results = train_main(argv)
    printed = capsys.readouterr().out
    if key == "TEST.BATCH_SIZE":  # does not change a result: nothing to do
        assert "=> Stage 1: finished (1 epoch), skipped" in printed and results[1] == before["results"]
        return
    assert "=> Stage 1: finished (1 epoch), evaluating: no results yet with the current" in printed  # not trained
    after = storage.load_checkpoint(RunLayout(run).latest(1))
    assert os.path.samefile(RunLayout(run).latest(1), RunLayout(run).kept(1, 1))  # (copytree had made two files)
    assert torch.equal(after["state_dict"]["backbone.0.weight"], before["state_dict"]["backbone.0.weight"])
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN ranks)
    assert same(after["results"], results[1])  # kept with the weights: the next rerun has nothing to do
    assert same(storage.read_json(os.path.join(run, "results.json"))["stage1"], storage._json_safe(results[1]))
    # (cosine ranks L2-normalised descriptors as euclidean does: TEST.METRIC alone leaves the numbers)
    if key in ("TEST.FLIP", "TEST.NORMALIZE", "TEST.RERANK", "TEST.CUHK03_METRIC"):
        keys = ("rank1", "rank5", "mAP")
        assert [results[1]["synthperson"][k] for k in keys] != [before["results"]["synthperson"][k] for k in keys]
    elif key == "TEST.RANKS":
        assert "rank3" in results[1]["synthperson"] and "R-3" in printed
    elif key == "DATA.TARGETS":
        assert set(results[1]) == {"synthperson", "synthperson_b"}
    elif key == "TEST.VISRANK":
        assert glob.glob(os.path.join(run, "stage1", "**", "*.jpg"), recursive=True)
    assert "finished (1 epoch), skipped" in (train_main(argv) and capsys.readouterr().out)  # now recorded


# ---------------------------------------------------------------- embed's spec, file modes

def test_embed_follows_the_encoder_spec_and_files_get_the_usual_mode(tmp_path):
    from isgan_torchreid.deploy import Encoder, embed, save_encoder
    from isgan_torchreid.deploy.encoder import DEFAULT_SPEC
    from isgan_torchreid.engine.evaluation import descriptor

    torch.manual_seed(0)
    encoder = Encoder(dict(DEFAULT_SPEC, backbone="resnet18", height=64, width=32, flip=False)).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(embed(encoder, x), descriptor(encoder, x, False, True))  # the spec: no flip
        torch.testing.assert_close(embed(encoder, x, flip=True), descriptor(encoder, x, True, True))
    path = str(tmp_path / "encoder.safetensors")
    save_encoder(encoder, encoder.spec, path)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777  # not safetensors' 0600


# ---------------------------------------------------------------- messages that say what is true

def test_weights_that_are_a_folder_or_not_a_checkpoint_get_advice_that_fits(tmp_path):
    with pytest.raises(ISGANError, match=f"{tmp_path} is a folder, not a checkpoint; pass a file in it, e.g. "):
        storage.load_checkpoint(str(tmp_path))
    onnx = tmp_path / "encoder.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(64))
    with pytest.raises(ISGANError) as info:
        storage.load_checkpoint(str(onnx))
    assert "pass a checkpoint written by this project or torchreid" in str(info.value)
    assert "resume" not in str(info.value)  # only a run's latest.pth.tar gets the resume advice
    latest = tmp_path / "latest.pth.tar"
    latest.write_bytes(bytes(64))
    with pytest.raises(ISGANError, match="delete it and copy a model.pth.tar-<epoch> of the same folder in its place"):
        storage.load_checkpoint(str(latest))


def test_export_size_limit_is_the_one_stated(tmp_path):
    from isgan_torchreid.deploy import Encoder
    from isgan_torchreid.deploy.encoder import DEFAULT_SPEC
    from isgan_torchreid.deploy.export import export

    encoder = Encoder(dict(DEFAULT_SPEC, backbone="resnet18", height=64, width=32)).eval()
    with pytest.raises(ISGANError, match="--height 16 is too small .* use 32 or more"):
        export(encoder, str(tmp_path / "e.pt"), "torchscript", height=16, width=32)
    path = export(encoder, str(tmp_path / "e.pt"), "torchscript", height=32, width=32)  # the stated limit works
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 marks torch.jit as deprecated
        module = torch.jit.load(path)
    assert module(torch.zeros(1, 3, 32, 32)).shape == (1, encoder.descriptor_dim)


def test_visualize_names_an_unknown_flag_before_missing_ones(capsys):
    from isgan_torchreid.visualize.main import visualize_main

    with pytest.raises(SystemExit) as exit_:
        visualize_main(["swap", "--bogus", "1", "--weights", "w.pth.tar"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(ISGANError, match=r"swap needs --a and --out \(see tools/visualize.py swap --help\)"):
        visualize_main(["swap", "--weights", "w.pth.tar", "--b", "x.jpg", "--debug"])


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_is_one_line_exit_143_and_leaves_no_temp_file(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from isgan_torchreid.cli import reports_errors
        from isgan_torchreid.storage import atomic_path

        @reports_errors
        def main(argv):
            with atomic_path(argv[0]) as tmp:
                open(tmp, "w").write("half")
                print("writing", flush=True)
                time.sleep(120)

        main(sys.argv[1:])
    """)
    out = str(tmp_path / "result.json")
    proc = subprocess.Popen([sys.executable, "-c", code, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.splitlines() == ["terminated: nothing half-written is left; run the same command again (training "
                                "resumes from its last checkpoint)"]
    assert os.listdir(tmp_path) == []  # neither the result nor its temp file


# ---------------------------------------------------------------- extract.py's output errors

@pytest.mark.parametrize("fails", ["features", "archive"])
def test_extract_output_errors_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys, fails):
    from isgan_torchreid.cli import extract_main
    from isgan_torchreid.deploy import Encoder, save_encoder
    from isgan_torchreid.deploy import embedding
    from isgan_torchreid.deploy.encoder import DEFAULT_SPEC

    weights = str(tmp_path / "encoder.safetensors")
    save_encoder(Encoder(dict(DEFAULT_SPEC, backbone="resnet18", height=64, width=32)), dict(
        DEFAULT_SPEC, backbone="resnet18", height=64, width=32), weights)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 64), (40 * i, 90, 200)).save(images / f"000{i}_c1s1_000001_00.jpg")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if fails == "features":  # the per-batch feature file
        real_open = open
        monkeypatch.setattr("builtins.open", lambda f, mode="r", *a, **k: (_ for _ in ()).throw(full)
                            if str(f).endswith(f".features.tmp.{os.getpid()}") else real_open(f, mode, *a, **k))
    else:  # the archive
        monkeypatch.setattr(embedding, "_write_strings", lambda *a, **k: (_ for _ in ()).throw(full))
    out = tmp_path / "out" / "feats.npz"
    with pytest.raises(SystemExit) as exit_:
        extract_main(["--weights", weights, "--images", str(images), "--out", str(out), "--workers", "0"])
    err = capsys.readouterr().err
    err = err[err.index("error: "):]  # after tqdm's progress bar
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write {out}: No space left on device (errno 28); nothing was written")
    assert os.listdir(out.parent) == []


# ---------------------------------------------------------------- odd image modes

def test_odd_image_modes_decode_as_they_are_meant_to_be_seen(tmp_path, recwarn):
    from isgan_torchreid.image_files import decode, read_image

    grey16 = tmp_path / "0001_c1s1_000001_00.jpg"  # a 16-bit PNG under a .jpg name
    Image.fromarray(np.full((64, 32), 32768, dtype=np.uint16)).save(grey16, format="PNG")
    assert Image.open(grey16).mode.startswith("I")
    assert np.asarray(decode(str(grey16))).mean() == pytest.approx(128, abs=1)  # not clipped to white

    rotated = tmp_path / "0001_c1s1_000002_00.jpg"  # stored 64 wide, 32 high; EXIF: rotate 90 to display
    stored = Image.new("RGB", (64, 32), (250, 20, 20))
    stored.paste((20, 20, 250), (0, 0, 32, 32))  # left half blue: the top once turned upright
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    stored.save(rotated, exif=exif, quality=95)
    upright = np.asarray(read_image(str(rotated)))
    assert upright.shape == (64, 32, 3) and upright[:32, :, 2].mean() > 200 and upright[32:, :, 0].mean() > 200

    palette = tmp_path / "0001_c1s1_000003_00.png"
    indexed = Image.new("P", (32, 64), 0)
    indexed.putpalette([10, 200, 30] + [0] * 765)
    indexed.save(palette)
    cmyk = tmp_path / "0001_c1s1_000004_00.jpg"
    Image.new("RGB", (32, 64), (10, 200, 30)).convert("CMYK").save(cmyk, quality=95)
    for path in (palette, cmyk):
        assert np.abs(np.asarray(decode(str(path))).astype(int) - (10, 200, 30)).max() < 12, path.name
    assert not [w for w in recwarn if "PIL mode" in str(w.message)]  # usual modes: no warning

    floating = Image.fromarray(np.full((64, 32), 0.5, dtype=np.float32))  # mode F: warned once
    from isgan_torchreid.image_files import to_rgb
    with pytest.warns(UserWarning, match="mode F"):
        to_rgb(floating)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_rgb(floating)  # the second time: no warning


@pytest.mark.parametrize("tool", ["png", "json", "torchscript", "csv"])
def test_every_tool_output_error_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, tool):
    from isgan_torchreid.compare import Comparison, write_comparison
    from isgan_torchreid.deploy import Encoder
    from isgan_torchreid.deploy.encoder import DEFAULT_SPEC
    from isgan_torchreid.deploy.export import export
    from isgan_torchreid.visualize.canvas import save_png

    out = tmp_path / "out"
    out.mkdir()
    writers = {
        "png": lambda: save_png(Image.new("RGB", (8, 8)), str(out / "p.png")),
        "json": lambda: storage.write_json(str(out / "r.json"), {"a": 1}),
        "torchscript": lambda: export(Encoder(dict(DEFAULT_SPEC, backbone="resnet18", height=64, width=32)).eval(),
                                      str(out / "e.pt"), "torchscript"),
        "csv": lambda: write_comparison(Comparison([], [], None), str(out), "c.yaml", {}, [0]),
    }
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(read_only))  # the final rename fails
    with pytest.raises(ISGANError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        writers[tool]()
    message = str(info.value)
    assert "\n" not in message and "Read-only file system (errno 30); nothing was written" in message
    assert os.listdir(out) == []
