"""tools/visualize.py: what a trained IS-GAN learned, as one labelled PNG per call.

Subcommands (each takes ``--weights`` and ``--out FILE.png``, and trailing ``KEY VALUE`` overrides)::

    interpolate --a IMG --b IMG [--steps 8] [--what identity|nuisance|both]    paper Fig. 1
    swap --a IMG --b IMG [--parts upper|lower|all|FEATURES] [--what identity|nuisance]   paper Fig. 5
    grid --images IMG IMG ...                    identity of row i with the nuisance of column j
    rank --weights W [W2 ...] [--query ...] [--topk 10] [--target NAME]         paper Fig. 4

The checkpoints and lists: see :data:`CHECKPOINT_NOTE` (also the subcommands' ``--help``).
"""
import argparse
import os

import numpy as np

from .. import compat
from ..cli import is_value, parse_args, pop_list_flag, reports_errors
from ..config import load_config
from ..data.build import IMAGENET_MEAN, IMAGENET_STD, build_data
from ..deploy.gan import describe, gan_from_checkpoint, load_model
from ..engine import checkpoint as ckpt
from ..engine import distributed
from ..errors import ISGANError
from .canvas import denormalize, display_scale, font_size_for, parse_market_name, save_png
from .disentangle import interpolation_figure, pairs_figure, parse_slots, swap_figure
from .ranking import RankedModel, ranking_figure

__all__ = ["visualize_main"]

CHECKPOINT_NOTE = (
    "A checkpoint is built from the config that trained it: its run's config.yaml (OUTPUT_DIR/config.yaml beside "
    "the stage<n>/ folders, checked against the checkpoint's config hash). --config-file is needed for a "
    "checkpoint outside a run folder (e.g. torchreid's), as in tools/test.py; for rank it also names the data "
    "(DATA.TARGETS or DATA.SOURCES, DATA.ROOT, TEST.*), which otherwise come from the first checkpoint's run. "
    "List-valued flags (--weights, --images, --parts, --query) take values separated by spaces or commas, as in "
    "every tool. Trailing KEY VALUE pairs override the configs (e.g. DEVICE cpu).")
# subcommand -> its list-valued flags: (flag, example)
LIST_FLAGS = {
    "interpolate": [("--weights", "out/stage3/model.pth.tar-100")],
    "swap": [("--weights", "out/stage3/model.pth.tar-100"), ("--parts", "upper")],
    "grid": [("--weights", "out/stage3/model.pth.tar-100"), ("--images", "a.jpg b.jpg c.jpg")],
    "rank": [("--weights", "isgan/stage3/model.pth.tar-100 mgn/stage3/model.pth.tar-100"), ("--query", "0 5 12")],
}


# ------------------------------------------------------------------ checkpoints and images

def test_transform(cfg):
    """torchreid's test transform at the config's input size (resize, tensor, ImageNet normalisation)."""
    return compat.test_transform(cfg.DATA.HEIGHT, cfg.DATA.WIDTH, IMAGENET_MEAN, IMAGENET_STD)


