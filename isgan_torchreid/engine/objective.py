"""Training objectives: what one step of each stage computes and updates [Eq. 1-8].

An objective is built once from the config, with every loss weight and switch resolved into
:class:`LossSettings`; the loop (:mod:`.staged`) only feeds batches to :meth:`step`. Each objective also
owns its method's stage table: the modules a stage trains.

* :class:`IdentityObjective` trains any re-ID model on identities: cross-entropy on each logit tensor
  [Eq. 1], plus the batch-hard triplet loss on the global features when the model returns them (MGN).
  Stage 1 trains the whole model; stage 3 continues the same objective, weighted by λ_R as Eq. 8 weights
  L_R, at the stage-3 learning rate. So the E_R baseline, MGN and torchreid models can follow IS-GAN's
  E_R schedule (stages [1, 3]); they have no stage 2.
* :class:`ISGANObjective` adds IS-GAN's stages 2 and 3 (paper Sec. 4.1, "Training"):

=====  ============================  ==================================  ==========================
stage  trains                        frozen (requires_grad off, BN eval)  loss
=====  ============================  ==================================  ==========================
1      backbone, E_R                 E_U, G, D (not even run)             L_R
2      E_U, G, D_D/D_C               backbone, E_R (run under no_grad)    Eq. 8 without L_R
3      everything                    nothing                              Eq. 8
=====  ============================  ==================================  ==========================

One stage-2/3 step: one encoder pass; the auto-encoded, identity-shuffled and part-shuffled inputs go
through G as one concatenated batch (``MODEL.G_JOINT_BATCH``); one D step on ``[real | fakes.detach()]``;
then one encoder/G step against the updated D with D's parameters frozen (no wasted D gradients).

The steps call the model's modules through ``self.net``: the model itself, or under torchrun a view whose
modules of the current stage are DDP wrappers (:func:`.distributed.data_parallel`, set by the engine for
each stage from :meth:`~IdentityObjective.parallel_modules`). The G step calls the unwrapped D, which is frozen
there: a DDP wrapper would all-reduce nothing but still expect D's gradients.
"""
import dataclasses
import warnings
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import comm, compat
from ..config import METHODS, method_name
from ..errors import ISGANError
from ..losses import isgan as L
from ..losses.shuffle import part_shuffle, part_shuffle_mask, sample_partners, sample_strangers
from ..models.frozen import frozen, running_statistics
from ..models.images import image_target, image_to_unit, luminance, normalize
from .diagnostics import discriminator_stats, latent_stats, term_grad_norms
from .gradient_cap import cap_branch_gradient
from .optim import OptimizerSettings, OptimizerSpec

__all__ = ["LossSettings", "Precision", "Generation", "IdentityObjective", "ISGANObjective",
           "register_method", "build_objective", "logged"]

