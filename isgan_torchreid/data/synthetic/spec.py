"""What a synthetic dataset is made from: :class:`SynthSpec` (size, seed, style), the ranges of its fields, the
styles, and the spec each dataset name gets.

Apart from the renderer, so that the config can check DATA.SYNTH without loading it.
"""
import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np

from ...errors import ISGANError

__all__ = ["INT_RANGES", "STYLES", "SynthSpec", "Style", "set_default_spec", "default_spec", "using_specs",
           "spec_for"]

# Market-1501's parser asserts 0 <= pid <= 1501 (pid 0 = distractor) and 1 <= cam <= 6.
_MAX_PID = 1501
# Integer fields: (lowest, highest) allowed value (also the ranges of the DATA.SYNTH config keys).
INT_RANGES = {
    'num_train_ids': (1, _MAX_PID - 1),
    'num_test_ids': (1, _MAX_PID - 1),
    'num_cams': (2, 6),
    'images_per_id': (3, 100),
    'height': (32, 512),
    'width': (16, 256),
    'num_distractors': (0, 100000),
    'seed': (0, 2**32 - 1),
}


@dataclass(frozen=True)
class Style:
    """Distributions that make one synthetic 'city' look different from another."""

    scene: str  # 'outdoor' or 'indoor'
    cloth_sat: tuple  # clothing saturation range
    cloth_val: tuple  # clothing brightness range
    pattern_p: tuple  # probabilities of the shirt patterns: plain, horizontal / vertical stripes, checks
    gain: tuple  # camera brightness gain range
    cast: float  # max per-channel colour cast of a camera
    blur: tuple  # camera Gaussian blur radius range (pixels at 128 px height)
    noise: tuple  # camera noise std range (0..255 scale)
    quality: tuple  # camera JPEG quality range
    lowres_p: float  # probability that a camera is low resolution
    occlusion: tuple  # camera occlusion probability range


STYLES = {
    'a': Style('outdoor', (0.45, 1.0), (0.45, 1.0), (0.35, 0.3, 0.15, 0.2), (0.8, 1.2), 0.12,
               (0.0, 0.7), (2.0, 6.0), (85, 95), 0.15, (0.1, 0.3)),
    'b': Style('indoor', (0.12, 0.6), (0.2, 0.85), (0.4, 0.15, 0.15, 0.3), (0.6, 0.95), 0.25,
               (0.4, 1.3), (5.0, 11.0), (60, 80), 0.4, (0.15, 0.35)),
}


@dataclass(frozen=True)
class SynthSpec:
    """Size, seed and style of one synthetic dataset; validated on construction."""

    num_train_ids: int = 48
    num_test_ids: int = 48
    num_cams: int = 6
    images_per_id: int = 12
    height: int = 128
    width: int = 64
    num_distractors: int = 64
    seed: int = 0
    style: str = 'a'

    def __post_init__(self):
        for field, (lo, hi) in INT_RANGES.items():
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or not lo <= value <= hi:
                raise ISGANError(
                    f'SynthSpec.{field}={value!r} is invalid; use an integer in [{lo}, {hi}]'
                )
        if self.num_train_ids + self.num_test_ids > _MAX_PID:
            raise ISGANError(
                f'SynthSpec.num_train_ids + SynthSpec.num_test_ids = '
                f'{self.num_train_ids + self.num_test_ids} is too large; Market-1501 ids stop at '
                f'{_MAX_PID}, so keep the sum <= {_MAX_PID}'
            )
        if self.style not in STYLES:
            raise ISGANError(
                f'SynthSpec.style={self.style!r} is invalid; use one of {sorted(STYLES)}'
            )


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


def spec_for(name):
    """The spec dataset ``name`` is built from: that of the innermost :func:`using_specs` block naming it, else its
    registered default (:func:`default_spec`)."""
    specs = _specs_in_use.get()
    return specs[name] if name in specs else default_spec(name)
