"""Config loading: defaults, _BASE_ inheritance, KEY VALUE overrides, errors naming the key."""
import glob
import os

import pytest
import yaml

from isgan_torchreid.config import (changed_keys, config_hash, dump_config, get_default_config, hashed_config,
                                    load_config, merge_overrides)
from isgan_torchreid.defaults import CHOICES
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model
from isgan_torchreid.models.generator import INITS
from isgan_torchreid.models.isgan import EU_INPUTS, EU_TRUNKS

from conftest import CONFIGS


def write(path, data):
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(path)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.DATA.SOURCES and cfg.OUTPUT_DIR


def test_paper_settings_in_market_config():
    cfg = load_config(os.path.join(CONFIGS, "isgan_market.yaml"))
    assert cfg.DATA.SOURCES == ["market1501"] and (cfg.DATA.HEIGHT, cfg.DATA.WIDTH) == (384, 128)
    assert [cfg.TRAIN[f"STAGE{s}"].EPOCHS for s in (1, 2, 3)] == [300, 200, 100]
    assert [cfg.TRAIN[f"STAGE{s}"].LR for s in (1, 2, 3)] == [2e-4, 2e-4, 2e-5]
    assert (cfg.LOSS.LAMBDA_R, cfg.LOSS.LAMBDA_S, cfg.LOSS.LAMBDA_PS, cfg.LOSS.LAMBDA_D, cfg.LOSS.LAMBDA_C) == (
        20.0, 10.0, 10.0, 1.0, 2.0)
    assert cfg.LOSS.LAMBDA_U == [0.001, 0.01] and (cfg.SAMPLER.P, cfg.SAMPLER.K) == (4, 4)
    assert cfg.MODEL.BACKBONE == "resnet50" and cfg.TRAIN.STAGES == [1, 2, 3]


def test_base_inheritance_and_overrides(tmp_path):
    base = write(tmp_path / "base.yaml", {"SEED": 7, "DATA": {"HEIGHT": 256, "SOURCES": ["market1501"]}})
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub" / "child.yaml", {"_BASE_": "../base.yaml", "DATA": {"WIDTH": 64}})
    cfg = load_config(child, ["DATA.HEIGHT", "128", "TRAIN.STAGE1.LR", "1e-3", "DATA.TARGETS", "[a, b]"])
    assert cfg.SEED == 7 and cfg.DATA.WIDTH == 64 and cfg.DATA.HEIGHT == 128
    assert cfg.DATA.SOURCES == ["market1501"] and cfg.DATA.TARGETS == ["a", "b"]
    assert cfg.TRAIN.STAGE1.LR == pytest.approx(1e-3) and isinstance(cfg.TRAIN.STAGE1.LR, float)
    assert load_config(base).DATA.HEIGHT == 256  # the base file alone


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = write(tmp_path / "c.yaml", "TRAIN:\n  STAGE2:\n    LR: 2e-4\n")  # PyYAML reads this as a str
    assert load_config(path).TRAIN.STAGE2.LR == pytest.approx(2e-4)


def test_unknown_key_names_it_and_suggests(tmp_path):
    path = write(tmp_path / "c.yaml", {"LOSS": {"LAMBDA_PSS": 1.0}})
    with pytest.raises(ISGANError, match=r"unknown config key LOSS\.LAMBDA_PSS.*did you mean LOSS\.LAMBDA_PS"):
        load_config(path)
    with pytest.raises(ISGANError, match=r"unknown config key TRAIN\.STAGE4"):
        load_config(None, ["TRAIN.STAGE4.EPOCHS", "1"])


@pytest.mark.parametrize("key, message", [
    ("model.name", r"unknown config key model\.name; config keys are upper case: did you mean MODEL\.NAME\?"),
    ("test.rerank", r"did you mean TEST\.RERANK\?"),
    ("train.max_epoch", r"unknown config key train\.max_epoch; config keys are upper case, and TRAIN has no "
                        r"MAX_EPOCH \(valid under TRAIN\.: "),
    ("Model.nmae", r"and MODEL has no NMAE; did you mean MODEL\.NAME\?"),
])
def test_lower_case_keys_suggest_their_upper_case_twin(key, message):
    with pytest.raises(ISGANError, match=message):
        load_config(None, [key, "x"])