def load_images(gan, paths):
    """Images as the model sees them: normalised (n, 3, H, W) on the GAN's device, and the same in [0, 1]."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ISGANError(f"image not found: {missing[0]}; pass existing image files")
    imgs = gan.images(paths)
    return imgs, denormalize(imgs, IMAGENET_MEAN, IMAGENET_STD)


def _gan(args, opts):
    """The IS-GAN of ``--weights`` (:class:`~isgan_torchreid.deploy.GAN`), its config and a description for
    captions."""
    if len(args.weights) != 1:
        raise ISGANError(f"{args.command} takes one --weights, got {len(args.weights)}")
    gan, cfg, state = gan_from_checkpoint(args.weights[0], args.config_file, opts)
    return gan, cfg, describe(args.weights[0], state)


# ------------------------------------------------------------------ subcommands

def _scale_and_font(args, height):
    scale = args.scale or display_scale(height)
    return scale, args.font_size or font_size_for(height * scale)


def run_interpolate(args, opts):
    gan, cfg, source = _gan(args, opts)
    imgs, shown = load_images(gan, [args.a, args.b])
    scale, size = _scale_and_font(args, cfg.DATA.HEIGHT)
    return interpolation_figure(gan, imgs, shown, [args.a, args.b], args.steps, args.what, scale, size, source)


def run_swap(args, opts):
    gan, cfg, source = _gan(args, opts)
    spec = args.parts or ["upper"]
    slots = parse_slots(spec, gan.parts)
    imgs, shown = load_images(gan, [args.a, args.b])
    scale, size = _scale_and_font(args, cfg.DATA.HEIGHT)
    region = spec[0] if spec[0] in ("upper", "lower", "all") else "chosen features"
    return swap_figure(gan, imgs, shown, [args.a, args.b], slots, region, args.what, scale, size, source)


def run_grid(args, opts):
    if not args.images or len(args.images) < 2:
        raise ISGANError("grid needs two or more images, e.g. --images a.jpg b.jpg c.jpg")
    gan, cfg, source = _gan(args, opts)
    imgs, shown = load_images(gan, args.images)
    scale, size = _scale_and_font(args, cfg.DATA.HEIGHT)
    return pairs_figure(gan, imgs, shown, args.images, scale, size, source)


def _queries(spec, query, count):
    """Query items chosen by ``--query`` (indices into the query set, or image paths), or ``count`` spread
    over the query set."""
    if not spec:
        return [query[int(i)] for i in np.unique(np.linspace(0, len(query) - 1, count).round())]
    by_path = {os.path.abspath(item[0]): item for item in query}
    chosen = []
    for value in spec:
        if value.isdigit():
            if int(value) >= len(query):
                raise ISGANError(f"--query {value}: the query set has {len(query)} images (indices 0-{len(query) - 1})")
            chosen.append(query[int(value)])
        elif os.path.abspath(value) in by_path:
            chosen.append(by_path[os.path.abspath(value)])
        else:
            parsed = parse_market_name(value)
            if not os.path.isfile(value) or parsed is None:
                raise ISGANError(f"--query {value}: not an index of the query set nor an existing image with a "
                                 f"Market-style name (0002_c1s1_000451_03.jpg: person id, camera)")
            chosen.append((value, parsed[0], parsed[1] - 1))
    return chosen


def run_rank(args, opts):
    models = []
    for weights in args.weights:
        cfg, state = ckpt.checkpoint_config(weights, args.config_file, opts)
        device = distributed.select_device(cfg)
        model = load_model(cfg, state, strict=False, device=device, origin=weights)
        stage = f" stage {state['stage']}" if "stage" in state else ""
        stage += " = E_R baseline" if cfg.MODEL.NAME == "isgan" and state.get("stage") == 1 else ""
        run = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(weights))))
        models.append((cfg, RankedModel(f"{cfg.MODEL.NAME}{stage} ({run})", model, test_transform(cfg), device)))
    data = load_config(args.config_file, opts) if args.config_file else models[0][0]
    target = args.target or (list(data.DATA.TARGETS) or list(data.DATA.SOURCES))[0]
    data = data.clone()
    data.defrost()
    data.DATA.SOURCES, data.DATA.TARGETS, data.DATA.WORKERS = [target], [target], 0
    data.freeze()
    query, gallery = build_data(data).manager.fetch_test_loaders(target)
    queries = _queries(args.query, query, args.num_queries)
    scale, size = _scale_and_font(args, data.DATA.HEIGHT)
    tile = (data.DATA.WIDTH * scale, data.DATA.HEIGHT * scale)
    return ranking_figure([m for _, m in models], queries, gallery, data.TEST, args.topk, tile, target, size)


COMMANDS = {"interpolate": run_interpolate, "swap": run_swap, "grid": run_grid, "rank": run_rank}


def build_parser():
    p = argparse.ArgumentParser(prog="tools/visualize.py", description="What IS-GAN learned, as one labelled PNG.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{interpolate,swap,grid,rank}")

    def command(name, help_text):
        s = sub.add_parser(name, help=help_text, description=f"{help_text} {CHECKPOINT_NOTE}")
        s.add_argument("--weights", metavar="W", help="checkpoint" + (" (several: one row each)" if name == "rank"
                                                                      else " of stage 2 or 3"))
        s.add_argument("--config-file", help="config of a checkpoint outside a run folder" +
                       ("; also the data (DATA.TARGETS, DATA.ROOT, TEST.*)" if name == "rank" else ""))
        s.add_argument("--out", metavar="FILE.png", help="the picture to write (required)")
        s.add_argument("--scale", type=int, default=0, help="enlarge images N times (default: to ~256 rows)")
        s.add_argument("--font-size", type=int, default=0, help="text size in pixels (default: from the scale)")
        s.add_argument("--colors", type=int, default=0, metavar="N", help="write a palette PNG of N <= 256 colours "
                       "(several times smaller; default: full RGB)")
        s.add_argument("--debug", action="store_true", help="show the traceback of user errors")
        return s

    s = command("interpolate", "Interpolate identity (E_R) and/or nuisance (E_U) features from image a to b "
                               "(paper Fig. 1).")
    s.add_argument("--a", metavar="IMG", help="(required)")
    s.add_argument("--b", metavar="IMG", help="(required)")
    s.add_argument("--steps", type=int, default=8, help="images from t=0 to t=1 (default 8)")
    s.add_argument("--what", choices=("identity", "nuisance", "both"), default="both")
    s = command("swap", "Swap the identity or nuisance features of some parts between images a and b, both ways "
                        "(paper Fig. 5).")
    s.add_argument("--a", metavar="IMG", help="(required)")
    s.add_argument("--b", metavar="IMG", help="(required)")
    s.add_argument("--parts", metavar="P", help="upper (default), lower, all, or feature indices/names of "
                   "MODEL.PARTS (for [1, 2, 3]: 0=p1g 1=p2g 2=p2s1 3=p2s2 4=p3g 5=p3s1 6=p3s2 7=p3s3)")
    s.add_argument("--what", choices=("identity", "nuisance"), default="identity")
    s = command("grid", "Decode the identity of each image with the nuisance of each other image (all pairs).")
    s.add_argument("--images", metavar="IMG", help="two or more images")
    s = command("rank", "Top-k retrieval lists of one or more models for the same queries (paper Fig. 4).")
    s.add_argument("--query", metavar="Q", help="query-set indices or query image paths (default: --num-queries "
                   "spread over the query set)")
    s.add_argument("--num-queries", type=int, default=3)
    s.add_argument("--topk", type=int, default=10)
    s.add_argument("--target", metavar="NAME", help="dataset (default: the first of DATA.TARGETS or DATA.SOURCES)")
    for s in sub.choices.values():
        s.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


@reports_errors
def visualize_main(argv):
    """Parse, draw, write ``--out``; returns the picture."""
    parser = build_parser()
    lists = {}
    if argv and argv[0] in LIST_FLAGS:
        for flag, example in LIST_FLAGS[argv[0]]:
            argv, lists[flag] = pop_list_flag(argv, flag, is_value, example)
    args = parse_args(parser, argv)
    for flag, values in lists.items():
        setattr(args, flag[2:], values)
    if not args.weights:
        raise ISGANError(f"{args.command} needs --weights, e.g. --weights {LIST_FLAGS[args.command][0][1]}")
    # checked here, not by argparse, which names a missing flag before an unknown one
    missing = [f"--{name}" for name in ("a", "b", "out") if getattr(args, name, "") is None]
    if missing:
        raise ISGANError(f"{args.command} needs {' and '.join(missing)} (see tools/visualize.py {args.command} --help)")
    if not args.out.lower().endswith(".png"):
        raise ISGANError(f"--out {args.out}: the picture is written as PNG; name it FILE.png")
    if args.colors and not 2 <= args.colors <= 256:
        raise ISGANError(f"--colors {args.colors}: a palette PNG holds 2-256 colours")
    picture = COMMANDS[args.command](args, args.opts)
    save_png(picture, args.out, args.colors)
    print(f"=> wrote {args.out} ({picture.width}x{picture.height})")
    return picture
