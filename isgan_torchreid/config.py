"""Configuration: yacs defaults, packaged configs by name, ``_BASE_`` inheritance, ``KEY VALUE`` overrides,
validation, dump.

Keys are grouped as DATA, SAMPLER, MODEL, LOSS (the paper's lambdas of Eq. 8), TRAIN (one
sub-node per stage), TEST. Defaults reproduce the authors' effective setting with their
bugs fixed (see docs/design.md, "Choices"); every deviation is a key.
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

from .data.synth_spec import INT_RANGES as SYNTH_RANGES
from .errors import ISGANError

# the YAML configs shipped inside the package (package data in pyproject.toml); a real folder, because pip installs
# wheels unpacked, so their _BASE_ lines resolve as they do for any file
CONFIG_DIR = os.fspath(resources.files(__package__).joinpath("configs"))

_C = CN()
_C.OUTPUT_DIR = "output/isgan_market"
_C.SEED = 1
_C.DEVICE = "auto"  # auto | cpu | cuda | cuda:N

# ---------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.ROOT = "reid-data"  # the environment variable REID_DATA_ROOT replaces this default
_C.DATA.SOURCES = ["market1501"]
_C.DATA.TARGETS = []  # empty: the sources
_C.DATA.HEIGHT = 384
_C.DATA.WIDTH = 128
_C.DATA.WORKERS = 4
_C.DATA.RANDOM_FLIP = True
_C.DATA.RANDOM_ERASING = True  # stage 1 only: the paper finds it hinders disentanglement
_C.DATA.CUHK03_LABELED = False
_C.DATA.CUHK03_CLASSIC_SPLIT = False  # False: the 767/700 split of Zhong et al.
_C.DATA.ON_BAD_IMAGE = "skip"  # unreadable image: skip (reported by path, counted) | error (stop before training)
_C.DATA.LOADER_TIMEOUT = 300.0  # seconds a data-loader worker may take for one batch before the run stops (0: no limit)
_C.DATA.SYNTH = CN()  # size of the embedded synthetic datasets (synthperson, synthperson_b)
_C.DATA.SYNTH.NUM_TRAIN_IDS = 48
_C.DATA.SYNTH.NUM_TEST_IDS = 48
_C.DATA.SYNTH.NUM_CAMS = 6
_C.DATA.SYNTH.IMAGES_PER_ID = 12
_C.DATA.SYNTH.HEIGHT = 128
_C.DATA.SYNTH.WIDTH = 64

# ---------------------------------------------------------------- sampler (P identities x K images)
_C.SAMPLER = CN()
_C.SAMPLER.P = 4  # identities per batch of all processes together (torchrun: P / processes each)
_C.SAMPLER.K = 4
_C.SAMPLER.EPOCH = "identities"  # identities: each id once with K images (authors) | images: torchreid's

# ---------------------------------------------------------------- model
_C.MODEL = CN()
# isgan | baseline (E_R alone, L_R only: IS-GAN's stage-1 network) | mgn | any torchreid model name
# (pcb_p6, resnet50, osnet_x1_0, ...); the factory names isgan_r50/r34/r18, mgn_r50/r18 mean NAME + BACKBONE
_C.MODEL.NAME = "isgan"
# the method that trains the model (METHODS below): auto = isgan for MODEL.NAME isgan, identity (CE, + MGN's
# triplet) for any other; or the name a method was registered under (engine.objective.register_method)
_C.MODEL.METHOD = "auto"
_C.MODEL.BACKBONE = "resnet50"  # resnet50 | resnet34 | resnet18 (isgan, mgn)
_C.MODEL.PRETRAINED = True  # ImageNet weights through torchvision
_C.MODEL.PARTS = [1, 2, 3]  # stripes per branch: part-1, part-2, part-3 (Table 3 variants)
_C.MODEL.ID_DIM = 256  # p of E_R: K x 256 = 2048-d test descriptor
_C.MODEL.NID_DIM = 64  # p of E_U
_C.MODEL.NOISE_DIM = 128
_C.MODEL.EU_POOL = "avg"  # the authors' code pools E_U with avg; the paper says max
_C.MODEL.EU_BRANCHES = "parts"  # parts: one ResNet branch per part, as E_R (paper) | shared: one branch pooled for all
# [] (paper) | [rows, cols]: E_U also encodes a rows x cols grid of cells (layout), which G draws in place
_C.MODEL.EU_GRID = []
# rgb: E_U reads the image (paper) | gray: its luminance, so colour must come from E_R | contrast: the luminance's
# local contrast, without the brightness of regions
_C.MODEL.EU_INPUT = "rgb"
_C.MODEL.G_INIT = "fan_in"  # fan_in: each layer's std from the inputs it sums | reference: the authors' (G saturates)
_C.MODEL.G_CLASS_INPUT = True  # G reads the one-hot label (paper); False: the identity code alone names the person
_C.MODEL.G_STRIPES = "none"  # none (paper) | identity | both: G draws those codes' stripe features into their rows
_C.MODEL.G_WIDTH = 512  # G's widest hidden channel count (the authors'); the others scale with it
_C.MODEL.D_WIDTH = 256  # D's trunk width (the authors'); the others scale with it
_C.MODEL.G_DROPOUT = 0.2  # dropout in G's FC and first five upsampling blocks (authors' code)
_C.MODEL.G_JOINT_BATCH = True  # G runs the three fake sets as one BatchNorm batch (False: one call per set)

# ---------------------------------------------------------------- losses, Eq. 8
_C.LOSS = CN()
_C.LOSS.LAMBDA_R = 20.0  # stage 3 (stage 1 optimises L_R alone)
_C.LOSS.LAMBDA_U = [0.001, 0.01]  # stage 2, stage 3
_C.LOSS.LAMBDA_S = 10.0
_C.LOSS.LAMBDA_PS = 10.0
_C.LOSS.LAMBDA_D = 1.0  # generator side of L_D
_C.LOSS.LAMBDA_C = 2.0  # generator side of L_C
_C.LOSS.GAN_WARMUP = 0  # stage-2 epochs over which G's λ_D and λ_C rise linearly from 0 (D trains from the start)
_C.LOSS.D_LAMBDA_D = 1.0  # discriminator side of L_D
_C.LOSS.D_LAMBDA_C = 0.5  # discriminator side of L_C (authors' code)
_C.LOSS.ID_REDUCTION = "mean"  # mean of the K CEs (authors' code) | sum (paper, Eq. 1)
_C.LOSS.KL_REDUCTION = "official"  # official (sum over batch and dims, mean over K) | paper
_C.LOSS.KL_FREE_BITS = 0.0  # nats per part and image that L_U does not charge (0: off, the paper)
_C.LOSS.LABEL_SMOOTH = 0.0  # label smoothing of L_R
_C.LOSS.D_LABEL_SMOOTH = True  # D targets ~ U(0.7, 1) / U(0, 0.3) (authors' code)
_C.LOSS.PART_SHUFFLE = "local"  # local (paper) | all (global slots too) | none (authors' code, bug B1)
_C.LOSS.CLASS_ON_AUTO = True  # L_C also on auto-encoded fakes (authors' code); False: Eq. 7 only
# > 0: a further fake set G(id_b, nu_a), b of another identity in the batch, without pixel target: judged by D_D
# (in L_D) and by D_C as b, G's class term on it weighted by LAMBDA_X (L_X). 0: the paper (fakes keep their identity)
_C.LOSS.LAMBDA_X = 0.0
# > 0: E_R (frozen, BN in eval) reads each cross-identity fake G(id_b, nu_a) and its K part features should point
# as id_b's do: L_code = LAMBDA_CODE x mean(1 - cos), a term of G's side. 0: the paper (no such term)
_C.LOSS.LAMBDA_CODE = 0.0
# > 0: D also holds a linear identity classifier of E_U's nuisance codes (its means), trained on them (D_nu), and
# E_U is asked to leave it guessing: L_nu = LAMBDA_ADV_U x KL(uniform || its softmax). 0: the paper (no adversary)
_C.LOSS.LAMBDA_ADV_U = 0.0
_C.LOSS.TARGET_SPACE = "rgb"  # rgb: [-1, 1] RGB | tanh: tanh(normalised image), the authors' target
_C.LOSS.TRIPLET_MARGIN = 1.2  # batch-hard triplet loss on E_R's global features: MGN's, and IS-GAN's with ISGAN_TRIPLET
_C.LOSS.LAMBDA_TRIPLET = 1.0
_C.LOSS.ISGAN_TRIPLET = False  # IS-GAN: add MGN's triplet term to L_R in stages 1 and 3 (False: the paper, CE only)

# ---------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.STAGES = [1, 2, 3]
_C.TRAIN.INIT_WEIGHTS = ""  # checkpoint to start the first listed stage > 1 from, when OUTPUT_DIR has none
_C.TRAIN.ADAM_BETAS = [0.9, 0.999]
_C.TRAIN.WEIGHT_DECAY = 5e-4  # Adam (coupled L2, amsgrad) for encoders + G
_C.TRAIN.AMSGRAD = True
_C.TRAIN.D_OPTIMIZER = "sgd"  # D_D + D_C: sgd (paper: momentum D_MOMENTUM) | adam (betas D_ADAM_BETAS)
_C.TRAIN.D_MOMENTUM = 0.9
_C.TRAIN.D_ADAM_BETAS = [0.5, 0.999]  # DCGAN's
_C.TRAIN.D_LR_MULT = 1.0  # D's learning rate = the stage's x this (two time-scale updates when != 1)
_C.TRAIN.D_WEIGHT_DECAY = 1e-4
_C.TRAIN.LR_MULT_GU = 1.0  # stage-3 lr multiplier for G and E_U (authors intended 0.01, never applied)
_C.TRAIN.GAMMA = 0.1
_C.TRAIN.PRINT_FREQ = 20
_C.TRAIN.RESUME_FREQ = 1  # epochs between "latest" checkpoints (what an interrupted run resumes from)
_C.TRAIN.CHECKPOINT_FREQ = 50  # epochs between kept model.pth.tar-<epoch> (at "latest" epochs only)
_C.TRAIN.SAMPLE_FREQ = 10  # epochs between image grids in stages 2-3 (0: only at the end)
_C.TRAIN.GRAD_NORM_FREQ = 50  # stage-2/3 steps between logs of each loss term's gradient norm per module (0: off)
_C.TRAIN.AMP = False  # mixed precision (autocast) in TRAIN.AMP_DTYPE
_C.TRAIN.CUDNN_BENCHMARK = True  # CUDA: cuDNN chooses each convolution's algorithm by timing it once per shape
# auto (bfloat16 on the CPU and on GPUs that compute in it, else float16) | bfloat16 | float16 (+ loss scaling)
_C.TRAIN.AMP_DTYPE = "auto"
_C.TRAIN.CHANNELS_LAST = False  # channels-last memory format for the model and its inputs
_C.TRAIN.KEEP_FREED_MEMORY = True  # glibc: freed blocks stay in the heap for the next step (no page faults)
_C.TRAIN.FLUSH_DENORMAL = True  # CPU: denormal floats read as 0 (long GAN runs slow down on them); False: IEEE
_C.TRAIN.NONFINITE = "error"  # error | skip (skip the step and count it)
_C.TRAIN.SYNC_BN = False  # torchrun on GPUs: BatchNorm statistics over the batches of all processes
_C.TRAIN.DIST_TIMEOUT = 30.0  # torchrun: minutes a process waits for the others (rank 0 evaluates meanwhile)
_C.TRAIN.STAGE1 = CN()
_C.TRAIN.STAGE1.EPOCHS = 300
_C.TRAIN.STAGE1.LR = 2e-4
_C.TRAIN.STAGE1.MILESTONES = []
_C.TRAIN.STAGE2 = CN()
_C.TRAIN.STAGE2.EPOCHS = 200
_C.TRAIN.STAGE2.LR = 2e-4
_C.TRAIN.STAGE2.MILESTONES = []
_C.TRAIN.STAGE3 = CN()
_C.TRAIN.STAGE3.EPOCHS = 100
_C.TRAIN.STAGE3.LR = 2e-5
_C.TRAIN.STAGE3.MILESTONES = []

# ---------------------------------------------------------------- test
_C.TEST = CN()
_C.TEST.BATCH_SIZE = 64
_C.TEST.FLIP = True  # descriptor = f(x) + f(flip(x)) as the authors evaluate
_C.TEST.NORMALIZE = True  # L2-normalise descriptors
_C.TEST.METRIC = "euclidean"  # euclidean | cosine
_C.TEST.RERANK = False  # k-reciprocal re-ranking (Zhong et al. 2017)
_C.TEST.CUHK03_METRIC = False  # single-gallery-shot CUHK03 protocol (classic split only)
_C.TEST.RANKS = [1, 5, 10]
_C.TEST.VISRANK = False
_C.TEST.VISRANK_TOPK = 10

_CHOICES = {
    "DATA.ON_BAD_IMAGE": ("skip", "error"),
    "MODEL.BACKBONE": ("resnet18", "resnet34", "resnet50"),
    "MODEL.EU_POOL": ("avg", "max"),
    "MODEL.EU_BRANCHES": ("parts", "shared"),
    "MODEL.EU_INPUT": ("rgb", "gray", "contrast"),
    "MODEL.G_STRIPES": ("none", "identity", "both"),
    "MODEL.G_INIT": ("fan_in", "reference"),
    "LOSS.ID_REDUCTION": ("mean", "sum"),
    "LOSS.KL_REDUCTION": ("official", "paper"),
    "LOSS.PART_SHUFFLE": ("local", "all", "none"),
    "LOSS.TARGET_SPACE": ("rgb", "tanh"),
    "TRAIN.NONFINITE": ("error", "skip"),
    "TRAIN.AMP_DTYPE": ("auto", "bfloat16", "float16"),
    "TRAIN.D_OPTIMIZER": ("sgd", "adam"),
    "SAMPLER.EPOCH": ("identities", "images"),
    "TEST.METRIC": ("euclidean", "cosine"),
}
# every numeric key -> its allowed values in interval notation ("[a, b)": a <= x < b; inf: no bound); a list key
# applies to each element. NaN and infinities are outside every range. Checked by validate(), before any training.
_RANGES = {
    "SEED": "[0, 4294967295]",  # numpy's seed range
    "DATA.HEIGHT": "[1, inf)",
    "DATA.WIDTH": "[1, inf)",
    "DATA.WORKERS": "[0, inf)",
    "DATA.LOADER_TIMEOUT": "[0, inf)",
    **{f"DATA.SYNTH.{field.upper()}": f"[{lo}, {hi}]" for field, (lo, hi) in SYNTH_RANGES.items()
       if field.upper() in _C.DATA.SYNTH},
    "SAMPLER.P": "[1, inf)",
    "SAMPLER.K": "[1, inf)",
    "MODEL.PARTS": "[1, inf)",
    "MODEL.ID_DIM": "[1, inf)",
    "MODEL.NID_DIM": "[1, inf)",
    "MODEL.NOISE_DIM": "[1, inf)",
    "MODEL.G_DROPOUT": "[0, 1)",
    "MODEL.G_WIDTH": "[8, inf)",
    "MODEL.D_WIDTH": "[8, inf)",
    **{f"LOSS.{name}": "[0, inf)" for name in ("LAMBDA_R", "LAMBDA_U", "LAMBDA_S", "LAMBDA_PS", "LAMBDA_D", "LAMBDA_C",
                                               "LAMBDA_X", "LAMBDA_CODE", "LAMBDA_ADV_U", "D_LAMBDA_D", "D_LAMBDA_C",
                                               "LAMBDA_TRIPLET", "TRIPLET_MARGIN", "KL_FREE_BITS")},
    "LOSS.LABEL_SMOOTH": "[0, 1)",
    "LOSS.GAN_WARMUP": "[0, inf)",
    "TRAIN.STAGES": "[1, 3]",
    "TRAIN.ADAM_BETAS": "[0, 1)",
    "TRAIN.WEIGHT_DECAY": "[0, inf)",
    "TRAIN.D_MOMENTUM": "[0, 1)",
    "TRAIN.D_ADAM_BETAS": "[0, 1)",
    "TRAIN.D_WEIGHT_DECAY": "[0, inf)",
    "TRAIN.LR_MULT_GU": "(0, inf)",
    "TRAIN.D_LR_MULT": "(0, inf)",
    "TRAIN.GAMMA": "(0, 1]",
    "TRAIN.PRINT_FREQ": "[1, inf)",
    "TRAIN.RESUME_FREQ": "[1, inf)",
    "TRAIN.CHECKPOINT_FREQ": "[1, inf)",
    "TRAIN.SAMPLE_FREQ": "[0, inf)",
    "TRAIN.GRAD_NORM_FREQ": "[0, inf)",
    "TRAIN.DIST_TIMEOUT": "(0, inf)",
    **{f"TRAIN.STAGE{s}.{name}": interval for s in (1, 2, 3)
       for name, interval in (("EPOCHS", "[0, inf)"), ("LR", "(0, inf)"), ("MILESTONES", "[1, inf)"))},
    "TEST.BATCH_SIZE": "[1, inf)",
    "TEST.RANKS": "[1, inf)",
    "TEST.VISRANK_TOPK": "[1, inf)",
}
# keys that do not change what is trained: excluded from the checkpoint's config hash. A stage's EPOCHS says how
# long it trains, which its checkpoint records (``epoch``): a resume checks that count against them instead
# (engine.checkpoint.check_resumable), so that a run can be extended and the checkpoints of its earlier stages
# still match the run's config.yaml
_HASH_EXCLUDED = ("OUTPUT_DIR", "DEVICE", "TRAIN.STAGES", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
                  "TRAIN.RESUME_FREQ", "TRAIN.SAMPLE_FREQ", "TRAIN.GRAD_NORM_FREQ", "TRAIN.DIST_TIMEOUT",
                  "TRAIN.FLUSH_DENORMAL", "TRAIN.KEEP_FREED_MEMORY", "DATA.ROOT",
                  "DATA.WORKERS", "DATA.TARGETS", "DATA.ON_BAD_IMAGE", "DATA.LOADER_TIMEOUT", "TEST",
                  "TRAIN.STAGE1.EPOCHS", "TRAIN.STAGE2.EPOCHS", "TRAIN.STAGE3.EPOCHS")


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
    """Whether ``value`` lies in ``interval``, written as in :data:`_RANGES` (e.g. "(0, 1]"); NaN never does."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return math.isfinite(value) and above and below


def check_ranges(cfg):
    """Every numeric key (each element of a numeric list) within its :data:`_RANGES` interval."""
    for key, interval in _RANGES.items():
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
    for key, allowed in _CHOICES.items():
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
    for key in _HASH_EXCLUDED:
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
