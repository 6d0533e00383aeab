"""Configuration: packaged configs by name, ``_BASE_`` inheritance, ``KEY VALUE`` overrides, validation, hash,
dump; the registries of methods and model rules. The keys, their defaults, choices and ranges:
:mod:`.defaults`.
"""
import difflib
import hashlib
import itertools
import math
import os
import textwrap
from importlib import resources
from typing import Callable, Dict, Tuple

import yaml
from yacs.config import CfgNode as CN

from .defaults import _C, CHOICES, HASH_EXCLUDED, RANGES
from .errors import ISGANError

# the YAML configs shipped inside the package (package data in pyproject.toml); a real folder, because pip installs
# wheels unpacked, so their _BASE_ lines resolve as they do for any file
CONFIG_DIR = os.fspath(resources.files(__package__).joinpath("configs"))


def get_default_config():
    """A fresh, mutable copy of the defaults (DATA.ROOT from $REID_DATA_ROOT when set)."""
    cfg = _C.clone()
    if os.environ.get("REID_DATA_ROOT"):
        cfg.DATA.ROOT = os.environ["REID_DATA_ROOT"]
    return cfg


def packaged_configs():
    """{name: description} of the packaged configs; the description is the file's leading comment, on one line."""
    configs = {}
    for file in sorted(os.listdir(CONFIG_DIR)):
        if file.endswith(".yaml"):
            with open(os.path.join(CONFIG_DIR, file)) as f:
                comment = [line.lstrip("#").strip() for line in itertools.takewhile(lambda s: s.startswith("#"), f)]
            configs[file[:-len(".yaml")]] = " ".join(comment)
    return configs


def list_configs(width=110):
    """The packaged configs, one per line with its description shortened to ``width`` columns (--list-configs)."""
    configs = packaged_configs()
    column = max(map(len, configs)) + 2
    rows = [name.ljust(column) + textwrap.shorten(text, width - column, placeholder=" ...") for name, text in
            configs.items()]
    return "\n".join([f"packaged configs (in {CONFIG_DIR}); --config-file takes a name or a path:"] + rows)


def _packaged_file(arg):
    """The packaged config ``arg`` names, written ``isgan_market``, ``isgan_market.yaml`` or
    ``configs/isgan_market.yaml`` (a checkout's path before the configs moved into the package, so that older
    command lines keep working); None if it names none."""
    head, file = os.path.split(arg)
    name = file[:-len(".yaml")] if file.endswith(".yaml") else file
    path = os.path.join(CONFIG_DIR, f"{name}.yaml")
    if os.path.normpath(head) in (os.curdir, "configs") and name and os.path.isfile(path):
        return path
    return None


def resolve_config_file(arg):
    """--config-file's argument -> the file it means: an existing file wins, else the packaged config it names."""
    if os.path.isfile(arg):
        return arg
    packaged = _packaged_file(arg)
    if packaged is None:
        raise ISGANError(f"config file not found: {arg}; pass an existing YAML file or a packaged config: "
                         f"{', '.join(packaged_configs())}")
    return packaged


