"""Checkpoints: atomic save, clear errors on corrupt files, partial weight loading, config hash, one copy of a
finished stage's weights."""
import errno
import os

import pytest
import torch
from torch import nn

from isgan_torchreid.cli import setup
from isgan_torchreid import storage
from isgan_torchreid.engine import checkpoint as ckpt
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model
from isgan_torchreid.models.isgan import ISGAN
from isgan_torchreid.engine.plan import RunLayout, RunPlan


def small_state(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))
    return {"stage": 1, "epoch": seed, "state_dict": net.state_dict()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_save_load_roundtrip_is_weights_only(tmp_path):
    path = str(tmp_path / "stage1" / "latest.pth.tar")  # the folder is created
    state = small_state(3)
    storage.save_checkpoint(state, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # no pickled objects inside
    assert loaded["format"] == storage.FORMAT and loaded["epoch"] == 3
    assert_same_state(loaded["state_dict"], state["state_dict"])
    assert os.listdir(tmp_path / "stage1") == ["latest.pth.tar"]  # no temp file left


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_checkpoint_raises_clear_error(tmp_path, keep):
    path = str(tmp_path / "latest.pth.tar")
    storage.save_checkpoint(small_state(0), path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    with pytest.raises(ISGANError) as info:
        storage.load_checkpoint(path)
    message = str(info.value)
    assert path in message and "corrupt" in message and "model.pth.tar-<epoch>" in message
    assert "\n" not in message  # one line, printable by the CLI


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(ISGANError, match="checkpoint not found"):
        storage.load_checkpoint(str(tmp_path / "nope.pth.tar"))
    path = str(tmp_path / "list.pth.tar")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ISGANError, match="holds a list"):
        storage.load_checkpoint(path)
    with pytest.raises(ISGANError, match="no model weights"):
        ckpt.model_state({"epoch": 3, "stage": 1})


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "stage2"
    path = str(folder / "latest.pth.tar")
    previous = small_state(1)
    storage.save_checkpoint(previous, path)
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the whole payload reaches the temp file...
        f.truncate(f.tell() // 2)  # ...then the write is cut short
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(ISGANError, match="No space left"):  # one line: tests/test_faults.py checks its content
        storage.save_checkpoint(small_state(2), path)
    monkeypatch.undo()
    assert os.listdir(folder) == ["latest.pth.tar"]  # the temp file is gone
    state = storage.load_checkpoint(path)
    assert state["epoch"] == 1
    assert_same_state(state["state_dict"], previous["state_dict"])


def distinct_bytes(folder):
    """Bytes of file data in ``folder``: each file's size once per inode (as du counts hard links)."""
    sizes = {}
    for name in os.listdir(folder):
        stat = os.stat(os.path.join(folder, name))
        sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())


def test_link_checkpoint_is_a_second_name_that_is_replaced_never_written_into(tmp_path):
    latest, kept = str(tmp_path / "latest.pth.tar"), str(tmp_path / "model.pth.tar-1")
    storage.save_checkpoint(small_state(1), latest)
    storage.link_checkpoint(latest, kept)
    assert os.path.samefile(latest, kept) and distinct_bytes(tmp_path) == os.path.getsize(latest)
    storage.save_checkpoint(small_state(2), latest)  # latest is replaced: the other name keeps the old file
    assert storage.load_checkpoint(kept)["epoch"] == 1 and storage.load_checkpoint(latest)["epoch"] == 2
    storage.link_checkpoint(latest, kept)  # and replaced in turn: the old file is gone
    assert os.path.samefile(latest, kept) and storage.load_checkpoint(kept)["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["latest.pth.tar", "model.pth.tar-1"]  # no temp file
    assert os.stat(latest).st_nlink == 2


def test_link_checkpoint_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    latest, kept = str(tmp_path / "latest.pth.tar"), str(tmp_path / "model.pth.tar-1")
    storage.save_checkpoint(small_state(1), latest)

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))  # e.g. a FAT or some FUSE file systems

    monkeypatch.setattr(os, "link", no_links)
    storage.link_checkpoint(latest, kept)
    assert not os.path.samefile(latest, kept) and open(kept, "rb").read() == open(latest, "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["latest.pth.tar", "model.pth.tar-1"]


def test_a_failed_link_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    latest, kept = str(tmp_path / "latest.pth.tar"), str(tmp_path / "model.pth.tar-1")
    storage.save_checkpoint(small_state(1), kept)
    storage.save_checkpoint(small_state(2), latest)

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))

    def copy_on_a_full_disk(src, dst, *args, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(100))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(storage.shutil, "copyfile", copy_on_a_full_disk)
    with pytest.raises(ISGANError) as info:
        storage.link_checkpoint(latest, kept)
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {kept}: No space left on device") and "\n" not in message
    assert "KiB of free space" in message  # the size of the file it copies
    assert sorted(os.listdir(tmp_path)) == ["latest.pth.tar", "model.pth.tar-1"]
    assert storage.load_checkpoint(kept)["epoch"] == 1 and storage.load_checkpoint(latest)["epoch"] == 2