# attributes of ISGAN that each stage trains
ISGAN_STAGE_MODULES = {
    1: ("backbone", "encoder_r"),
    2: ("encoder_u", "generator", "discriminator"),
    3: ("backbone", "encoder_r", "encoder_u", "generator", "discriminator"),
}


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The LOSS group, resolved once: the weights of Eq. 8 and the choices of docs/design.md "Loss scaling"."""

    lambda_r: float
    lambda_u: Tuple[float, float]  # (stage 2, stage 3)
    lambda_s: float
    lambda_ps: float
    lambda_d: float  # generator side of L_D
    lambda_c: float  # generator side of L_C
    d_lambda_d: float  # discriminator side of L_D
    d_lambda_c: float  # discriminator side of L_C
    id_reduction: str
    kl_reduction: str
    kl_free_bits: float
    label_smooth: float
    d_label_smooth: bool
    class_on_auto: bool
    lambda_x: float  # generator side of L_X, D_C on cross-identity fakes
    lambda_code: float  # L_code, E_R's reading of cross-identity fakes (cross-identity fakes when either is > 0)
    code_input: str  # "rgb": E_R reads L_code's fakes as they are; "gray": their luminance, and b's image's
    lambda_feat: float  # L_feat, the trunk's reading of the fakes with a pixel target against their targets
    lambda_adv_u: float  # L_nu, E_U's side of the nuisance code's identity adversary (D_nu its side)
    lambda_r_fake: float  # L_R_fake, stage 3: E_R learns the identities of the cross-identity fakes
    r_fake_label_smooth: float  # L_R_fake's label smoothing; 0: label_smooth's
    r_fake_judge: str  # "teacher": each fake's L_R_fake weighted by the identity teacher's b-vs-a verdict; "none"
    code_grad_cap: float  # stage 3: G's gradient on the identity code at most this x L_R's there; 0: no cap
    part_shuffle: str
    target_space: str
    triplet_margin: float
    lambda_triplet: float
    isgan_triplet: bool
    gan_warmup: int  # stage-2 epochs over which G's L_D and L_C rise from 0

    @classmethod
    def from_config(cls, cfg):
        """Read ``cfg.LOSS`` (keys of the same names, upper case)."""
        values = {f.name: cfg.LOSS[f.name.upper()] for f in dataclasses.fields(cls)}
        values["lambda_u"] = tuple(values["lambda_u"])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Precision:
    """TRAIN.AMP, TRAIN.AMP_DTYPE and TRAIN.CHANNELS_LAST for one device. Under AMP, bfloat16 needs no loss
    scaling, so its step never asks the host anything (:class:`~.optim.OptimizerUpdate`); float16 adds a gradient
    scaler."""

    device_type: str
    amp: bool = False
    channels_last: bool = False
    dtype: torch.dtype = torch.bfloat16

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Precision":
        """TRAIN.AMP_DTYPE auto: bfloat16 on the CPU and on GPUs that compute in it (Ampere on), else float16."""
        choice = cfg.TRAIN.AMP_DTYPE
        if choice == "auto":
            bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
            choice = "bfloat16" if bf16 else "float16"
        return cls(device.type, cfg.TRAIN.AMP, cfg.TRAIN.CHANNELS_LAST, getattr(torch, choice))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """Mixed-precision context for forward passes and losses (a no-op without TRAIN.AMP)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, enabled for float16 under AMP only."""
        return torch.amp.GradScaler(self.device_type, enabled=self.amp and self.dtype == torch.float16)


class Generation(NamedTuple):
    """What G made from one batch of B images [Eq. 3, 4]."""

    fakes: Tensor  # (n_sets * B, 3, H, W), sets in the order of ``sets``
    sets: List[str]  # subset of "auto", "shuffled", "part_shuffled", "crossed"
    labels: Tensor  # (n_sets * B,) the identity each fake was drawn with
    mu: Tensor  # (B, K, p_U)
    logvar: Tensor  # (B, K, p_U)
    id_feat: Tensor  # (B, K * p_R)
    code: Tensor  # (B, K * p_R) the identity code G's inputs are drawn from: a view of id_feat, G's path alone
    logits: List[Tensor]  # K x (B, C), E_R's classifiers
    partner: Tensor  # (B,) index of each row's positive partner
    part_mask: Optional[Tensor]  # (B, K) slots taken from the partner, None without part shuffling
    stranger: Optional[Tensor] = None  # (B,) whose identity code each cross-identity fake drew, None without them


def logged(terms: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Loss tensors -> detached 0-d float tensors for logging (means over the processes), on the device."""
    if not terms:
        return {}
    values = comm.mean_over_ranks(torch.stack([v.detach().float().reshape(()) for v in terms.values()]))
    return dict(zip(terms, values.unbind()))


