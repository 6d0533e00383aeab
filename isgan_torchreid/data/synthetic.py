"""Synthetic person re-identification datasets in the Market-1501 layout.

A person's IDENTITY is what they wear: shirt colour and pattern (plain, stripes, checks), a front
print, sleeve length, trousers / shorts / skirt, shoes, hair colour and length, hat, backpack or
shoulder bag, body build and arm swing. Everything else is NUISANCE and varies per image and per
camera: viewpoint (front / back / side, each camera prefers one, and a backpack seen from the back
hides the shirt), walking pose, lean, scale and shift, the camera's scene and per-image clutter,
occluders, illumination gain / colour cast / light gradient, low resolution, blur, noise and JPEG
quality. Two styles make two "cities" for cross-dataset tests: 'a' (outdoor daylight, saturated
clothes) and 'b' (indoor fluorescent light, muted clothes, lower image quality).

Rendering uses numpy + PIL only and one seeded ``np.random.Generator`` per drawn thing
(``np.random.default_rng((seed, stream, ...))``), so the same :class:`SynthSpec` gives
byte-identical files in any order. :func:`generate` renders into a hidden sibling folder and
renames it into place, so an interrupted run never leaves a half-written dataset behind.

Layout under ``<root>/<name>/`` (torchreid's Market-1501 parser reads it unchanged)::

    bounding_box_train/  {pid:04d}_c{cam}s1_{frame:06d}_00.jpg   train ids
    bounding_box_test/   test ids, distractors 0000_c..., junk -1_c... (dropped by the parser)
    query/               one image per (test id, camera) with another image of that id in the gallery
    factors.json         each image's nuisance factors: {relative path: {"camera": c, "view": front | back |
                         side | null (no person), "occluded": bool}}, what the disentanglement benchmark
                         checks G's swaps against (any Market-layout dataset may carry such a file)
    spec.json            the spec it was made from (plus the generator version)
"""
import colorsys
import contextlib
import contextvars
import dataclasses
import json
import os
import os.path as osp
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from isgan_torchreid import compat
from isgan_torchreid.console import progress
from isgan_torchreid.errors import ISGANError

from .synth_spec import STYLES, SynthSpec

__all__ = [
    'generate', 'ensure', 'set_default_spec', 'default_spec', 'using_specs', 'SynthPerson',
    'SynthPersonB', 'DATASETS'
]

ImageDataset = compat.torchreid_base().data.ImageDataset
Market1501 = compat.torchreid_base().data.datasets.Market1501

# Bump whenever rendering changes, so datasets made by an older generator are regenerated.
GENERATOR_VERSION = 2  # 2: factors.json (images unchanged)

_SPLIT_DIRS = ('bounding_box_train', 'query', 'bounding_box_test')
FACTORS_FILE = 'factors.json'  # each image's nuisance factors, beside the split folders
# Random-number streams: the first entries of every default_rng((seed, stream, ...)) key.
_CAMERA, _IDENTITY, _IMAGE, _SPLIT, _DISTRACTOR, _JUNK = range(6)
_VIEWS = ('front', 'back', 'side')
_PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks')


_DEFAULT_SPECS = {
    'synthperson': SynthSpec(),
    'synthperson_b': SynthSpec(seed=1, style='b'),
}


def set_default_spec(name, spec):
    """Registers ``spec`` as what ``ensure(root, name)`` generates (call before torchreid loads it)."""
    if not isinstance(spec, SynthSpec):
        raise TypeError(f'set_default_spec({name!r}, ...) needs a SynthSpec, got {type(spec).__name__}')
    _DEFAULT_SPECS[name] = spec


# {name: SynthSpec} of the innermost using_specs block: torchreid builds a dataset from its name and root alone, so
# the spec of a run's DATA.SYNTH reaches SynthPerson.__init__ through this context variable, scoped to the block
_specs_in_use = contextvars.ContextVar('synthperson_specs', default={})


@contextlib.contextmanager
def using_specs(specs):
    """While active, the synthetic datasets that torchreid builds are those of ``specs`` ({name: SynthSpec}) rather
    than their registered defaults."""
    token = _specs_in_use.set({**_specs_in_use.get(), **specs})
    try:
        yield
    finally:
        _specs_in_use.reset(token)


