"""A look through modules that must not learn from it."""
import contextlib

from torch import nn

__all__ = ["frozen"]


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Within the block, ``modules`` are in eval mode (BatchNorm on its running statistics, which the block's
    inputs do not move) and their parameters do not require gradients (the block's outputs still pass gradients
    to their inputs); afterwards each module's mode and each parameter's ``requires_grad`` are as before."""
    states = [(m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval().requires_grad_(False)
        yield
    finally:
        for m, (training, flags) in zip(modules, states):
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)
