"""Optimisers of a stage and one optimiser's update (backward, loss scaling, non-finite policy, step).

A method (its objective, :mod:`.objective`) asks for each stage's optimisers as :class:`OptimizerSpec` objects: the
modules, Adam or SGD and their settings, a MultiStepLR schedule, made from the config's optimiser keys resolved
once (:class:`OptimizerSettings`); :func:`build_optimizer` builds them fresh when the stage starts. Nothing here
knows which method asks.
"""
import dataclasses
import math
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

from .. import comm
from .scalars import ScalarQueue

__all__ = ["StageOptimizer", "adam", "sgd", "OptimizerSpec", "OptimizerSettings", "build_optimizer", "NonfiniteLog",
           "OptimizerUpdate"]


class StageOptimizer:
    """An optimiser, its scheduler and its AMP gradient scaler."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def skip_epochs(self, epochs: int) -> None:
        """Step the scheduler over ``epochs`` epochs that this optimiser did not run (a stage resumed from weights
        alone), so that its learning rate is the schedule's at the next epoch."""
        with warnings.catch_warnings():  # no optimiser step is due: those epochs' steps are in the weights
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for _ in range(epochs):
                self.scheduler.step()


def adam(params, **settings) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where torch has the kernel for the parameters' device (CPU from torch 2.4,
    CUDA): one kernel over every tensor instead of a loop over them, the same update within float rounding."""
    try:
        return torch.optim.Adam(params, fused=True, **settings)
    except RuntimeError:  # torch < 2.4 on the CPU, or a device without the fused kernel
        return torch.optim.Adam(params, **settings)


def sgd(params, momentum: float, **settings) -> torch.optim.SGD:
    """``torch.optim.SGD`` with momentum, fused where torch has the kernel (so a step can be skipped on the
    device, :class:`OptimizerUpdate`). Its momentum buffers start at zero: the first step then makes torch's first
    step (buffer = gradient, as dampening is 0) whether or not an earlier step was skipped (fused SGD
    skipping its first step would keep uninitialised buffers)."""
    try:
        opt = torch.optim.SGD(params, momentum=momentum, fused=True, **settings)
    except RuntimeError:  # torch < 2.4 on the CPU, or a device without the fused kernel
        opt = torch.optim.SGD(params, momentum=momentum, **settings)
    if momentum:
        for group in opt.param_groups:
            for p in group["params"]:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser of a stage as a method asks for it (its settings resolved from the config): what it updates,
    the update rule, the learning-rate schedule."""

    modules: Tuple[nn.Module, ...]
    kind: str  # "adam" | "sgd"
    lr: float
    weight_decay: float  # coupled (L2 in the gradient), as the authors' code
    milestones: Tuple[int, ...] = ()  # epochs at which MultiStepLR multiplies the rate by gamma
    gamma: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.999)  # adam
    amsgrad: bool = False  # adam
    momentum: float = 0.0  # sgd
    slow: Tuple[nn.Module, ...] = ()  # modules among ``modules`` updated at lr x slow_mult
    slow_mult: float = 1.0


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The optimiser keys of TRAIN, resolved once (docs/configuration.md)."""

    lr: Dict[int, float]  # stage -> learning rate
    milestones: Dict[int, Tuple[int, ...]]  # stage -> MultiStepLR milestones
    gamma: float
    adam_betas: Tuple[float, float]
    weight_decay: float
    amsgrad: bool
    d_optimizer: str  # sgd | adam
    d_momentum: float
    d_adam_betas: Tuple[float, float]
    d_lr_mult: float
    d_weight_decay: float
    lr_mult_gu: float  # stage 3: G and E_U at this x the rate

    @classmethod
    def from_config(cls, cfg):
        t = cfg.TRAIN
        return cls({n: t[f"STAGE{n}"].LR for n in (1, 2, 3)},
                   {n: tuple(t[f"STAGE{n}"].MILESTONES) for n in (1, 2, 3)}, t.GAMMA, tuple(t.ADAM_BETAS),
                   t.WEIGHT_DECAY, t.AMSGRAD, t.D_OPTIMIZER, t.D_MOMENTUM, tuple(t.D_ADAM_BETAS), t.D_LR_MULT,
                   t.D_WEIGHT_DECAY, t.LR_MULT_GU)

    def adam(self, stage: int, modules, slow=()) -> OptimizerSpec:
        """Adam with the authors' settings (betas, coupled weight decay, amsgrad) at the stage's rate; ``slow``
        modules at LR_MULT_GU x it in stage 3."""
        return OptimizerSpec(tuple(modules), "adam", self.lr[stage], self.weight_decay, self.milestones[stage],
                             self.gamma, betas=self.adam_betas, amsgrad=self.amsgrad,
                             slow=tuple(slow) if stage == 3 else (), slow_mult=self.lr_mult_gu)

    def discriminator(self, stage: int, modules) -> OptimizerSpec:
        """D's optimiser: SGD with momentum (paper) or Adam with D_ADAM_BETAS, at D_LR_MULT x the stage's rate."""
        lr = self.lr[stage] * self.d_lr_mult
        if self.d_optimizer == "adam":
            return OptimizerSpec(tuple(modules), "adam", lr, self.d_weight_decay, self.milestones[stage],
                                 self.gamma, betas=self.d_adam_betas)
        return OptimizerSpec(tuple(modules), "sgd", lr, self.d_weight_decay, self.milestones[stage], self.gamma,
                             momentum=self.d_momentum)


def build_optimizer(spec: OptimizerSpec, make_scaler: Callable[[], torch.amp.GradScaler]) -> StageOptimizer:
    """The optimiser, scheduler and scaler that ``spec`` asks for."""
    params = [p for m in spec.modules for p in m.parameters()]
    slow_ids = {id(p) for m in spec.slow for p in m.parameters()} if spec.slow_mult != 1.0 else set()
    groups = [{"params": [p for p in params if id(p) not in slow_ids], "lr": spec.lr}]
    if slow_ids:
        groups.append({"params": [p for p in params if id(p) in slow_ids], "lr": spec.lr * spec.slow_mult})
    if spec.kind == "adam":
        opt = adam(groups, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay, amsgrad=spec.amsgrad)
    elif spec.kind == "sgd":
        opt = sgd(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    else:
        raise ValueError(f"unknown optimiser kind {spec.kind!r}; use adam or sgd")
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(spec.milestones), gamma=spec.gamma)
    return StageOptimizer(opt, sched, make_scaler())


class NonfiniteLog:
    """The non-finite losses of the updates since the last :meth:`collect`, kept on the device.

    Each update records its terms, whether its summed loss was finite on this process and whether it was
    skipped (on any process); :meth:`collect`, at a logging point, reads them in one host synchronisation.
    ``where`` is the label the engine sets before each step (stage, epoch, iteration).
    """

    def __init__(self):
        self.queue = ScalarQueue()
        self.where = None

    def record(self, terms: Dict[str, Tensor], total: Tensor, local_bad: Tensor, skipped: Tensor) -> None:
        self.queue.add(self.where, {**terms, "total": total, "local_bad": local_bad, "skipped": skipped})

    def collect(self) -> List[Tuple[object, str, float]]:
        """(where, term, value) per skipped update since the last call, in order: the first non-finite term
        of the lowest rank that had one (``"<term> (rank r)"`` under torchrun; ``total`` when finite terms
        summed to inf - inf). Every rank gets the same list."""
        skipped, mine = [], []
        for where, values in self.queue.drain():
            if values.pop("skipped"):
                skipped.append(where)
                bad = values.pop("local_bad")
                total = values.pop("total")
                mine.append(None if not bad else next(((k, v) for k, v in values.items() if not math.isfinite(v)),
                                                      ("total", total)))
        if not skipped:
            return []
        reports = comm.all_gather_object(mine)
        found = []
        for i, where in enumerate(skipped):
            rank, (name, value) = next((r, report[i]) for r, report in enumerate(reports) if report[i] is not None)
            found.append((where, f"{name} (rank {rank})" if len(reports) > 1 else name, value))
        return found


class OptimizerUpdate:
    """One optimiser's update from a dict of loss terms: zero_grad, backward (scaled), step, without waiting
    for the device.

    When the summed loss is not finite on any process, every process skips the step on the device: a fused
    optimiser is told so through ``found_inf`` (the flag loss scaling uses), an AMP gradient scaler sees the
    gradients made non-finite and skips (backing its scale off), and only an optimiser without a fused kernel
    (torch < 2.4 on the CPU) asks the host. ``log`` records each update; the engine decides at its logging
    points whether to stop or count the skipped steps (TRAIN.NONFINITE).
    """

    def __init__(self, stage_optimizer: StageOptimizer, log: NonfiniteLog):
        self.opt = stage_optimizer
        self.log = log

    def __call__(self, terms: Dict[str, Tensor]) -> Tensor:
        """Returns whether the step was skipped, a 0-d bool tensor on the device."""
        optimizer, scaler = self.opt.optimizer, self.opt.scaler
        optimizer.zero_grad(set_to_none=True)
        total = sum(terms.values())
        local_bad = ~torch.isfinite(total.detach())
        skipped = comm.any_rank(local_bad)
        self.log.record({k: v.detach() for k, v in terms.items()}, total.detach(), local_bad, skipped)
        if scaler.is_enabled():
            # a NaN factor makes every gradient non-finite where the loss was (1.0 elsewhere: exact)
            scaler.scale(total * torch.where(skipped, float("nan"), 1.0)).backward()
            scaler.step(optimizer)
            scaler.update()
        elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: skips where found_inf != 0
            total.backward()
            optimizer.found_inf = skipped.float()
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        elif not skipped.item():
            total.backward()
            optimizer.step()
        return skipped