class IdentityObjective:
    """Identity training of any re-ID model: CE on each logit tensor [Eq. 1] (+ batch-hard triplet).

    What an objective declares for the loop and the hooks, besides :meth:`step`: its ``stages``, the modules
    each trains (:meth:`trainable_modules`) and calls through DDP (:meth:`parallel_modules`), its optimisers
    (:meth:`optimizers`) and their learning-rate tags, its loss groups, the relative cost of its stages' steps,
    the stages whose sample grids are drawn, what it sets up when a stage starts afresh (:meth:`start_stage`) and
    what it changes at each epoch (:meth:`before_epoch`)."""

    stages = (1, 3)
    models: Tuple[str, ...] = ()  # the MODEL.NAMEs this method trains under MODEL.METHOD auto (else: identity)
    loss_groups = {"id": ("L_R", "L_tri")}  # the step's terms, grouped for the progress line and TensorBoard
    lr_tags = {"model": "lr"}  # optimiser name -> TensorBoard tag of its learning rate (train/<tag>; lr_<name>)
    stage_cost: Dict[int, float] = {}  # stage -> seconds per step relative to stage 1 (the ETA of stages not run)
    summed_stages: Dict[int, Tuple[int, ...]] = {}  # stage -> the stages whose steps together make one of its own
    sample_stages: Tuple[int, ...] = ()  # stages whose epochs end with a sample grid (visualize.samples: generate)

    @classmethod
    def check_config(cls, cfg, stages) -> None:
        """The config rules of this method for ``stages`` (ISGANError naming the key and the fix); none here."""

    @classmethod
    def from_config(cls, cfg, model: nn.Module, device: torch.device) -> "IdentityObjective":
        return cls(model, LossSettings.from_config(cfg), Precision.from_config(cfg, device),
                   OptimizerSettings.from_config(cfg))

    def __init__(self, model: nn.Module, losses: LossSettings, precision: Precision, optim: OptimizerSettings):
        self.model = model
        self.net = model  # what the steps call: the model, or a view of DDP wrappers of its modules
        self.losses = losses
        self.precision = precision
        self.optim = optim
        self.triplet = compat.torchreid_base().losses.TripletLoss(margin=losses.triplet_margin)

    def trainable_modules(self, stage: int) -> List[nn.Module]:
        """The modules that ``stage`` updates (all of them: stage 3 only lowers the learning rate)."""
        return [self.model]

    def start_stage(self, stage: int) -> None:
        """Set up what ``stage`` needs when it starts afresh (from the previous stage's weights or from scratch; not
        when it resumes); nothing here."""

    def before_epoch(self, stage: int, epoch: int) -> None:
        """Set what the objective changes per epoch (0-based ``epoch`` of ``stage``); nothing here."""

    def check_training_data(self, items, stage: int) -> None:
        """Warn about what in the training items (torchreid's (path, pid, camid, ...) tuples) ``stage`` cannot
        use as meant; nothing here."""

    def optimizers(self, stage: int) -> Dict[str, OptimizerSpec]:
        """Optimiser name -> what it updates in ``stage`` and how: the whole model, Adam."""
        return {"model": self.optim.adam(stage, self.trainable_modules(stage))}

    def parallel_modules(self, stage: int) -> List[str]:
        """What the steps of ``stage`` call whose parameters train: "model" (the whole), or attribute names of
        its modules; under torchrun each gets its own DDP wrapper."""
        return ["model"]

    def identity_terms(self, logits, features, pids: Tensor, weight: float = 1.0) -> Dict[str, Tensor]:
        """``weight`` x (L_R [Eq. 1] on K logit tensors, + λ_tri x batch-hard triplet on the given features)."""
        logits = logits if isinstance(logits, (list, tuple)) else [logits]
        s = self.losses
        terms = {"L_R": weight * L.identity_loss(logits, pids, s.id_reduction, s.label_smooth)}
        if features is not None:
            features = features if isinstance(features, (list, tuple)) else [features]
            terms["L_tri"] = weight * s.lambda_triplet * torch.stack(
                [self.triplet(L.widen(f), pids) for f in features]).mean()
        return terms

    def step(self, imgs: Tensor, pids: Tensor, stage: int, updates) -> Dict[str, Tensor]:
        """One identity step; stage 3 weights the objective by λ_R (Eq. 8). Returns the terms and accuracy
        (:func:`logged`)."""
        with self.precision.autocast():
            outputs = self.net(imgs)
            logits, features = outputs if isinstance(outputs, tuple) else (outputs, None)
            weight = 1.0 if stage == 1 else self.losses.lambda_r
            terms = self.identity_terms(logits, features, pids, weight)
        updates["model"](terms)
        first = logits[0] if isinstance(logits, (list, tuple)) else logits
        terms["acc"] = (first.argmax(1) == pids).float().mean()
        return logged(terms)