def test_lower_case_yaml_key_suggests_its_twin(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: mgn\n")
    with pytest.raises(ISGANError, match=r"unknown config key model; config keys are upper case: did you mean MODEL\?"):
        load_config(str(path))


@pytest.mark.parametrize("key, value, expected", [
    ("TRAIN.STAGE1.EPOCHS", "ten", "TRAIN.STAGE1.EPOCHS expects int"),
    ("MODEL.PRETRAINED", "1", "MODEL.PRETRAINED expects bool"),
    ("SAMPLER.P", "2.5", "SAMPLER.P expects int"),
    ("MODEL.PARTS", "[1, x]", r"MODEL.PARTS\[1\] expects int"),
    ("DATA.HEIGHT", "[1]", "DATA.HEIGHT expects int"),
])
def test_wrong_types_name_the_key(key, value, expected):
    with pytest.raises(ISGANError, match=expected):
        load_config(None, [key, value])


@pytest.mark.parametrize("opts, expected", [
    (["MODEL.BACKBONE", "vgg16"], "MODEL.BACKBONE"),
    (["LOSS.PART_SHUFFLE", "some"], "LOSS.PART_SHUFFLE"),
    (["TRAIN.STAGES", "[3, 1]"], "TRAIN.STAGES"),
    (["TRAIN.STAGES", "[4]"], "TRAIN.STAGES"),
    (["DATA.HEIGHT", "200"], "DATA.HEIGHT = 200 must be divisible by 16"),
    (["SAMPLER.K", "1"], "SAMPLER.K must be >= 2"),
    (["MODEL.NAME", "mgn"], "TRAIN.STAGES"),
    (["MODEL.PARTS", "[2, 2]"], "MODEL.PARTS"),
    (["TRAIN.STAGE3.LR", "0"], "TRAIN.STAGE3"),
    (["DATA.SOURCES", "[]"], "DATA.SOURCES"),
    (["MODEL.G_STRIPES", "identity", "MODEL.PARTS", "[1]", "TRAIN.STAGES", "[1]"], "MODEL.G_STRIPES identity draws"),
    (["MODEL.G_STRIPES", "all"], "MODEL.G_STRIPES"),
    (["MODEL.EU_GRID", "[4]"], r"MODEL.EU_GRID = \[4\]: give \[\] \(off\) or \[rows, cols\]"),
    (["MODEL.EU_GRID", "[4, 0]"], "MODEL.EU_GRID"),
    (["MODEL.EU_GRID", "[25, 2]"], r"has more cells than E_U's map of a 384x128 image \(24x8\)"),
])
def test_invalid_values(opts, expected):
    with pytest.raises(ISGANError, match=expected):
        load_config(None, opts)


def test_identity_models_allow_any_size_and_k1():
    for name in ("baseline", "mgn", "pcb_p6"):
        cfg = load_config(None, ["MODEL.NAME", name, "TRAIN.STAGES", "[1, 3]", "DATA.HEIGHT", "200", "SAMPLER.K", "1"])
        assert cfg.DATA.HEIGHT == 200
    # IS-GAN's generator needs multiples of 16 even when only stage 1 runs: the model holds G
    with pytest.raises(ISGANError, match="DATA.HEIGHT = 200 must be divisible by 16"):
        load_config(None, ["TRAIN.STAGES", "[1]", "DATA.HEIGHT", "200"])
    assert load_config(None, ["TRAIN.STAGES", "[1]", "SAMPLER.K", "1"]).SAMPLER.K == 1


@pytest.mark.parametrize("opts, message", [
    (["MODEL.NAME", "mgn", "TRAIN.STAGES", "[1, 2]"], "MODEL.NAME mgn has no stage 2"),
    (["MODEL.PARTS", "[1]"], r"LOSS.PART_SHUFFLE local swaps among 0 feature\(s\) of MODEL.PARTS \[1\]"),
    (["LOSS.LAMBDA_S", "0", "LOSS.LAMBDA_PS", "0"], "LAMBDA_S and LOSS.LAMBDA_PS are both 0"),
    (["MODEL.NAME", "isgan_r18", "MODEL.BACKBONE", "resnet34"], "means MODEL.NAME isgan with MODEL.BACKBONE resnet18"),
])
def test_stage_and_model_rules(opts, message):
    with pytest.raises(ISGANError, match=message):
        load_config(None, opts)


@pytest.mark.parametrize("name, method, backbone", [
    ("isgan_r18", "isgan", "resnet18"), ("isgan_r34", "isgan", "resnet34"), ("isgan_r50", "isgan", "resnet50"),
    ("mgn_r18", "mgn", "resnet18"), ("mgn_r50", "mgn", "resnet50")])
def test_factory_names_mean_name_and_backbone(name, method, backbone):
    """MODEL.NAME isgan_r18 (torchreid's factory name) keeps MODEL.PARTS, ID_DIM and the input size in force."""
    cfg = load_config(None, ["MODEL.NAME", name, "MODEL.PARTS", "[2, 3]", "MODEL.ID_DIM", "128", "TRAIN.STAGES", "[1]",
                             "MODEL.PRETRAINED", "False"])
    assert (cfg.MODEL.NAME, cfg.MODEL.BACKBONE, cfg.MODEL.PARTS, cfg.MODEL.ID_DIM) == (method, backbone, [2, 3], 128)
    model = build_model(cfg.clone(), 5) if backbone == "resnet18" else None
    if model is not None:
        assert model.encoder_r.branches.parts == (2, 3) and model.descriptor_dim == 7 * 128  # K = (1 + 2) + (1 + 3)


def test_odd_overrides_and_bad_files(tmp_path):
    with pytest.raises(ISGANError, match="KEY VALUE pairs"):
        load_config(None, ["SEED"])
    with pytest.raises(ISGANError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ISGANError, match="_BASE_ nowhere.yaml is neither a file beside it nor a packaged config"):
        load_config(write(tmp_path / "orphan.yaml", {"_BASE_": "nowhere.yaml"}))
    with pytest.raises(ISGANError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "DATA: [unclosed"))
    a = write(tmp_path / "a.yaml", {"_BASE_": "b.yaml"})
    write(tmp_path / "b.yaml", {"_BASE_": "a.yaml"})
    with pytest.raises(ISGANError, match="_BASE_ cycle"):
        load_config(a)


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REID_DATA_ROOT", str(tmp_path))
    assert load_config(None).DATA.ROOT == str(tmp_path)
    assert load_config(None, ["DATA.ROOT", "/elsewhere"]).DATA.ROOT == "/elsewhere"  # explicit wins
    monkeypatch.delenv("REID_DATA_ROOT")
    assert get_default_config().DATA.ROOT == "reid-data"