def default_spec(name):
    """Returns the registered default SynthSpec of dataset ``name``."""
    if name not in _DEFAULT_SPECS:
        raise ISGANError(
            f'no synthetic dataset spec is registered for {name!r}; use one of '
            f'{sorted(_DEFAULT_SPECS)} or call set_default_spec({name!r}, SynthSpec(...)) first'
        )
    return _DEFAULT_SPECS[name]


# ----------------------------------------------------------------------------------- colours

def _rgb(h, s, v):
    """HSV in [0, 1] -> RGB float array in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def _pil(color):
    """Float RGB -> PIL colour tuple."""
    return tuple(int(c) for c in np.clip(np.rint(color), 0, 255))


def _cloth(rng, style):
    """A clothing colour drawn from the style's palette (sometimes black/white/grey)."""
    if rng.random() < 0.2:
        return _rgb(0.0, 0.0, rng.choice([0.12, 0.35, 0.6, 0.92]) + rng.uniform(-0.05, 0.05))
    return _rgb(rng.random(), rng.uniform(*style.cloth_sat), rng.uniform(*style.cloth_val))


# -------------------------------------------------------------------------------- identities

@dataclass(frozen=True)
class _Identity:
    """What a person looks like in every image: the identity-relevant factors."""

    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shirt: np.ndarray
    pattern: str
    pattern_color: np.ndarray
    pattern_period: float  # fraction of torso height
    long_sleeves: bool
    print_color: object  # front print colour or None
    lower: str  # 'trousers', 'shorts' or 'skirt'
    lower_color: np.ndarray
    shoes: np.ndarray
    hat_color: object  # hat colour or None
    bag: str  # 'none', 'backpack' or 'shoulder'
    bag_color: np.ndarray
    bag_left: bool
    build_w: float
    build_h: float
    swing: float  # arm swing amplitude


def _identity(rng, style):
    """Draws one identity's clothing, accessories and build."""
    shirt = _cloth(rng, style)
    hue = colorsys.rgb_to_hsv(*(shirt / 255.0))[0]
    # pattern colour: a hue far from the shirt's, or a strong light/dark contrast
    pattern_color = _rgb(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
    return _Identity(
        skin=_rgb(rng.uniform(0.04, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95)),
        hair=_rgb(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8),
                  rng.choice([0.08, 0.25, 0.45, 0.75]) + rng.uniform(-0.05, 0.05)),
        long_hair=bool(rng.random() < 0.35),
        shirt=shirt,
        pattern=_PATTERNS[rng.choice(len(_PATTERNS), p=style.pattern_p)],
        pattern_color=pattern_color,
        pattern_period=float(rng.uniform(0.12, 0.3)),
        long_sleeves=bool(rng.random() < 0.5),
        print_color=_cloth(rng, style) if rng.random() < 0.4 else None,
        lower=('trousers', 'shorts', 'skirt')[rng.choice(3, p=(0.6, 0.2, 0.2))],
        lower_color=_cloth(rng, style),
        shoes=_cloth(rng, style) if rng.random() < 0.5 else _rgb(0.0, 0.0, rng.choice([0.1, 0.9])),
        hat_color=_cloth(rng, style) if rng.random() < 0.2 else None,
        bag=('none', 'backpack', 'shoulder')[rng.choice(3, p=(0.5, 0.3, 0.2))],
        bag_color=_cloth(rng, style),
        bag_left=bool(rng.random() < 0.5),
        build_w=float(rng.uniform(0.85, 1.2)),
        build_h=float(rng.uniform(0.92, 1.04)),
        swing=float(rng.uniform(0.2, 0.6)),
    )


# ----------------------------------------------------------------------------------- cameras

@dataclass(frozen=True)
class _Camera:
    """One camera's fixed nuisance: scene, view preference, light and image quality."""

    scene: np.ndarray  # (H, 2W, 3) uint8 panorama; images crop a random window of it
    view_p: tuple  # probabilities of _VIEWS
    gain: float
    cast: np.ndarray  # (3,) per-channel multiplier
    gradient: float  # vertical light falloff
    blur: float
    noise: float
    quality: int
    lowres: float  # down-sampling factor, 1.0 = none
    occlusion: float  # probability of an occluder
    scale: tuple  # person height range as a fraction of the image height


