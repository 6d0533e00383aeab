"""A cap on the gradient one path sends into a shared tensor, relative to what every other path sends.

IS-GAN's stage 3 trains the trunk and E_R with L_R and with G's terms, whose gradient reaches E_R through the
identity code G draws from. :func:`cap_branch_gradient` holds the second to at most a fraction of the first
(``LOSS.CODE_GRAD_CAP``, docs/design.md): a push of G's terms on E_R that shrinks as L_R's does.
"""
from typing import Dict

import torch
from torch import Tensor

__all__ = ["cap_branch_gradient"]


def cap_branch_gradient(source: Tensor, branch: Tensor, fraction: float, record: Dict[str, Tensor],
                        prefix: str) -> None:
    """In the next backward pass, scale the gradient that reaches ``source`` through ``branch`` (a view of it whose
    consumers are the capped path) by min(1, fraction x ||g_other|| / ||g_branch||), where g_other is the gradient
    reaching ``source`` by every other path; L2 norms over the whole tensor. ``record`` gets
    ``<prefix>_ratio`` = ||g_branch|| / ||g_other|| (before the cap) and ``<prefix>_scale``, the factor (0-d,
    detached).

    Both tensors must require grad; the hooks live as long as the graph. A backward pass that does not reach
    ``branch`` leaves the gradient on ``source`` as it is."""
    held = {}

    def keep(grad: Tensor) -> None:
        held["branch"] = grad

    def cap(grad: Tensor) -> Tensor:
        branch_grad = held.pop("branch", None)
        if branch_grad is None:
            return grad
        other = grad - branch_grad
        other_norm, branch_norm = (torch.linalg.vector_norm(g.float()) for g in (other, branch_grad))
        ratio = branch_norm / other_norm.clamp_min(torch.finfo(torch.float32).tiny)
        scale = (fraction / ratio.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
        record[f"{prefix}_ratio"], record[f"{prefix}_scale"] = ratio.detach(), scale.detach()
        return other + scale.to(grad.dtype) * branch_grad

    branch.register_hook(keep)
    source.register_hook(cap)
