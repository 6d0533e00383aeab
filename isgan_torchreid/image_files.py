"""Image files decoded as torchreid reads them, never hanging: any PIL mode to RGB, I/O errors retried a bounded
number of times.

Part of the bottom layer (it imports nothing of the package but its errors). torchreid's ``read_image`` retries
forever on an ``IOError``, so one corrupt, zero-byte or truncated JPEG would hang training: :func:`read_image`
replaces it (:mod:`isgan_torchreid.compat`), and :func:`unreadable` is what the check before training
(:class:`isgan_torchreid.data.images.ImageCheck`) asks of every image.
"""
import time
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import BadImageError

__all__ = ["READ_ATTEMPTS", "READ_PAUSE", "to_rgb", "decode", "failure_reason", "read_image", "unreadable"]

READ_ATTEMPTS = 3  # tries of a read that fails with an I/O error (a network file system's hiccup)
READ_PAUSE = 0.5  # seconds between them

_WARNED_MODES = set()  # unusual modes already warned about, once per process
_USUAL_MODES = {"RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1", "RGBX", "La", "RGBa"}


def to_rgb(img):
    """Any PIL image -> RGB as it is meant to be seen: EXIF orientation applied, 16- and 32-bit integer greyscale
    scaled to 8 bits (``convert`` would clip it: a 16-bit mid-grey turns white), palette, alpha and CMYK through
    PIL's conversions. Float images and other rare modes are converted by PIL with one warning per mode."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or values.max() > 255 else 255.0  # PNG's 16-bit grey opens as I or I;16
        grey = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode not in _USUAL_MODES and img.mode not in _WARNED_MODES:
        _WARNED_MODES.add(img.mode)
        warnings.warn(f"images of PIL mode {img.mode} (e.g. {getattr(img, 'filename', '') or 'an image'}) are "
                      f"converted to RGB by PIL's rules; check that they look right", stacklevel=2)
    return img.convert("RGB")


def decode(path):
    """The image at ``path`` as an RGB PIL image, fully decoded (what torchreid's ``read_image`` returns), by
    :func:`to_rgb`."""
    with Image.open(path) as img:
        return to_rgb(img)


def failure_reason(error, path):
    """``error`` in a few words: its type and first line, without the path (PIL repeats it)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.replace(repr(path), "").replace(path, "").strip(" :")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_image(path):
    """:func:`decode`, retrying an I/O error (``OSError`` with an errno) ``READ_ATTEMPTS`` times in all; a file
    that cannot be decoded raises :class:`BadImageError` at once."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return decode(path)
        except OSError as e:
            if e.errno is None or attempt + 1 == READ_ATTEMPTS:
                reason = failure_reason(e, path)
                break
            time.sleep(READ_PAUSE)
        except Exception as e:  # PIL raises SyntaxError, ValueError, DecompressionBombError... on broken files
            reason = failure_reason(e, path)
            break
    raise BadImageError(f"image {path} cannot be read ({reason}); replace or delete it and run again (the run "
                        f"resumes from its latest checkpoint; DATA.ON_BAD_IMAGE skip leaves such images out)")


def unreadable(path):
    """Why ``path`` cannot be decoded, or None when it can."""
    try:
        decode(path)
    except Exception as e:  # any failure to decode makes the image unusable
        return failure_reason(e, path)
    return None
