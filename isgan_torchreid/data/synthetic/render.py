"""Drawing one synthetic image: colours, an identity (what a person wears, :func:`random_identity`), a camera (its
scene, light and quality, :func:`random_camera`) and the image of a person seen by a camera (:func:`draw_image`),
with numpy and PIL only; every random draw comes from the ``np.random.Generator`` passed in."""
import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['random_identity', 'random_camera', 'draw_image']

_VIEWS = ('front', 'back', 'side')
_PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks')


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


def random_identity(rng, style):
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


def random_camera(rng, style, height, width):
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


def draw_image(cam, ident, rng, height, width, framing='full'):
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