def _scene(rng, style, height, width):
    """Renders a camera's static background panorama (H, 2W, 3)."""
    pano_w = 2 * width
    img = Image.new('RGB', (pano_w, height))
    draw = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.45, 0.7))
    if style.scene == 'outdoor':
        wall = _rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.5, 0.9))
        ground = _rgb(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.65))
        draw.rectangle((0, 0, pano_w, horizon), fill=_pil(wall))
        draw.rectangle((0, horizon, pano_w, height), fill=_pil(ground))
        x = -rng.uniform(0, 0.3) * width
        while x < pano_w:  # buildings with windows, and trees
            bw = rng.uniform(0.3, 0.9) * width
            top = horizon * rng.uniform(0.0, 0.6)
            shade = _rgb(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.35, 0.85))
            draw.rectangle((x, top, x + bw, horizon), fill=_pil(shade))
            win = _pil(shade * rng.uniform(0.4, 0.7))
            step = max(4.0, 0.12 * width)
            for wy in np.arange(top + step / 2, horizon - step, step):
                for wx in np.arange(x + step / 3, x + bw - step / 2, step):
                    draw.rectangle((wx, wy, wx + step / 2, wy + step / 2), fill=win)
            if rng.random() < 0.4:
                tr = rng.uniform(0.12, 0.25) * width
                tx = x + rng.uniform(0, bw)
                green = _pil(_rgb(rng.uniform(0.22, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6)))
                draw.ellipse((tx - tr, horizon - 3.5 * tr, tx + tr, horizon - 1.2 * tr), fill=green)
            x += bw + rng.uniform(0.0, 0.3) * width
    else:
        wall = _rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.45, 0.8))
        band = wall * rng.uniform(0.6, 0.85)
        tile_a = _rgb(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.4, 0.8))
        tile_b = tile_a * rng.uniform(0.55, 0.8)
        draw.rectangle((0, 0, pano_w, horizon), fill=_pil(wall))
        draw.rectangle((0, horizon * 0.6, pano_w, horizon * 0.72), fill=_pil(band))
        x = rng.uniform(0, 0.5) * width
        while x < pano_w:  # doors and ceiling lights
            dw = rng.uniform(0.25, 0.45) * width
            draw.rectangle((x, horizon * 0.25, x + dw, horizon), fill=_pil(wall * rng.uniform(0.3, 0.6)))
            draw.rectangle((x, 0, x + dw, height * 0.04), fill=_pil(_rgb(0.15, 0.1, 1.0)))
            x += dw + rng.uniform(0.4, 1.0) * width
        tile = max(3, int(rng.uniform(0.08, 0.2) * width))  # checkerboard floor
        yy, xx = np.mgrid[0:height - horizon, 0:pano_w]
        checks = ((yy // tile + xx // tile) % 2).astype(bool)[..., None]
        floor = np.where(checks, tile_a, tile_b)
        img.paste(Image.fromarray(floor.astype(np.uint8)), (0, horizon))
    texture = rng.normal(0.0, 6.0, (height, pano_w, 1))  # static grain of this scene
    return np.clip(np.asarray(img, dtype=np.float32) + texture, 0, 255).astype(np.uint8)


def _camera(rng, style, height, width):
    """Draws one camera's fixed nuisance."""
    view_p = np.full(3, 0.15)
    view_p[rng.integers(3)] = 0.7
    cast = 1.0 + rng.uniform(-style.cast, style.cast, 3)
    lo = rng.uniform(0.74, 0.84)
    return _Camera(
        scene=_scene(rng, style, height, width),
        view_p=tuple(view_p),
        gain=float(rng.uniform(*style.gain)),
        cast=cast / cast.mean(),
        gradient=float(rng.uniform(-0.35, 0.35)),
        blur=float(rng.uniform(*style.blur)),
        noise=float(rng.uniform(*style.noise)),
        quality=int(rng.integers(style.quality[0], style.quality[1] + 1)),
        lowres=float(rng.uniform(0.4, 0.65)) if rng.random() < style.lowres_p else 1.0,
        occlusion=float(rng.uniform(*style.occlusion)),
        scale=(lo, lo + 0.14),
    )


# ---------------------------------------------------------------------------------- drawing

def _limb(draw, points, width, color):
    """A thick poly-line with round joints and ends."""
    draw.line(points, fill=color, width=max(1, int(round(width))), joint='curve')
    r = width / 2.0
    for x, y in (points[0], points[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _draw_torso(img, ident, polygon, top, period):
    """Pastes the patterned shirt inside ``polygon`` (pattern anchored at the torso top)."""
    mask = Image.new('L', img.size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    if ident.pattern == 'plain':
        img.paste(_pil(ident.shirt), mask=mask)
        return
    w, h = img.size
    yy = (np.arange(h)[:, None] - top) // (period / 2.0)  # (H, 1) stripe index
    xx = (np.arange(w)[None, :] - polygon[0][0]) // (period / 2.0)  # (1, W)
    if ident.pattern == 'hstripes':
        on = yy % 2 == 1
    elif ident.pattern == 'vstripes':
        on = xx % 2 == 1
    else:
        on = (yy + xx) % 2 == 1
    on = np.broadcast_to(on, (h, w))[..., None]  # (H, W, 1)
    cloth = np.where(on, ident.pattern_color, ident.shirt).astype(np.uint8)  # (H, W, 3)
    img.paste(Image.fromarray(cloth), mask=mask)


def _draw_person(img, ident, rng, foot_y, cx, u, view):
    """Draws a walking person of height ``u`` pixels standing at (cx, foot_y)."""
    draw = ImageDraw.Draw(img)
    side = view == 'side'
    lean = float(np.clip(rng.normal(0.0, 0.04), -0.1, 0.1))
    phase = rng.uniform(-1.0, 1.0)  # walking cycle

    def x_at(frac):  # body axis x at height frac (0 = top, 1 = feet)
        return cx + lean * u * (1.0 - frac)

    def y(frac):  # image y at height frac
        return foot_y - u + frac * u

    sw = (0.07 if side else 0.13) * u * ident.build_w  # half shoulder width
    hw = (0.07 if side else 0.10) * u * ident.build_w  # half hip width
    limb_w = 0.075 * u * ident.build_w
    arm_w = 0.055 * u * ident.build_w
    skin, lower = _pil(ident.skin), _pil(ident.lower_color)

    # legs (skin below shorts / skirt), then shoes
    for i, sgn in enumerate((-1.0, 1.0)):
        hip = (x_at(0.52) + sgn * hw * 0.5, y(0.52))
        if side:
            dx = sgn * phase * 0.16 * u
        else:
            dx = sgn * (0.02 + 0.03 * abs(phase)) * u
        ankle = (x_at(0.95) + dx, y(0.95) - (0.02 * u if i == (phase > 0) else 0.0))
        knee = ((hip[0] + ankle[0]) / 2 + (0.02 * u if side else 0.0), y(0.74))
        bare = ident.lower != 'trousers'
        _limb(draw, [hip, knee, ankle], limb_w, skin if bare else lower)
        if ident.lower == 'shorts':
            mid = ((hip[0] + knee[0]) / 2, (hip[1] + knee[1]) / 2 + 0.03 * u)
            _limb(draw, [hip, mid], limb_w * 1.15, lower)
        fw, fh = limb_w * (1.3 if side else 0.8), 0.035 * u
        fx = ankle[0] + (limb_w * 0.35 if side else 0.0)
        draw.ellipse((fx - fw, ankle[1] - fh, fx + fw, ankle[1] + fh), fill=_pil(ident.shoes))
    if ident.lower == 'skirt':
        draw.polygon([(x_at(0.5) - hw, y(0.5)), (x_at(0.5) + hw, y(0.5)),
                      (x_at(0.72) + hw * 1.5, y(0.72)), (x_at(0.72) - hw * 1.5, y(0.72))], fill=lower)

    # arms: the far arm of a side view is hidden behind the torso
    def arm(sgn, swing):
        shoulder = (x_at(0.17) + sgn * sw * (0.3 if side else 0.9), y(0.17))
        if side:
            hand = (shoulder[0] + swing * 0.18 * u, y(0.5))
        else:
            hand = (shoulder[0] + sgn * (0.03 + 0.04 * abs(swing)) * u, y(0.5) - 0.03 * u * abs(swing))
        elbow = ((shoulder[0] + hand[0]) / 2, y(0.34))
        sleeve = _pil(ident.shirt)
        if ident.long_sleeves:
            _limb(draw, [shoulder, elbow, hand], arm_w, sleeve)
        else:
            _limb(draw, [shoulder, elbow, hand], arm_w * 0.85, skin)
            _limb(draw, [shoulder, ((shoulder[0] + elbow[0]) / 2, (shoulder[1] + elbow[1]) / 2)],
                  arm_w, sleeve)
        draw.ellipse((hand[0] - arm_w * 0.6, hand[1] - arm_w * 0.6,
                      hand[0] + arm_w * 0.6, hand[1] + arm_w * 0.6), fill=skin)
        return hand

    swing = ident.swing * phase
    if side:
        arm(-1.0, -swing)
    bag_side = -1.0 if ident.bag_left else 1.0
    if ident.bag == 'backpack' and view == 'front':  # pack sticks out behind the shoulders
        draw.rectangle((x_at(0.2) - sw * 1.1, y(0.2), x_at(0.2) + sw * 1.1, y(0.42)),
                       fill=_pil(ident.bag_color))

    # torso, with the shirt pattern and (front view only) the print
    torso = [(x_at(0.15) - sw, y(0.15)), (x_at(0.15) + sw, y(0.15)),
             (x_at(0.55) + hw, y(0.55)), (x_at(0.55) - hw, y(0.55))]
    _draw_torso(img, ident, torso, y(0.15), max(2.0, ident.pattern_period * 0.4 * u))
    if ident.print_color is not None and view == 'front':
        px, ps = x_at(0.27), 0.05 * u
        draw.rectangle((px - ps, y(0.27) - ps, px + ps, y(0.27) + ps), fill=_pil(ident.print_color))

    # accessories that sit on the torso
    bag = _pil(ident.bag_color)
    if ident.bag == 'backpack':
        if view == 'back':
            draw.rectangle((x_at(0.2) - sw * 0.75, y(0.19), x_at(0.2) + sw * 0.75, y(0.45)), fill=bag)
        elif view == 'side':
            x0, x1 = sorted(x_at(0.2) + (-1.0 if phase >= 0 else 1.0) * sw * np.array([0.6, 2.4]))
            draw.rectangle((x0, y(0.19), x1, y(0.44)), fill=bag)
        else:
            for sgn in (-1.0, 1.0):
                draw.line([(x_at(0.15) + sgn * sw * 0.6, y(0.15)), (x_at(0.4) + sgn * sw * 0.6, y(0.4))],
                          fill=bag, width=max(1, int(0.025 * u)))
    elif ident.bag == 'shoulder':
        sx = bag_side if view != 'back' else -bag_side
        draw.line([(x_at(0.15) - sx * sw * 0.7, y(0.15)), (x_at(0.5) + sx * sw * 1.1, y(0.5))],
                  fill=bag, width=max(1, int(0.02 * u)))
        bx, by = x_at(0.52) + sx * sw * 1.1, y(0.52)
        draw.rectangle((bx - 0.06 * u, by - 0.05 * u, bx + 0.06 * u, by + 0.06 * u), fill=bag)
    if side:
        arm(1.0, swing)
    else:
        arm(-1.0, swing)
        arm(1.0, -swing)

    # neck, head, hair, hat
    hx, hy, hr = x_at(0.075), y(0.075), 0.062 * u
    draw.rectangle((x_at(0.13) - hr * 0.4, y(0.12), x_at(0.13) + hr * 0.4, y(0.16)), fill=skin)
    hair = _pil(ident.hair)
    if ident.long_hair:
        draw.rectangle((hx - hr * 1.05, hy, hx + hr * 1.05, y(0.2)), fill=hair)
    draw.ellipse((hx - hr * (0.85 if side else 1.0), hy - hr * 1.1,
                  hx + hr * (0.85 if side else 1.0), hy + hr * 1.1),
                 fill=hair if view == 'back' else skin)
    if view != 'back':
        draw.chord((hx - hr * 1.05, hy - hr * 1.2, hx + hr * 1.05, hy + hr * 0.6), 180, 360, fill=hair)
    if ident.hat_color is not None:
        hat = _pil(ident.hat_color)
        draw.chord((hx - hr * 1.1, hy - hr * 1.35, hx + hr * 1.1, hy + hr * 0.4), 180, 360, fill=hat)
        draw.rectangle((hx - hr * 1.4, hy - hr * 0.45, hx + hr * 1.4, hy - hr * 0.25), fill=hat)


def _draw_clutter(draw, rng, height, width, count):
    """Random shapes: signs, passers-by and litter in the background."""
    for _ in range(count):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(0.0, 1.0) * height
        w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.05, 0.35) * height
        color = _pil(_rgb(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.2, 0.95)))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)


def _draw_occluder(draw, rng, height, width):
    """Something in front of the person: a bench / car, a pole, or a passer-by at the edge."""
    color = _pil(_rgb(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.15, 0.85)))
    kind = rng.integers(3)
    if kind == 0:
        y0 = rng.uniform(0.62, 0.85) * height
        x0, x1 = sorted(rng.uniform(-0.3, 1.3, 2) * width)
        draw.rectangle((min(x0, 0.2 * width), y0, max(x1, 0.8 * width), height), fill=color)
    elif kind == 1:
        x0, w = rng.uniform(0.2, 0.7) * width, rng.uniform(0.08, 0.2) * width
        draw.rectangle((x0, 0, x0 + w, height), fill=color)
    else:
        edge = 0.0 if rng.random() < 0.5 else float(width)
        r = rng.uniform(0.25, 0.45) * width
        draw.ellipse((edge - r, 0.2 * height, edge + r, 1.2 * height), fill=color)


def _finish(img, cam, rng):
    """Applies the camera: low resolution, illumination, blur and noise; returns uint8 (H, W, 3)."""
    width, height = img.size
    if cam.lowres < 1.0:
        small = (max(4, int(width * cam.lowres)), max(8, int(height * cam.lowres)))
        img = img.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
    radius = (cam.blur + rng.uniform(0.0, 0.4)) * height / 128.0
    if radius > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    light = 1.0 + cam.gradient * (np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None])
    gain = cam.gain * (1.0 + rng.normal(0.0, 0.07)) * cam.cast * (1.0 + rng.normal(0.0, 0.03, 3))
    arr = arr * light * gain.astype(np.float32) + rng.normal(0.0, cam.noise, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _render(cam, ident, rng, height, width, framing='full'):
    """Renders one image; ``framing`` is 'full' (a detection), 'partial' or 'empty' (bad detections).

    Returns the uint8 (H, W, 3) pixels and the image's drawn nuisance factors (view, occluded)."""
    ox = int(rng.integers(0, width + 1))
    img = Image.fromarray(cam.scene[:, ox:ox + width])  # (H, W, 3)
    draw = ImageDraw.Draw(img)
    _draw_clutter(draw, rng, height, width, int(rng.integers(0, 4)) + (3 if framing == 'empty' else 0))
    factors = {'view': None, 'occluded': False}
    if framing != 'empty':
        u = rng.uniform(*cam.scale) * ident.build_h * height
        foot_y = height * rng.uniform(0.97, 1.0)
        cx = width * (0.5 + np.clip(rng.normal(0.0, 0.06), -0.12, 0.12))
        if framing == 'partial':  # too large and off-centre: only a part of the body is inside
            u *= rng.uniform(1.3, 1.9)
            foot_y += rng.uniform(0.0, 0.6) * u
            cx += rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.5) * width
        view = _VIEWS[rng.choice(3, p=cam.view_p)]
        _draw_person(img, ident, rng, foot_y, cx, u, view)
        factors = {'view': view, 'occluded': bool(rng.random() < cam.occlusion)}
        if factors['occluded']:
            _draw_occluder(draw, rng, height, width)
    return _finish(img, cam, rng), factors


