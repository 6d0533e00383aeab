"""Pictures of what IS-GAN learned and how training goes.

* :mod:`.canvas`: labelled sheets of image tiles, part-mask bars, atomic PNG writes (used by the training
  hooks' sample grids too).
* :mod:`.disentangle`: the paper's Fig. 1 (interpolation) and Fig. 5 (part-level swap), and an all-pairs grid,
  from a trained IS-GAN.
* :mod:`.ranking`: ranked retrieval lists of several models side by side (Fig. 4), on torchreid's
  ``visualize_ranked_results``.
* :mod:`.main`: ``tools/visualize.py`` (subcommands interpolate, swap, grid, rank).
"""
from .canvas import denormalize

__all__ = ["denormalize"]