def test_frozen_and_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["SEED", "3", "LOSS.LAMBDA_C", "1"])
    with pytest.raises(AttributeError):
        cfg.SEED = 4
    path = tmp_path / "config.yaml"
    dump_config(cfg, str(path))
    again = load_config(str(path))
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_config_hash_tracks_training_keys_only():
    base = load_config(None)
    assert config_hash(load_config(None, ["LOSS.LAMBDA_S", "5"])) != config_hash(base)
    assert config_hash(load_config(None, ["TRAIN.STAGE2.MILESTONES", "[3]"])) != config_hash(base)
    # epochs are checked against the epochs a checkpoint has trained instead (see tests/test_staged.py)
    for opts in (["OUTPUT_DIR", "x"], ["TEST.RERANK", "True"], ["TRAIN.STAGES", "[2, 3]"], ["DATA.WORKERS", "0"],
                 ["TRAIN.STAGE2.EPOCHS", "3"]):
        assert config_hash(load_config(None, opts)) == config_hash(base), opts


def test_changed_keys_name_old_and_new_values():
    old = hashed_config(load_config(None))
    new = hashed_config(load_config(None, ["TRAIN.STAGE1.LR", "0.01", "MODEL.NAME", "mgn", "TRAIN.STAGES", "[1]",
                                           "MODEL.PARTS", "[2]", "TRAIN.STAGE1.EPOCHS", "5", "OUTPUT_DIR", "x"]))
    assert "OUTPUT_DIR" not in new and "EPOCHS" not in new["TRAIN"]["STAGE1"]  # not hashed: not compared
    assert changed_keys(old, new) == ["MODEL.NAME: 'isgan' -> 'mgn'", "MODEL.PARTS: [1, 2, 3] -> [2]",
                                      "TRAIN.STAGE1.LR: 0.0002 -> 0.01"]
    del old["LOSS"]["KL_FREE_BITS"]  # a key of another version
    assert changed_keys(old, new)[0] == "LOSS.KL_FREE_BITS: (absent) -> 0.0"


def test_merge_overrides_accepts_python_values():
    cfg = get_default_config()
    merge_overrides(cfg, ["TRAIN.STAGES", [1, 2], "SEED", 5])
    assert cfg.TRAIN.STAGES == [1, 2] and cfg.SEED == 5


def test_the_config_allows_exactly_the_values_the_models_accept():
    """defaults.CHOICES names the model switches' values again (the config layer imports no model): they agree, so a
    value the config allows builds, and a value a model gains is allowed."""
    assert set(CHOICES["MODEL.EU_INPUT"]) == set(EU_INPUTS)
    assert set(CHOICES["MODEL.EU_TRUNK"]) == set(EU_TRUNKS)
    assert set(CHOICES["MODEL.G_INIT"]) == set(INITS)