# ---------------------------------------------------------------------------------- dataset

def _plan(spec):
    """Lists every image: (folder, pid, cam, identity key, image key); identity key None = no person."""
    rng = np.random.default_rng((spec.seed, _SPLIT))
    jobs = []
    max_cams = min(spec.num_cams, spec.images_per_id - 1)  # leaves one camera with >= 2 images
    for pid in range(1, spec.num_train_ids + spec.num_test_ids + 1):
        is_test = pid > spec.num_train_ids
        cams = np.sort(rng.choice(spec.num_cams, int(rng.integers(2, max_cams + 1)), replace=False)) + 1
        counts = 1 + rng.multinomial(spec.images_per_id - len(cams), np.full(len(cams), 1.0 / len(cams)))
        index = 0
        for cam, count in zip(cams, counts):
            for k in range(count):
                if not is_test:
                    folder = 'bounding_box_train'
                else:  # one query per camera that keeps >= 1 image of this id in the gallery
                    folder = 'query' if k == 0 and count >= 2 else 'bounding_box_test'
                jobs.append((folder, pid, int(cam), (_IDENTITY, pid), (_IMAGE, pid, index)))
                index += 1
    for i in range(spec.num_distractors):  # pid 0: empty or partial detections of strangers
        cam = int(rng.integers(1, spec.num_cams + 1))
        ident_key = (_DISTRACTOR, i, 0) if i % 2 else None
        jobs.append(('bounding_box_test', 0, cam, ident_key, (_DISTRACTOR, i, 1)))
    for i in range(_num_junk(spec)):  # pid -1: partial views of test ids, dropped by the parser
        pid = spec.num_train_ids + 1 + int(rng.integers(spec.num_test_ids))
        cam = int(rng.integers(1, spec.num_cams + 1))
        jobs.append(('bounding_box_test', -1, cam, (_IDENTITY, pid), (_JUNK, i)))
    frames = rng.integers(0, 50, spec.num_cams + 1)  # per-camera running frame number
    named = []
    for folder, pid, cam, ident_key, image_key in jobs:
        frames[cam] += rng.integers(1, 9)
        prefix = '-1' if pid == -1 else f'{pid:04d}'
        named.append((osp.join(folder, f'{prefix}_c{cam}s1_{int(frames[cam]):06d}_00.jpg'),
                      cam, ident_key, image_key, pid))
    return named