def _read_yaml(path, seen=()):
    """Load a YAML file, resolving ``_BASE_`` recursively: a file beside the including one, else a packaged
    config's name (so that a user's config may build on ``_BASE_: isgan_market`` from any folder)."""
    path = os.path.abspath(path)
    if path in seen:
        raise ISGANError(f"config {path}: _BASE_ cycle through {' -> '.join(seen)}; remove one _BASE_ line")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ISGANError(f"config {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ISGANError(f"config {path} must hold a mapping of KEY: value, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    beside = os.path.join(os.path.dirname(path), base)
    base_file = beside if os.path.isfile(beside) else _packaged_file(base)
    if base_file is None:
        raise ISGANError(f"config {path}: _BASE_ {base} is neither a file beside it nor a packaged config "
                         f"({', '.join(packaged_configs())}); fix the _BASE_ line")
    merged = _read_yaml(base_file, seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst, src):
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def _coerce(key, default, value, origin):
    """Cast ``value`` to the type of ``default``; fail with a message naming ``key``."""
    def fail():
        raise ISGANError(f"{origin}: {key} expects {type(default).__name__} (default {default!r}), "
                         f"got {value!r}; fix the value")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        fail()
    if isinstance(default, (int, float)):
        if isinstance(value, bool):
            fail()
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                value = float(value)
            except ValueError:
                fail()
        if isinstance(default, float) and isinstance(value, (int, float)):
            return float(value)
        if isinstance(default, int) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
        fail()
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        fail()
    if isinstance(default, (list, tuple)):
        if isinstance(value, str) and key.endswith(("SOURCES", "TARGETS")):  # DATA.SOURCES market1501
            value = [value]
        if not isinstance(value, (list, tuple)):
            fail()
        if default:
            return [_coerce(f"{key}[{i}]", default[0], v, origin) for i, v in enumerate(value)]
        return list(value)
    fail()


def _merge(cfg, data, origin, prefix=""):
    """Merge a plain dict into ``cfg``; unknown keys fail with the closest valid names."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            raise _unknown_key(origin, full, cfg, key, prefix)
        if isinstance(cfg[key], CN):
            if not isinstance(value, dict):
                raise ISGANError(f"{origin}: {full} is a group of keys, got {value!r}")
            _merge(cfg[key], value, origin, full + ".")
        else:
            cfg[key] = _coerce(full, cfg[key], value, origin)


# keys of other re-id toolboxes with no twin here -> what to use instead (the nearest names would mislead)
_WEIGHTS_HINT = ("weights are not a config key here: pass the checkpoint to evaluate as --weights FILE (test, "
                 "extract, export, visualize), or the one to start training from as TRAIN.INIT_WEIGHTS FILE")
_FOREIGN_KEYS = {
    "MODEL.WEIGHTS": _WEIGHTS_HINT,  # fast-reid's
    "MODEL.LOAD_WEIGHTS": _WEIGHTS_HINT,  # torchreid's model.load_weights
}


def _unknown_key(origin, shown, cfg, key, prefix, note=""):
    """The error for ``key``, not under ``prefix`` (the group ``cfg``); ``shown``: the key as written, ``note``:
    what to say first. A key of :data:`_FOREIGN_KEYS` gets its hint alone, others the closest and the valid names."""
    foreign = _FOREIGN_KEYS.get(prefix + key.upper())
    if foreign:
        return ISGANError(f"{origin}: unknown config key {shown}; {foreign}")
    return ISGANError(f"{origin}: unknown config key {shown}{note}{_suggestion(cfg, key, prefix)} (valid under "
                      f"{prefix or 'top level'}: {', '.join(sorted(cfg.keys()))})")


def _suggestion(cfg, key, prefix):
    """'; did you mean ...?' for an unknown ``key`` under ``prefix``: its upper-case twin (torchreid writes
    ``model.name``), else the closest names."""
    if key.upper() in cfg:
        return f"; config keys are upper case: did you mean {prefix}{key.upper()}?"
    close = difflib.get_close_matches(key.upper(), list(cfg.keys()), n=3)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def _has_key(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, CN) or part not in node:
            return False
        node = node[part]
    return True


def _refuse_lower_case(cfg, key, origin):
    """An unknown lower-case KEY (torchreid's ``model.name``): name its upper-case twin, or where it fails."""
    parts = key.upper().split(".")
    known = 0
    while known < len(parts) and _has_key(cfg, ".".join(parts[:known + 1])):
        known += 1
    if known == len(parts):
        raise ISGANError(f"{origin}: unknown config key {key}; config keys are upper case: did you mean "
                         f"{key.upper()}?")
    if known == 0:
        return  # nothing in common: the ordinary message
    prefix = ".".join(parts[:known]) + "."
    node = cfg
    for part in parts[:known]:
        node = node[part]
    raise _unknown_key(origin, key, node, parts[known], prefix,
                       f"; config keys are upper case, and {prefix[:-1]} has no {parts[known]}")


def merge_overrides(cfg, opts, origin="command line"):
    """Apply ``KEY VALUE`` pairs (e.g. ``TRAIN.STAGE1.EPOCHS 5``), values parsed as YAML."""
    if len(opts) % 2:
        raise ISGANError(f"{origin}: overrides come as KEY VALUE pairs, got an odd number: {opts}")
    for key, raw in zip(opts[0::2], opts[1::2]):
        if key != key.upper() and not _has_key(cfg, key):
            _refuse_lower_case(cfg, key, origin)
        try:
            value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        except yaml.YAMLError:
            value = raw
        nested = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(cfg, nested, origin)


# torchreid factory names (isgan_torchreid.models.MODELS) -> (MODEL.NAME, MODEL.BACKBONE)
# a model's torchreid factory name -> the (MODEL.NAME, MODEL.BACKBONE) it means; filled by the models (models/)
MODEL_ALIASES: Dict[str, Tuple[str, str]] = {}


def resolve_factory_name(cfg):
    """MODEL.NAME isgan_r18 (a torchreid factory name, :data:`MODEL_ALIASES`) -> NAME isgan, BACKBONE resnet18, so
    that MODEL.PARTS, ID_DIM and the input size still apply; a different explicit MODEL.BACKBONE is refused."""
    if cfg.MODEL.NAME not in MODEL_ALIASES:
        return
    name, backbone = MODEL_ALIASES[cfg.MODEL.NAME]
    if cfg.MODEL.BACKBONE not in (backbone, _C.MODEL.BACKBONE):
        raise ISGANError(f"MODEL.NAME {cfg.MODEL.NAME} means MODEL.NAME {name} with MODEL.BACKBONE {backbone}, but "
                         f"MODEL.BACKBONE is {cfg.MODEL.BACKBONE}; set MODEL.NAME {name} and MODEL.BACKBONE")
    cfg.MODEL.NAME, cfg.MODEL.BACKBONE = name, backbone


def load_config(config_file=None, opts=()):
    """Defaults <- config file (a path or a packaged name, with its ``_BASE_`` chain) <- ``KEY VALUE`` overrides,
    validated, frozen."""
    cfg = get_default_config()
    if config_file:
        _merge(cfg, _read_yaml(resolve_config_file(config_file)), config_file)
    merge_overrides(cfg, list(opts))
    resolve_factory_name(cfg)
    validate(cfg)
    cfg.freeze()
    return cfg


def _lookup(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def in_interval(value, interval):
    """Whether ``value`` lies in ``interval``, written as in :data:`RANGES` (e.g. "(0, 1]"); NaN never does."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return math.isfinite(value) and above and below


def check_ranges(cfg):
    """Every numeric key (each element of a numeric list) within its :data:`RANGES` interval."""
    for key, interval in RANGES.items():
        value = _lookup(cfg, key)
        for name, v in ([(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list)
                        else [(key, value)]):
            if isinstance(v, bool) or not isinstance(v, (int, float)):  # elements of lists with [] defaults
                raise ISGANError(f"{name} = {v!r} is not a number; use numbers in {interval}")
            if not in_interval(v, interval):
                raise ISGANError(f"{name} = {v!r} is outside its allowed range {interval}; set a finite value "
                                 f"within it")


# Filled at import by the layers above (the package imports them all): a model's own config rules by MODEL.NAME
# (models: a function of the config that raises ISGANError), and the training methods by name (engine.objective:
# classes with ``stages``, ``models``, the MODEL.NAMEs the method trains under MODEL.METHOD auto, and
# ``check_config(cfg, stages)``).
MODEL_RULES: Dict[str, Callable] = {}
METHODS: Dict[str, type] = {}


def method_name(cfg) -> str:
    """MODEL.METHOD; for ``auto``, the registered method that lists MODEL.NAME among its models, else
    ``identity`` (identity training: the E_R baseline, MGN, torchreid's models)."""
    if cfg.MODEL.METHOD != "auto":
        return cfg.MODEL.METHOD
    return next((name for name, method in METHODS.items() if cfg.MODEL.NAME in method.models), "identity")


def validate(cfg):
    """Check values a type check cannot catch; raise ISGANError naming the key and the fix."""
    check_ranges(cfg)
    for key, allowed in CHOICES.items():
        if _lookup(cfg, key) not in allowed:
            raise ISGANError(f"{key} = {_lookup(cfg, key)!r} is not one of {', '.join(allowed)}")
    stages = list(cfg.TRAIN.STAGES)
    if not stages or sorted(set(stages)) != stages or not set(stages) <= {1, 2, 3}:
        raise ISGANError(f"TRAIN.STAGES = {stages}: use an increasing subset of [1, 2, 3], e.g. [1, 2, 3] or [2, 3]")
    if not cfg.DATA.SOURCES:
        raise ISGANError("DATA.SOURCES is empty: name at least one dataset, e.g. market1501")
    for key, example in (("ADAM_BETAS", "[0.9, 0.999]"), ("D_ADAM_BETAS", "[0.5, 0.999]")):
        if len(cfg.TRAIN[key]) != 2:
            raise ISGANError(f"TRAIN.{key} = {cfg.TRAIN[key]}: give two values, e.g. {example}")
    if len(set(cfg.MODEL.PARTS)) != len(cfg.MODEL.PARTS) or not cfg.MODEL.PARTS:
        raise ISGANError(f"MODEL.PARTS = {cfg.MODEL.PARTS}: distinct positive stripe counts, e.g. [1, 2, 3]")
    rules = MODEL_RULES.get(cfg.MODEL.NAME)
    if rules is not None:
        rules(cfg)
    name = method_name(cfg)
    if name not in METHODS:
        raise ISGANError(f"MODEL.METHOD {name!r} is not a registered method; use auto or one of "
                         f"{', '.join(sorted(METHODS))} (engine.objective.register_method adds one)")
    method = METHODS[name]
    missing = [stage for stage in stages if stage not in method.stages]
    if missing:
        raise ISGANError(f"MODEL.NAME {cfg.MODEL.NAME} has no stage {missing[0]} (its method, {name}, trains stages "
                         f"{list(method.stages)}): set TRAIN.STAGES to a subset of {list(method.stages)}")
    method.check_config(cfg, stages)

def hashed_config(cfg):
    """The keys that change what is trained (paths, logging, test options and epochs excluded) as nested plain
    values: what :func:`config_hash` hashes, and what a checkpoint records (so that a resume can name the keys
    that changed)."""
    data = yaml.safe_load(cfg.dump())
    for key in HASH_EXCLUDED:
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node.pop(last, None)
    return data


def config_hash(cfg):
    """Short hash of :func:`hashed_config`."""
    return hashlib.sha256(yaml.safe_dump(hashed_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


class _Absent:
    """The value of a key one config lacks, in :func:`changed_keys`."""

    def __repr__(self):
        return "(absent)"


def changed_keys(old, new):
    """``["KEY: old -> new", ...]`` for the keys whose values differ between two :func:`hashed_config` dicts,
    sorted; a key only one has (another version's) is "(absent)" in the other."""
    return _changes(_flatten(old), _flatten(new))


def config_changes(recorded, current):
    """:func:`changed_keys` from ``recorded`` (a checkpoint's :func:`hashed_config` dict) to ``current`` (a config's),
    less the keys ``recorded`` lacks that ``current`` holds at their default: keys added by a later version, whose
    defaults keep the behaviour of the version that wrote ``recorded``. Empty: ``current`` trains what ``recorded``
    did."""
    now, defaults = _flatten(current), _flatten(hashed_config(get_default_config()))
    before = _flatten(recorded)
    for key, value in now.items():
        if key not in before and key in defaults and value == defaults[key]:
            before[key] = value
    return _changes(before, now)


def _changes(before, after):
    """:func:`changed_keys` of two flat dicts."""
    absent = _Absent()
    return [f"{key}: {before.get(key, absent)!r} -> {after.get(key, absent)!r}"
            for key in sorted(before.keys() | after.keys()) if before.get(key, absent) != after.get(key, absent)]


def trained_by(state, cfg):
    """Whether ``cfg`` trains what the checkpoint ``state`` was trained with: the same config hash, or a recorded
    config that differs only by keys of a later version at their defaults (:func:`config_changes`)."""
    if state.get("config_hash") == config_hash(cfg):
        return True
    return isinstance(state.get("config"), dict) and not config_changes(state["config"], hashed_config(cfg))


def _flatten(data, prefix=""):
    """{"A": {"B": 1}} -> {"A.B": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump_config(cfg, path):
    """Write the resolved config as YAML (atomically)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(cfg.dump())
    os.replace(tmp, path)