def test_run_layout_finds_the_last_stage_with_a_latest_checkpoint(tmp_path):
    """RunLayout.last_latest: the latest.pth.tar of the last of the given stages that has one (tools/train.py
    --eval-only over TRAIN.STAGES; the disentanglement benchmark over stages 2, 3); None when none has."""
    layout = RunLayout(str(tmp_path))
    assert layout.last_latest([1, 2, 3]) is None
    for stage in (1, 2):
        os.makedirs(layout.stage_dir(stage))
        open(layout.latest(stage), "wb").close()
    assert layout.last_latest([1, 2, 3]) == layout.latest(2) == str(tmp_path / "stage2" / "latest.pth.tar")
    assert layout.last_latest((1,)) == layout.latest(1)
    assert layout.last_latest([3]) is None


def test_load_weights_skips_classifiers_of_another_num_classes(tmp_path, capsys):
    kwargs = dict(backbone="resnet18", pretrained=False, parts=(2,), height=128, width=64)
    torch.manual_seed(0)
    source = ISGAN(8, **kwargs)
    torch.manual_seed(1)
    target = ISGAN(5, **kwargs)
    path = str(tmp_path / "model.pth.tar-1")
    storage.save_checkpoint({"state_dict": source.state_dict(), "num_classes": 8}, path)
    src, before = source.state_dict(), {k: v.clone() for k, v in target.state_dict().items()}
    differing = {k for k in src if src[k].shape != before[k].shape}
    # the identity classifiers, D_C's last layer and G's one-hot input columns depend on num_classes
    assert {k for k in differing if k.startswith("encoder_r.classifiers.")} == {
        f"encoder_r.classifiers.{i}.{p}" for i in range(source.encoder_r.num_features) for p in ("weight", "bias")}

    skipped = ckpt.load_weights(target, ckpt.model_state(storage.load_checkpoint(path)))

    assert set(skipped) == differing
    out = capsys.readouterr().out
    assert f"skipped {len(differing)}" in out and "encoder_r.classifiers.0.bias" in out
    after = target.state_dict()
    for key in after:
        if key in differing:
            assert torch.equal(after[key], before[key]), key  # left at initialisation
        else:
            assert torch.equal(after[key], src[key]), key  # encoders, G body, D trunk loaded
    assert any(k.startswith("backbone.") for k in after) and any(k.startswith("encoder_r.reductions") for k in after)


def test_load_weights_does_not_report_what_a_stage_start_sets(capsys):
    """A checkpoint without E_U's own trunk (MODEL.EU_TRUNK shared) or the identity teacher loads into a model with
    them: the copies are taken as the stage starts, so they are not reported as left at initialisation; other
    missing tensors still are."""
    kwargs = dict(backbone="resnet18", pretrained=False, parts=(2,), height=128, width=64)
    shared, frozen = ISGAN(4, **kwargs), ISGAN(4, eu_trunk="frozen", identity_teacher=True, **kwargs)
    weights = shared.state_dict()
    assert not any(k.startswith(("nuisance_trunk.", "identity_teacher.")) for k in weights)
    assert any(k.startswith("identity_teacher.encoder_r.") for k in frozen.state_dict())
    assert ckpt.load_weights(frozen, weights) == []
    out = capsys.readouterr().out
    assert "nuisance_trunk" not in out and "identity_teacher" not in out
    del weights["generator.fc.0.weight"]
    ckpt.load_weights(frozen, weights)
    out = capsys.readouterr().out
    assert "left at initialisation: generator.fc.0.weight" in out and "nuisance_trunk" not in out