def _num_junk(spec):
    """Number of junk (-1) gallery images: about one per eight test ids."""
    return max(1, spec.num_test_ids // 8)


def _spec_record(spec):
    """The JSON-able record stored as spec.json."""
    return {'generator_version': GENERATOR_VERSION, 'spec': dataclasses.asdict(spec)}


def _render_all(out_dir, spec):
    """Renders every image of ``spec`` into ``out_dir``."""
    style = STYLES[spec.style]
    cams = {c: _camera(np.random.default_rng((spec.seed, _CAMERA, c)), style, spec.height, spec.width)
            for c in range(1, spec.num_cams + 1)}
    idents, factors = {}, {}
    for name in _SPLIT_DIRS:
        os.makedirs(osp.join(out_dir, name))
    plan = progress(_plan(spec), desc='generating synthetic images', unit='img')
    for rel_path, cam, ident_key, image_key, pid in plan:
        ident = None
        if ident_key is not None:
            if ident_key not in idents:
                idents[ident_key] = _identity(np.random.default_rng((spec.seed, *ident_key)), style)
            ident = idents[ident_key]
        framing = 'empty' if ident is None else ('partial' if pid <= 0 else 'full')
        rng = np.random.default_rng((spec.seed, *image_key))
        pixels, drawn = _render(cams[cam], ident, rng, spec.height, spec.width, framing)
        Image.fromarray(pixels).save(osp.join(out_dir, rel_path), quality=cams[cam].quality)
        factors[rel_path.replace(os.sep, '/')] = {'camera': cam, **drawn}
    with open(osp.join(out_dir, FACTORS_FILE), 'w') as f:
        json.dump(factors, f, indent=0, sort_keys=True)
    with open(osp.join(out_dir, 'spec.json'), 'w') as f:
        json.dump(_spec_record(spec), f, indent=2, sort_keys=True)


def _is_current(dataset_dir, spec):
    """True if ``dataset_dir`` holds a complete dataset made from ``spec`` by this generator."""
    try:
        with open(osp.join(dataset_dir, 'spec.json')) as f:
            return json.load(f) == _spec_record(spec)
    except (OSError, ValueError):
        return False


def generate(dataset_dir, spec):
    """Renders ``spec`` into ``dataset_dir``, replacing it atomically (via a hidden sibling folder)."""
    if not isinstance(spec, SynthSpec):
        raise TypeError(f'generate({dataset_dir!r}, ...) needs a SynthSpec, got {type(spec).__name__}')
    dataset_dir = osp.abspath(osp.expanduser(dataset_dir))
    parent, name = osp.split(dataset_dir)
    if osp.exists(dataset_dir) and not osp.isfile(osp.join(dataset_dir, 'spec.json')) \
            and (not osp.isdir(dataset_dir) or os.listdir(dataset_dir)):
        raise ISGANError(
            f'{dataset_dir} exists but was not made by the synthetic generator (no spec.json); '
            f'move it away or choose another data root'
        )
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f'.{name}.tmp-', dir=parent)
    old_dir = None
    try:
        _render_all(tmp_dir, spec)
        if _is_current(dataset_dir, spec):  # another process finished the same dataset first
            shutil.rmtree(tmp_dir)
            return
        if osp.exists(dataset_dir):
            old_dir = tempfile.mkdtemp(prefix=f'.{name}.old-', dir=parent)
            os.rename(dataset_dir, osp.join(old_dir, name))
        os.rename(tmp_dir, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)


