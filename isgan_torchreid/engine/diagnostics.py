"""What an IS-GAN step reveals about its GAN half, beside the loss terms (TensorBoard tags ``gan/*``, ``eu/*``,
``grad_<module>/<term>``; the key ones in the progress line).

* :func:`latent_stats`: E_U's posterior [Eq. 2, 5]: KL per image (nats, summed over parts and units) and per
  part, the fraction of active units (batch variance of the mean above 0.01, Burda et al. 2016) and the spread
  of the means. KL near 0 and no active units: E_U collapsed and G ignores the nuisance code.
* :func:`discriminator_stats`: D_D's mean probability of "real" on real images and on fakes [Eq. 6], and D_C's
  accuracy on real images and on fakes [Eq. 7]: a D that does not separate, or a D_C at chance, drives G with
  noise.
* :func:`term_grad_norms`: the norm of each loss term's gradient on G, E_U and backbone + E_R: which term
  drives which module, and whether the GAN terms move E_R at all in stage 3.
"""
from typing import Dict, Iterable, List

import torch
from torch import Tensor, nn

__all__ = ["ACTIVE_VARIANCE", "latent_stats", "discriminator_stats", "term_grad_norms"]

ACTIVE_VARIANCE = 0.01


@torch.no_grad()
def latent_stats(mu: Tensor, logvar: Tensor) -> Dict[str, Tensor]:
    """mu, logvar (B, F, p_U) -> ``eu/kl``, ``eu/kl_p<k>`` (k = 0..F-1: the K part features, then the cells of
    MODEL.EU_GRID), ``eu/active``, ``eu/mu_std``."""
    mu, logvar = mu.detach().float(), logvar.detach().float()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)  # (B, F, p_U)
    per_part = kl.sum(2).mean(0)  # (F,)
    stats = {"eu/kl": per_part.sum()}
    stats.update({f"eu/kl_p{k}": v for k, v in enumerate(per_part)})
    if mu.size(0) > 1:
        spread = mu.var(0)  # (K, p_U): how much each unit's mean varies across the batch
        stats["eu/active"] = (spread > ACTIVE_VARIANCE).float().mean()
        stats["eu/mu_std"] = spread.sqrt().mean()
    return stats


@torch.no_grad()
def discriminator_stats(patch: Tensor, cls: Tensor, num_real: int, pids: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """D's outputs on [real | fakes]: patch logits (R+F, 1, h, w), class logits (R+F, C); ``pids`` (R,) the real
    images' classes, ``labels`` (F,) the classes the fakes were generated with."""
    p = torch.sigmoid(patch.detach().float()).flatten(1).mean(1)  # (R+F,)
    hit = cls.detach().argmax(1) == torch.cat([pids, labels])
    return {"gan/D_real": p[:num_real].mean(), "gan/D_fake": p[num_real:].mean(),
            "gan/DC_acc_real": hit[:num_real].float().mean(), "gan/DC_acc_fake": hit[num_real:].float().mean()}


def term_grad_norms(terms: Dict[str, Tensor], modules: Dict[str, List[nn.Module]]) -> Dict[str, Tensor]:
    """``grad_<module>/<term>``: the L2 norm of d term / d (parameters of the module group), for groups with
    trainable parameters. The graph is kept (the update's backward follows); nothing is accumulated in .grad."""
    groups = {name: [p for m in ms for p in m.parameters() if p.requires_grad] for name, ms in modules.items()}
    groups = {name: params for name, params in groups.items() if params}
    flat = [p for params in groups.values() for p in params]
    norms = {}
    for term, value in terms.items():
        if not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, flat, retain_graph=True, allow_unused=True)
        start = 0
        for name, params in groups.items():
            part = [g for g in grads[start:start + len(params)] if g is not None]
            start += len(params)
            norms[f"grad_{name}/{term}"] = _norm(part)
    return norms


def _norm(grads: Iterable[Tensor]) -> Tensor:
    grads = list(grads)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
