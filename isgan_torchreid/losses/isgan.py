"""IS-GAN loss terms [Eq. 1-7], one small function per term.

The engine weights them with the LAMBDA_* factors and sums them into the overall objective [Eq. 8].
Every term works on logits (no Sigmoid + BCELoss) and computes in float32 at least (half-precision inputs from
autocast are widened, float64 ones kept), so it is safe under autocast, and draws any random targets on the
inputs' device.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = [
    "widen",
    "identity_loss",
    "kl_loss",
    "reconstruction_loss",
    "discriminator_domain_loss",
    "generator_domain_loss",
    "class_loss",
    "code_loss",
    "feature_loss",
]


def widen(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is."""
    return t if t.dtype == torch.float64 else t.float()


# Width of the discriminator's smoothed domain targets (reference code): real ~ U(0.7, 1.0), fake ~ U(0.0, 0.3).
_SMOOTH_WIDTH = 0.3


def identity_loss(
    logits: Sequence[Tensor], labels: Tensor, reduction: str = "mean", label_smooth: float = 0.0,
    weights: Optional[Tensor] = None,
) -> Tensor:
    """ID loss L_R [Eq. 1]: cross-entropy of each of the K classifiers, averaged ('mean') or summed ('sum') over K.
    ``weights`` (B,): each image's cross-entropy weighted by it before the mean over the batch (no gradient)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"identity loss: reduction {reduction!r} is not one of 'mean' (reference code), 'sum' (paper)")
    if len(logits) == 0:
        raise ValueError("identity loss: got no logits; the identity encoder must return one logit tensor per feature")
    if weights is None:
        per_feature = torch.stack(
            [F.cross_entropy(widen(logit), labels, label_smoothing=label_smooth) for logit in logits]
        )  # (K,)
    else:
        per_image = torch.stack([F.cross_entropy(widen(logit), labels, label_smoothing=label_smooth,
                                                 reduction="none") for logit in logits])  # (K, B)
        per_feature = (per_image * widen(weights.detach())).mean(1)  # (K,)
    return per_feature.mean() if reduction == "mean" else per_feature.sum()


def kl_loss(mu: Tensor, logvar: Tensor, reduction: str = "official", free_bits: float = 0.0) -> Tensor:
    """KL loss L_U [Eq. 5]: KL(N(mu, exp(logvar)) || N(0, I)) for mu, logvar of shape (B, K, D).

    'official' sums over the batch and dims and averages over the K parts (reference code);
    'paper' sums over the K parts and dims and averages over the batch.
    ``free_bits`` > 0 (nats; Kingma et al. 2016, "free bits"): a part whose KL, averaged over the batch, is below
    it counts as ``free_bits`` and passes no gradient, so E_U may keep that much information per part and image
    at no cost, and no part can be pushed to collapse.
    """
    if reduction not in ("official", "paper"):
        raise ValueError(f"KL loss: reduction {reduction!r} is not one of 'official', 'paper'")
    if mu.dim() != 3 or mu.shape != logvar.shape:
        raise ValueError(
            f"KL loss: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must both be (B, K, D); "
            "stack the K per-part tensors along dim 1"
        )
    mu, logvar = widen(mu), widen(logvar)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)  # (B, K, D)
    per_part = kl.sum(dim=2).mean(dim=0)  # (K,) nats per image
    if free_bits > 0:
        per_part = per_part.clamp(min=free_bits)
    if reduction == "official":
        return mu.shape[0] * per_part.mean()
    return per_part.sum()


def reconstruction_loss(fake: Tensor, target: Tensor) -> Tensor:
    """Reconstruction term of L_S and L_PS [Eq. 3, 4]: mean absolute error over all pixels."""
    if fake.shape != target.shape:
        raise ValueError(
            f"reconstruction loss: generated images {tuple(fake.shape)} and targets {tuple(target.shape)} differ; "
            "the generator's output size must equal the input image height/width"
        )
    return F.l1_loss(widen(fake), widen(target))


def discriminator_domain_loss(
    real_logits: Tensor,
    fake_logits: Tensor,
    smooth: bool = True,
    generator: Optional[torch.Generator] = None,
    fake_weight: float = 1.0,
) -> Tensor:
    """Discriminator side of the domain loss L_D [Eq. 6]: BCE(real, 1) + fake_weight * BCE(fake, 0), each a mean.

    With smooth=True the targets are drawn per element from U(0.7, 1.0) (real) and U(0.0, 0.3) (fake).
    ``fake_weight`` = the number of fake sets concatenated in ``fake_logits`` gives Eq. 6's sum over them.
    """
    real_logits, fake_logits = widen(real_logits), widen(fake_logits)
    if smooth:
        real_noise = torch.rand(real_logits.shape, generator=generator, device=real_logits.device,
                                dtype=real_logits.dtype)
        fake_noise = torch.rand(fake_logits.shape, generator=generator, device=fake_logits.device,
                                dtype=fake_logits.dtype)
        real_target = 1.0 - _SMOOTH_WIDTH * real_noise  # U(0.7, 1.0)
        fake_target = _SMOOTH_WIDTH * fake_noise  # U(0.0, 0.3)
    else:
        real_target = torch.ones_like(real_logits)
        fake_target = torch.zeros_like(fake_logits)
    return F.binary_cross_entropy_with_logits(real_logits, real_target) + fake_weight * (
        F.binary_cross_entropy_with_logits(fake_logits, fake_target)
    )


def generator_domain_loss(fake_logits: Tensor) -> Tensor:
    """Generator side of the domain loss L_D [Eq. 6]: BCE of the fakes' logits against 1 (mean)."""
    fake_logits = widen(fake_logits)
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def class_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Class loss L_C [Eq. 7]: cross-entropy of the class discriminator's logits (mean)."""
    return F.cross_entropy(widen(logits), labels)