def ensure(root, name, spec=None):
    """Returns ``<root>/<name>``, generating it if missing or made from another spec."""
    spec = default_spec(name) if spec is None else spec
    dataset_dir = osp.join(osp.abspath(osp.expanduser(root)), name)
    # torchreid's parser reads pid and camera with re.search on the whole path
    clash = re.search(r'[-\d]+_c\d', osp.join(dataset_dir, 'bounding_box_train'))
    if clash:
        raise ISGANError(
            f'data root {dataset_dir} contains {clash.group(0)!r}, which torchreid\'s Market-1501 '
            f'parser would read as a person id and camera; choose a root without "<digits>_c<digit>"'
        )
    if not _is_current(dataset_dir, spec):
        generate(dataset_dir, spec)
    return dataset_dir


# torchreid passes these to every dataset; they only mean something to Market-1501 / CUHK03.
_FOREIGN_KWARGS = ('split_id', 'cuhk03_labeled', 'cuhk03_classic_split', 'market1501_500k')


class SynthPerson(Market1501):
    """Synthetic Market-1501-style dataset 'synthperson' (style 'a'), generated on first use."""

    dataset_dir = 'synthperson'
    dataset_url = None

    def __init__(self, root='', **kwargs):
        # Market1501.__init__ is skipped on purpose: it would try to download and warn about the layout.
        self.root = osp.abspath(osp.expanduser(root))
        name = type(self).dataset_dir
        self.dataset_dir = ensure(self.root, name, _specs_in_use.get().get(name))
        self.data_dir = self.dataset_dir
        self.train_dir = osp.join(self.data_dir, 'bounding_box_train')
        self.query_dir = osp.join(self.data_dir, 'query')
        self.gallery_dir = osp.join(self.data_dir, 'bounding_box_test')
        for key in _FOREIGN_KWARGS:
            kwargs.pop(key, None)
        train = self.process_dir(self.train_dir, relabel=True)
        query = self.process_dir(self.query_dir, relabel=False)
        gallery = self.process_dir(self.gallery_dir, relabel=False)
        ImageDataset.__init__(self, train, query, gallery, **kwargs)


class SynthPersonB(SynthPerson):
    """Synthetic dataset 'synthperson_b' (style 'b': other cameras, light, clothes and people)."""

    dataset_dir = 'synthperson_b'


DATASETS = {'synthperson': SynthPerson, 'synthperson_b': SynthPersonB}