def test_load_weights_reads_torchreid_checkpoints(tmp_path):
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    torch.manual_seed(1)
    target = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    weights = {f"module.{k}": v for k, v in source.state_dict().items()}  # DataParallel names
    path = str(tmp_path / "model.pth.tar-60")
    torch.save({"state_dict": weights, "epoch": 60}, path)
    assert ckpt.load_weights(target, ckpt.model_state(storage.load_checkpoint(path)), verbose=False) == []
    assert_same_state(target.state_dict(), source.state_dict())


@pytest.fixture
def stage1_checkpoint(tiny_cfg):
    """An engine's stage-1 checkpoint at epoch 1 (TINY: the stage's last) in tiny_cfg's OUTPUT_DIR, its latest and
    its kept model.pth.tar-1 one file; returns (dm, saved model state)."""
    cfg = tiny_cfg("MODEL.PARTS", "[2]")  # small model: the checkpoint is written and read three times
    device, (dm, _) = setup(cfg)
    torch.manual_seed(0)
    engine = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), device)
    engine.enter_stage(1)
    path = RunLayout(cfg.OUTPUT_DIR).latest(1)
    ckpt.save_training_state(engine, 1)
    yield dm, {k: v.clone() for k, v in engine.model.state_dict().items()}
    os.remove(path)  # ~150 MB, with the next
    os.remove(RunLayout(cfg.OUTPUT_DIR).kept(1, 1))


def test_a_finished_stage_stores_its_weights_once(tiny_cfg, stage1_checkpoint):
    """Its latest and its last model.pth.tar-<epoch> are one file (torchreid's load_pretrained_weights reads both:
    tests/test_deploy.py)."""
    _, saved = stage1_checkpoint
    out = tiny_cfg().OUTPUT_DIR
    latest, kept = RunLayout(out).latest(1), RunLayout(out).kept(1, 1)
    assert sorted(os.listdir(RunLayout(out).stage_dir(1))) == ["latest.pth.tar", "model.pth.tar-1"]
    assert os.path.samefile(latest, kept)
    assert distinct_bytes(RunLayout(out).stage_dir(1)) == os.path.getsize(latest) > storage._nbytes(saved)
    for path in (latest, kept):
        state = storage.load_checkpoint(path)
        assert state["epoch"] == 1 and "optimizers" not in state
        assert_same_state(state["state_dict"], saved)


@pytest.mark.parametrize("overrides, refused", [
    (["TEST.FLIP", "False", "TEST.RANKS", "[1, 3]", "TRAIN.PRINT_FREQ", "7", "TRAIN.CHECKPOINT_FREQ", "3",
      "TRAIN.SAMPLE_FREQ", "2", "DATA.WORKERS", "1"], None),
    (["LOSS.LAMBDA_S", "5.0"], "{path} was trained with another config (LOSS.LAMBDA_S: 10.0 -> 5.0); set these "
                               "keys back to resume, or train in a new OUTPUT_DIR (or delete {folder} to restart "
                               "stage 1)"),
    (["TRAIN.STAGE1.LR", "0.01"], "(TRAIN.STAGE1.LR: 0.001 -> 0.01)"),
    (["TRAIN.STAGE1.EPOCHS", "0"], "TRAIN.STAGE1.EPOCHS 0: stage 1 has already trained 1 epoch ({path}); set "
                                   "TRAIN.STAGE1.EPOCHS 1 or more, or train in a new OUTPUT_DIR"),
])
def test_resume_checks_training_config_hash(tiny_cfg, stage1_checkpoint, overrides, refused):
    dm, saved = stage1_checkpoint
    cfg = tiny_cfg("MODEL.PARTS", "[2]", *overrides)
    torch.manual_seed(1)  # other initial weights, so a restore is visible
    engine = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), torch.device("cpu"))
    engine.enter_stage(1)
    if refused:
        path = RunLayout(cfg.OUTPUT_DIR).latest(1)
        with pytest.raises(ISGANError) as info:
            ckpt.resume_or_initialize(engine, 1)
        message = str(info.value)
        assert "\n" not in message and refused.format(path=path, folder=os.path.dirname(path)) in message
        return
    assert ckpt.resume_or_initialize(engine, 1) == 1  # resumes after epoch 1
    assert_same_state(engine.model.state_dict(), saved)