def confusion_loss(logits: Tensor) -> Tensor:
    """The nuisance code's identity confusion (LOSS.LAMBDA_ADV_U; not in the paper): KL(U || softmax(logits)) of
    an identity classifier's logits (B, C) of E_U's codes, averaged over the batch: mean_c(-log p_c) - log C, 0
    when the classifier cannot tell the identities apart from the codes. Bounded below, unlike a reversed
    cross-entropy, so the encoder's side cannot run away."""
    logits = widen(logits)
    return (-F.log_softmax(logits, dim=1).mean(1)).mean() - math.log(logits.size(1))


def code_loss(features: Tensor, target: Tensor, parts: int) -> Tensor:
    """Code consistency (LOSS.LAMBDA_CODE; not in the paper): 1 - cosine similarity of each of the ``parts``
    part features of ``features`` (B, parts * p) with the same part of ``target`` (B, parts * p), averaged over
    the parts and the batch; 0 when every part points the same way, 2 at most."""
    if features.shape != target.shape:
        raise ValueError(f"code loss: features {tuple(features.shape)} and targets {tuple(target.shape)} differ")
    B = features.shape[0]
    cos = F.cosine_similarity(widen(features).reshape(B, parts, -1), widen(target).reshape(B, parts, -1), dim=2)
    return (1 - cos).mean()


def feature_loss(fake_maps: Sequence[Tensor], real_maps: Sequence[Tensor]) -> Tensor:
    """Feature reconstruction (LOSS.LAMBDA_FEAT; not in the paper): for each pair of maps (N, C, h, w), the squared
    distance between the channel-normalised features at each position (LPIPS's distance without its learned
    weights; Zhang et al. 2018), summed over the channels and averaged over the positions and the images; then
    averaged over the pairs. 0 when every position's features point the same way, 4 at most."""
    if len(fake_maps) != len(real_maps) or not fake_maps:
        raise ValueError(f"feature loss: got {len(fake_maps)} maps of fakes and {len(real_maps)} of targets")
    per_map = []
    for fake, real in zip(fake_maps, real_maps):
        if fake.shape != real.shape:
            raise ValueError(f"feature loss: maps {tuple(fake.shape)} and {tuple(real.shape)} differ")
        diff = F.normalize(widen(fake), dim=1) - F.normalize(widen(real), dim=1)  # (N, C, h, w)
        per_map.append(diff.pow(2).sum(1).mean())
    return torch.stack(per_map).mean()