class ISGANObjective(IdentityObjective):
    """IS-GAN's three stages [Eq. 1-8]; stage 1 is the identity objective on E_R."""

    stages = (1, 2, 3)
    models = ("isgan",)
    # E_R's identity terms, the encoder/G terms of Eq. 8 and D's terms [Eq. 6, 7]
    loss_groups = {"id": ("L_R", "L_tri"),
                   "gen": ("L_S", "L_PS", "L_U", "L_D", "L_C", "L_X", "L_code", "L_feat", "L_nu"),
                   "disc": ("D_dom", "D_cls", "D_nu")}
    lr_tags = {"model": "lr", "discriminator": "lr_D"}
    # an earlier run of tools/benchmark.py (ResNet-50, 384x128, CPU: 3630 / 8332 / 13274 ms per step);
    # docs/performance.md's same-run table ("Performance", our column: 7126 / 14132 / 23182 ms) gives
    # 1 : 2.0 : 3.3, so the estimates are rough
    stage_cost = {1: 1.0, 2: 2.3, 3: 3.7}
    summed_stages = {3: (1, 2)}  # stage 3 trains what stages 1 and 2 train
    sample_stages = (2, 3)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, device: torch.device) -> "ISGANObjective":
        return cls(model, LossSettings.from_config(cfg), Precision.from_config(cfg, device),
                   OptimizerSettings.from_config(cfg), cfg.MODEL.G_JOINT_BATCH, cfg.TRAIN.GRAD_NORM_FREQ)

    @classmethod
    def check_config(cls, cfg, stages) -> None:
        """The config rules of IS-GAN's stages 2-3 among ``stages`` (the shuffling's partners and slots, the
        reconstruction terms, λ_U per stage); ISGANError naming the key and the fix."""
        if not (2 in stages or 3 in stages):
            return
        if cfg.SAMPLER.K < 2:
            raise ISGANError("SAMPLER.K must be >= 2 for stages 2-3: identity shuffling needs a positive "
                             "partner of the same identity in the batch")
        stripes = sum(p for p in cfg.MODEL.PARTS if p > 1)
        slots = stripes if cfg.LOSS.PART_SHUFFLE == "local" else len(cfg.MODEL.PARTS) + stripes
        if cfg.LOSS.LAMBDA_PS > 0 and cfg.LOSS.PART_SHUFFLE != "none" and slots < 2:
            raise ISGANError(f"LOSS.PART_SHUFFLE {cfg.LOSS.PART_SHUFFLE} swaps among {slots} feature(s) of "
                             f"MODEL.PARTS {cfg.MODEL.PARTS}, but a part-level shuffle needs at least 2: add "
                             f"stripes (e.g. MODEL.PARTS [1, 2, 3]) or set LOSS.LAMBDA_PS 0")
        if cfg.LOSS.LAMBDA_S <= 0 and cfg.LOSS.LAMBDA_PS <= 0:
            raise ISGANError("LOSS.LAMBDA_S and LOSS.LAMBDA_PS are both 0: stages 2-3 need at least one of the "
                             "identity-shuffling losses (Eq. 3, 4)")
        if len(cfg.LOSS.LAMBDA_U) != 2:
            raise ISGANError(f"LOSS.LAMBDA_U = {cfg.LOSS.LAMBDA_U}: give two values, for stage 2 and stage 3")
        if cfg.LOSS.R_FAKE_JUDGE != "none" and cfg.LOSS.LAMBDA_R_FAKE <= 0:
            raise ISGANError(f"LOSS.R_FAKE_JUDGE {cfg.LOSS.R_FAKE_JUDGE} weights the fakes of L_R_fake, which "
                             f"LOSS.LAMBDA_R_FAKE 0 turns off: set LOSS.LAMBDA_R_FAKE > 0 (e.g. 2.0), or "
                             f"LOSS.R_FAKE_JUDGE none")
        if cfg.LOSS.CODE_INPUT != "rgb" and cfg.LOSS.LAMBDA_CODE <= 0:
            raise ISGANError(f"LOSS.CODE_INPUT {cfg.LOSS.CODE_INPUT} says what E_R reads for L_code, which "
                             f"LOSS.LAMBDA_CODE 0 turns off: set LOSS.LAMBDA_CODE > 0 (e.g. 1.0), or "
                             f"LOSS.CODE_INPUT rgb")

    def __init__(self, model: nn.Module, losses: LossSettings, precision: Precision, optim: OptimizerSettings,
                 joint_g_batch: bool = True, grad_norm_freq: int = 0):
        super().__init__(model, losses, precision, optim)
        missing = [name for name in ISGAN_STAGE_MODULES[3] if not isinstance(getattr(model, name, None), nn.Module)]
        if missing:
            raise ISGANError(f"IS-GAN's method trains E_U, G and D, which {type(model).__name__} lacks "
                             f"({', '.join(missing)}): set MODEL.NAME isgan, or MODEL.METHOD auto or identity")
        self.joint_g_batch = joint_g_batch
        self.grad_norm_freq = grad_norm_freq  # every n-th stage-2/3 step of this process logs term_grad_norms
        self.gan_steps = 0
        self.gan_weight = 1.0  # factor on G's L_D and L_C, set per epoch by before_epoch (LOSS.GAN_WARMUP)

    def trainable_modules(self, stage: int) -> List[nn.Module]:
        return [getattr(self.model, name) for name in ISGAN_STAGE_MODULES[stage]]

    def start_stage(self, stage: int) -> None:
        """E_U's own trunk (MODEL.EU_TRUNK frozen) is taken from the trunk as stage 2 or 3 starts: stage 1's, which
        stage 2 does not train, so the copy stage 3 takes equals stage 2's. The identity teacher (LOSS.R_FAKE_JUDGE
        teacher) is taken from the trunk and E_R as stage 3 starts: stage 1's too."""
        if stage > 1:
            self.model.freeze_nuisance_trunk()
        if stage == 3:
            self.model.freeze_identity_teacher()

    def before_epoch(self, stage: int, epoch: int) -> None:
        """G's adversarial and class terms (L_D, L_C, L_X) weighted by min(1, epoch / GAN_WARMUP) in stage 2, full
        in stage 3. D trains on both terms from the first step, so D_D and D_C have learned something before
        they drive G, and G's reconstruction is not held back meanwhile."""
        ramp = stage == 2 and self.losses.gan_warmup > 0
        self.gan_weight = min(1.0, epoch / self.losses.gan_warmup) if ramp else 1.0

    def check_training_data(self, items, stage: int) -> None:
        """Warn once when identity/part shuffling (stages 2-3) will pair some images with themselves."""
        n = singleton_identities(items) if stage > 1 else 0
        if n:
            warnings.warn(f"{n} training identities have a single image: their identity and part shuffling "
                          f"degenerate to auto-encoding (the positive partner is the same image)", stacklevel=2)

    def parallel_modules(self, stage: int) -> List[str]:
        """Stage 1 calls the model (its forward runs the trunk and E_R); stages 2-3 call each trained module."""
        return ["model"] if stage == 1 else list(ISGAN_STAGE_MODULES[stage])

    def optimizers(self, stage: int) -> Dict[str, OptimizerSpec]:
        """Encoders + G under one Adam (E_U and G at LR_MULT_GU x the rate in stage 3), D under its own
        (stages 2-3)."""
        m = self.model
        encoders_and_g = [x for x in self.trainable_modules(stage) if x is not m.discriminator]
        specs = {"model": self.optim.adam(stage, encoders_and_g, slow=[m.encoder_u, m.generator])}
        if stage > 1:
            specs["discriminator"] = self.optim.discriminator(stage, [m.discriminator])
        return specs

    # ------------------------------------------------------------------ images

    def image_target(self, imgs: Tensor) -> Tensor:
        """Normalised input -> the space G's tanh output and D's inputs live in (LOSS.TARGET_SPACE)."""
        return image_target(imgs, self.losses.target_space)

    def image_to_unit(self, fake: Tensor) -> Tensor:
        """Inverse of :meth:`image_target`, to [0, 1] RGB for display."""
        return image_to_unit(fake, self.losses.target_space)

    def image_to_input(self, fake: Tensor) -> Tensor:
        """G's output -> the trunk's input (normalised as the real images are), for E_R's reading of fakes."""
        return normalize(self.image_to_unit(fake))

    # ------------------------------------------------------------------ generation

    def crosses_identities(self, stage: int) -> bool:
        """Whether G also draws the cross-identity set in ``stage``: for L_X or L_code, and in stage 3 for
        L_R_fake."""
        s = self.losses
        return s.lambda_x > 0 or s.lambda_code > 0 or (stage == 3 and s.lambda_r_fake > 0)

    def generate(self, imgs: Tensor, pids: Tensor, stage: int, net=None) -> Generation:
        """Encode once, pick partners, shuffle, and run G [Eq. 3, 4]; E_R runs under no_grad in stage 2.

        ``net``: what to call (default ``self.net``; the plain model for a look outside training)."""
        net, s = self.net if net is None else net, self.losses
        with torch.set_grad_enabled(stage == 3 and torch.is_grad_enabled()):
            trunk = net.backbone(imgs)  # (B, C4, H/16, W/16)
            id_feat, logits = net.encoder_r(trunk)  # (B, K*p_R), K x (B, C)
        if stage == 2:
            trunk = trunk.detach()
        code = id_feat.view_as(id_feat)  # G's path into the identity code (LOSS.CODE_GRAD_CAP hooks it)
        nid, mu, logvar = net.encoder_u(self.model.nuisance_input(imgs, trunk))  # (B, K*p_U), (B, K, p_U) x2
        partner = sample_partners(pids)  # (B,)
        id_partner = code[partner]
        sets, ids, mask = [], [], None
        if s.lambda_s > 0:
            sets += ["auto", "shuffled"]  # i == j and i != j in Eq. 3
            ids += [code, id_partner]
        labels = [pids] * len(sets)
        if s.lambda_ps > 0:
            sets.append("part_shuffled")  # Eq. 4
            mask = self.part_mask(code.size(0), code.device)
            ids.append(code if mask is None else part_shuffle(code, id_partner, mask))
            labels.append(pids)
        stranger = None
        if self.crosses_identities(stage):  # another identity in this image's nuisance
            stranger = sample_strangers(pids)  # (B,)
            sets.append("crossed")
            ids.append(code[stranger])
            labels.append(pids[stranger])
        n = len(sets)
        if self.joint_g_batch:  # one BatchNorm batch of n*B
            fakes = net.generator(torch.cat(ids), nid.repeat(n, 1), torch.cat(labels))  # (n*B, 3, H, W)
        else:  # each set normalised on its own (DDP allows the n calls before one backward)
            fakes = torch.cat([net.generator(i, nid, c) for i, c in zip(ids, labels)])
        return Generation(fakes, sets, torch.cat(labels), mu, logvar, id_feat, code, logits, partner, mask,
                          stranger)

    def code_loss(self, fakes: Tensor, id_feat: Tensor, sources: Tensor) -> Tensor:
        """L_code (LOSS.LAMBDA_CODE): E_R reads the fakes (B, 3, H, W) and its K part features should point as the
        identity codes (B, K * p_R) they were drawn with. The pass uses the plain modules with their parameters
        frozen and BatchNorm's running statistics: its gradient reaches the fakes only (G, E_U and, in stage 3,
        E_R through the identity code G drew with), and E_R's statistics see real images alone. The codes are
        targets (detached).

        With LOSS.CODE_INPUT gray E_R reads the fakes' luminance instead, and the targets are its readings of the
        luminance of the real images the codes came from (``sources``, normalised, (B, 3, H, W)): a fake that
        takes b's colours but another person's silhouette and brightness of regions does not satisfy it."""
        model = self.model
        imgs = self.image_to_input(fakes)
        target = id_feat.detach()
        with frozen(model.backbone, model.encoder_r):
            if self.losses.code_input == "gray":
                imgs = luminance(imgs)
                with torch.no_grad():
                    target, _ = model.encoder_r(model.backbone(luminance(sources)))  # (B, K*p_R)
            read, _ = model.encoder_r(model.backbone(imgs))  # (B, K*p_R)
        return L.code_loss(read, target, model.encoder_r.branches.num_features)

    def fake_identity_loss(self, fakes: Tensor, labels: Tensor, sources: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """L_R_fake (LOSS.LAMBDA_R_FAKE, stage 3): the trunk and E_R read the cross-identity fakes (B, 3, H, W) as
        training images of the identities drawn into them (``labels``, (B,)): L_R [Eq. 1] of them, the targets
        smoothed by LOSS.R_FAKE_LABEL_SMOOTH when it is > 0 (CamStyle's regularisation of generated images), else
        as the real images' (LABEL_SMOOTH). The fakes are detached (the term trains the trunk and E_R, not G or
        E_U) and read on BatchNorm's running statistics, which see real images alone. The plain modules are called,
        not their DDP wrappers (one forward each per step); that torchrun steps as one process does with this term
        is not tested.

        With LOSS.R_FAKE_JUDGE teacher each fake's term is weighted by w = sigmoid(l_b - l_a) (B,), l the mean of
        the identity teacher's K logits of the fake, b its label, a the identity whose nuisance code it carries
        (``sources``, (B,)): how far a classifier trained on real images only reads the fake as b rather than as
        the person G took the rest of the picture from. Returns (the term, w or None)."""
        model, s = self.model, self.losses
        imgs = self.image_to_input(fakes.detach())
        weights = None
        if s.r_fake_judge == "teacher":
            mean_logits = torch.stack([L.widen(x) for x in model.teacher_logits(imgs)]).mean(0)  # (B, C)
            rows = torch.arange(len(labels), device=labels.device)
            weights = torch.sigmoid(mean_logits[rows, labels] - mean_logits[rows, sources])  # (B,)
        with running_statistics(model.backbone, model.encoder_r):
            _, logits = model.encoder_r(model.backbone(imgs))  # K x (B, C)
        return L.identity_loss(logits, labels, s.id_reduction, s.r_fake_label_smooth or s.label_smooth,
                               weights), weights

    def feature_loss(self, fakes: Tensor, imgs: Tensor) -> Tensor:
        """L_feat (LOSS.LAMBDA_FEAT): the trunk reads the fakes (n*B, 3, H, W), n sets of the batch's images in
        order, and their targets, the normalised real images (B, 3, H, W); its maps after layer1, layer2 and its
        output should match (:func:`~isgan_torchreid.losses.isgan.feature_loss`). As for L_code the trunk is
        frozen and on its running statistics: the gradient reaches the fakes only, and the targets are read
        without one."""
        model = self.model
        n = fakes.size(0) // imgs.size(0)
        with frozen(model.backbone):
            with torch.no_grad():
                real = model.trunk_maps(imgs)
            read = model.trunk_maps(self.image_to_input(fakes))
        return L.feature_loss(read, [r.repeat(n, 1, 1, 1) for r in real])

    def part_mask(self, batch_size: int, device) -> Optional[Tensor]:
        """(B, K) slots S swaps, per LOSS.PART_SHUFFLE; None for 'none' (the authors' code, bug B1)."""
        mode = self.losses.part_shuffle
        if mode == "none":
            return None
        branches = self.model.encoder_r.branches
        slots = branches.local_indices if mode == "local" else list(range(branches.num_features))
        return part_shuffle_mask(batch_size, branches.num_features, slots, device=device)

    # ------------------------------------------------------------------ one step

    def step(self, imgs: Tensor, pids: Tensor, stage: int, updates) -> Dict[str, Tensor]:
        """One step of ``stage``: the identity step in stage 1, else a D step then an encoder/G step.

        Static shapes and no host synchronisation: the fake sets whose D_C term counts are sliced, not masked."""
        if stage == 1:
            return super().step(imgs, pids, stage, updates)
        s = self.losses
        disc = self.model.discriminator  # the plain D; self.net.discriminator is its DDP wrapper under torchrun
        B = imgs.size(0)
        target = self.image_target(imgs)
        with self.precision.autocast():
            gen = self.generate(imgs, pids, stage)
        n = len(gen.sets)
        labels = gen.labels
        # sets whose D_C term counts [Eq. 7]: the shuffled ones, plus the auto-encoded (the first set) with
        # CLASS_ON_AUTO, plus the cross-identity one (the last set) on D's side; they are the fakes from row
        # `first` on; G's L_C takes them up to row `last`, its L_X the cross-identity ones after it
        first = B if gen.sets[0] == "auto" and not s.class_on_auto else 0
        last = (n - 1) * B if gen.sets[-1] == "crossed" else n * B
        n_cls = n - first // B

        # ---- D step: real vs detached fakes in one pass [Eq. 6, 7] (and the nuisance codes, LAMBDA_ADV_U)
        codes = gen.mu.flatten(1).detach() if s.lambda_adv_u > 0 else None  # (B, F*p_U)
        disc.requires_grad_(True)
        with self.precision.autocast():
            real_fake = torch.cat([target.to(gen.fakes.dtype), gen.fakes.detach()])  # (B+n*B, 3, H, W)
            patch, cls, *code_logits = self.net.discriminator(real_fake, codes)  # (B+n*B, 1, h, w), (B+n*B, C)
            d_terms = {"D_dom": s.d_lambda_d * L.discriminator_domain_loss(
                patch[:B], patch[B:], smooth=s.d_label_smooth, fake_weight=n)}
            d_cls = L.class_loss(cls[:B], pids)
            if n_cls:
                d_cls = d_cls + n_cls * L.class_loss(cls[B + first:], labels[first:])
            d_terms["D_cls"] = s.d_lambda_c * d_cls
            if code_logits:  # (B, C): the identities the nuisance codes give away
                d_terms["D_nu"] = L.class_loss(code_logits[0], pids)
        stats = {**discriminator_stats(patch, cls, B, pids, labels), **latent_stats(gen.mu, gen.logvar)}
        if code_logits:
            stats["eu/id_acc"] = (code_logits[0].detach().argmax(1) == pids).float().mean()
        updates["discriminator"](d_terms)

        # ---- encoder/G step against the updated D, with D frozen (and unwrapped: nothing of it to all-reduce)
        disc.requires_grad_(False)
        with self.precision.autocast():
            recon = {name: L.reconstruction_loss(f, target) for name, f in zip(gen.sets, gen.fakes.chunk(n))
                     if name != "crossed"}  # a crossed fake has no image to match
            terms = {}
            if "auto" in recon:
                terms["L_S"] = s.lambda_s * (recon["auto"] + recon["shuffled"])
            if "part_shuffled" in recon:
                terms["L_PS"] = s.lambda_ps * recon["part_shuffled"]
            # 'official' sums over the batch: x processes, as DDP averages the gradients of the processes' sums
            batch_sum = comm.get_world_size() if s.kl_reduction == "official" else 1
            terms["L_U"] = s.lambda_u[stage - 2] * batch_sum * L.kl_loss(gen.mu, gen.logvar, s.kl_reduction,
                                                                                    s.kl_free_bits)
            if self.gan_weight > 0:
                patch, cls = disc(gen.fakes)  # (n*B, 1, h, w), (n*B, C)
                terms["L_D"] = self.gan_weight * s.lambda_d * n * L.generator_domain_loss(patch)
                if last > first:
                    sets_c = (last - first) // B
                    terms["L_C"] = self.gan_weight * s.lambda_c * sets_c * L.class_loss(cls[first:last],
                                                                                         labels[first:last])
                if last < n * B and s.lambda_x > 0:
                    terms["L_X"] = self.gan_weight * s.lambda_x * L.class_loss(cls[last:], labels[last:])
            if s.lambda_code > 0:
                terms["L_code"] = s.lambda_code * self.code_loss(gen.fakes[last:], gen.id_feat[gen.stranger],
                                                                      imgs[gen.stranger])
            if s.lambda_feat > 0:
                terms["L_feat"] = s.lambda_feat * self.feature_loss(gen.fakes[:last], imgs)
            if s.lambda_adv_u > 0:  # against the updated, frozen adversary: its gradient reaches E_U alone
                terms["L_nu"] = s.lambda_adv_u * L.confusion_loss(disc.code_head(gen.mu.flatten(1)))
            if stage == 3:  # L_R [Eq. 1] (+ MGN's triplet on the global features with ISGAN_TRIPLET)
                features = self.model.global_features(gen.id_feat) if s.isgan_triplet else None
                terms.update(self.identity_terms(gen.logits, features, pids, s.lambda_r))
                if s.lambda_r_fake > 0:
                    fake_term, judged = self.fake_identity_loss(gen.fakes[last:], labels[last:], pids)
                    terms["L_R_fake"] = s.lambda_r_fake * fake_term
                    if judged is not None:
                        stats["gan/r_fake_weight"] = judged.mean()
        diagnose = self.grad_norm_freq and self.gan_steps % self.grad_norm_freq == 0
        # skipped under torchrun (the DDP wrappers' hooks forbid extra backward passes) and with TRAIN.AMP (these
        # extra passes under CPU bfloat16 autocast returned NaN now and then in the tests, the update finite)
        if diagnose and comm.get_world_size() == 1 and not self.precision.amp:
            m = self.model
            stats.update(term_grad_norms(terms, {"G": [m.generator], "E_U": [m.encoder_u],
                                                 "E_R": [m.backbone, m.encoder_r]}))
        if stage == 3 and s.code_grad_cap > 0:  # after the diagnostics: they measure the terms uncapped
            for key in ("gan/code_grad_ratio", "gan/code_grad_scale"):  # set by the hook in the backward pass
                stats[key] = torch.zeros((), device=imgs.device)
            cap_branch_gradient(gen.id_feat, gen.code, s.code_grad_cap, stats, "gan/code_grad")
        self.gan_steps += 1
        updates["model"](terms)
        disc.requires_grad_(True)
        return logged({**terms, **d_terms, **{f"L1_{k}": v for k, v in recon.items()}, **stats})


def singleton_identities(dataset) -> int:
    """Number of training identities with a single image (their shuffling degenerates to auto-encoding)."""
    counts = {}
    for item in dataset:
        counts[item[1]] = counts.get(item[1], 0) + 1
    return sum(1 for c in counts.values() if c == 1)


def register_method(name: str):
    """Class decorator: make an objective class (the contract of :class:`IdentityObjective`) the method ``name``
    of the config's registry (:data:`isgan_torchreid.config.METHODS`), which MODEL.METHOD selects and whose
    stages and rules the config's validation checks."""
    def register(cls):
        METHODS[name] = cls
        return cls
    return register


register_method("identity")(IdentityObjective)
register_method("isgan")(ISGANObjective)


def build_objective(cfg, model: nn.Module, device: torch.device) -> IdentityObjective:
    """The objective of the config's method (:func:`isgan_torchreid.config.method_name`; validated with the
    config) for ``model``."""
    return METHODS[method_name(cfg)].from_config(cfg, model, device)
