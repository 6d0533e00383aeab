"""A look through modules that must not learn from it."""
import contextlib

from torch import nn

__all__ = ["frozen", "running_statistics"]


@contextlib.contextmanager
def running_statistics(*modules: nn.Module):
    """Within the block, ``modules`` are in eval mode: BatchNorm normalises with its running statistics, which the
    block's inputs do not move, and dropout is off; their parameters learn as before. Afterwards each module's mode
    is as before."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, training in zip(modules, modes):
            m.train(training)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Within the block, ``modules`` are in eval mode (BatchNorm on its running statistics, which the block's
    inputs do not move) and their parameters do not require gradients (the block's outputs still pass gradients
    to their inputs); afterwards each module's mode and each parameter's ``requires_grad`` are as before."""
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    try:
        with running_statistics(*modules):
            for m in modules:
                m.requires_grad_(False)
            yield
    finally:
        for m, module_flags in zip(modules, flags):
            for p, flag in zip(m.parameters(), module_flags):
                p.requires_grad_(flag)