def test_a_changed_config_is_listed_key_by_key(tiny_cfg, stage1_checkpoint):
    path = RunLayout(tiny_cfg().OUTPUT_DIR).latest(1)
    changed = ["SEED", "7", "TRAIN.GAMMA", "0.5", "TRAIN.WEIGHT_DECAY", "0.0", "TRAIN.AMSGRAD", "False"] + [
        v for key in ("LAMBDA_R", "LAMBDA_S", "LAMBDA_PS", "LAMBDA_D", "LAMBDA_C", "D_LAMBDA_D")
        for v in (f"LOSS.{key}", "0.5")]
    with pytest.raises(ISGANError) as info:
        plan = RunPlan.from_config(tiny_cfg("MODEL.PARTS", "[2]", *changed))
        ckpt.check_resumable(plan, 1, storage.load_checkpoint(path), path)
    message = str(info.value)
    assert "\n" not in message and message.count(" -> ") == 8 and "LOSS.D_LAMBDA_D: 1.0 -> 0.5; " in message
    assert "TRAIN.AMSGRAD: True -> False; and 2 more); set these keys back" in message  # sorted: 8, then a count


@pytest.mark.parametrize("value, refused", [("none", False), ("identity", True)])
def test_keys_of_a_later_version_resume_at_their_defaults(tiny_cfg, stage1_checkpoint, value, refused):
    """A checkpoint of a version without MODEL.G_STRIPES resumes (and loads for testing through its run's
    config.yaml) while the key is at its default, the behaviour of that version; at another value it is refused."""
    path = RunLayout(tiny_cfg().OUTPUT_DIR).latest(1)
    earlier = storage.load_checkpoint(path)
    del earlier["config"]["MODEL"]["G_STRIPES"]
    earlier["config_hash"] = "0123456789abcdef"  # what that version's hash would be
    cfg = tiny_cfg("MODEL.PARTS", "[2]", "MODEL.G_STRIPES", value)
    if refused:
        with pytest.raises(ISGANError, match=r"\(MODEL.G_STRIPES: \(absent\) -> 'identity'\); set these keys back"):
            ckpt.check_resumable(RunPlan.from_config(cfg), 1, earlier, path)
    else:
        ckpt.check_resumable(RunPlan.from_config(cfg), 1, earlier, path)
        storage.save_checkpoint(earlier, path)
        loaded_cfg, _ = ckpt.checkpoint_config(path)
        assert loaded_cfg.MODEL.G_STRIPES == "none"


def test_a_finished_stage_trained_longer_follows_its_lr_schedule(tiny_cfg):
    """A finished stage's latest holds no optimiser state: the optimisers start afresh, their schedulers at the
    epoch the stage reached (MultiStepLR: past milestone 1, the rate is LR x GAMMA)."""
    opts = ["MODEL.PARTS", "[2]", "TRAIN.STAGE1.MILESTONES", "[1]"]  # and TINY's one epoch
    cfg = tiny_cfg(*opts)
    device, (dm, _) = setup(cfg)
    engine = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), device)
    engine.enter_stage(1)
    ckpt.save_training_state(engine, 1)
    assert "optimizers" not in storage.load_checkpoint(RunLayout(cfg.OUTPUT_DIR).latest(1))
    kept = RunLayout(cfg.OUTPUT_DIR).kept(1, 1)
    assert os.path.samefile(RunLayout(cfg.OUTPUT_DIR).latest(1), kept)
    cfg = tiny_cfg(*opts, "TRAIN.STAGE1.EPOCHS", "3")
    longer = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), device)
    longer.enter_stage(1)
    assert ckpt.resume_or_initialize(longer, 1) == 1
    assert [g["lr"] for g in longer.optimizers["model"].optimizer.param_groups] == [
        pytest.approx(cfg.TRAIN.STAGE1.LR * cfg.TRAIN.GAMMA)]
    # epoch 2 of 3 (unfinished): latest with the optimisers is a file of its own; model.pth.tar-1, now a mid-stage
    # snapshot, keeps the file it shared
    ckpt.save_training_state(longer, 2)
    assert "optimizers" in storage.load_checkpoint(RunLayout(cfg.OUTPUT_DIR).latest(1))
    assert not os.path.samefile(RunLayout(cfg.OUTPUT_DIR).latest(1), kept) and os.stat(kept).st_nlink == 1
    assert storage.load_checkpoint(kept)["epoch"] == 1 and not os.path.exists(RunLayout(cfg.OUTPUT_DIR).kept(1, 2))
