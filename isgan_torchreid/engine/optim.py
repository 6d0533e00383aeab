"""Optimisers of a stage and one optimiser's update (backward, loss scaling, non-finite policy, step).

Adam (β, coupled weight decay, amsgrad: the authors' setting) updates the encoders and G; SGD with
momentum updates D (paper Sec. 4.1), or Adam with DCGAN's betas (TRAIN.D_OPTIMIZER adam). Each stage
builds fresh optimisers over the modules it trains, with its own learning rate and MultiStepLR milestones.
"""
import math
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

from .. import comm
from .scalars import ScalarQueue

__all__ = ["StageOptimizer", "adam", "sgd", "build_stage_optimizers", "NonfiniteLog", "Update"]


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
    device, :class:`Update`). Its momentum buffers start at zero: the first step then makes torch's first
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


def build_stage_optimizers(cfg, stage: int, groups: Dict[str, List[nn.Module]], slow: List[nn.Module],
                           make_scaler: Callable[[], torch.amp.GradScaler]) -> Dict[str, StageOptimizer]:
    """One :class:`StageOptimizer` per entry of ``groups`` (name -> modules it updates).

    "discriminator" gets TRAIN.D_OPTIMIZER (SGD or Adam, coupled weight decay D_WEIGHT_DECAY) at D_LR_MULT x the
    stage's learning rate, every other group Adam. In stage 3 the parameters of ``slow`` modules (G and
    E_U) run at TRAIN.LR_MULT_GU x the stage's learning rate.
    """
    train, node = cfg.TRAIN, cfg.TRAIN[f"STAGE{stage}"]
    built = {}
    for name, modules in groups.items():
        params = [p for m in modules for p in m.parameters()]
        d_lr = node.LR * train.D_LR_MULT
        if name == "discriminator" and train.D_OPTIMIZER == "adam":
            opt = adam(params, lr=d_lr, betas=tuple(train.D_ADAM_BETAS), weight_decay=train.D_WEIGHT_DECAY)
        elif name == "discriminator":
            opt = sgd(params, lr=d_lr, momentum=train.D_MOMENTUM, weight_decay=train.D_WEIGHT_DECAY)
        else:
            slowed = stage == 3 and train.LR_MULT_GU != 1.0
            slow_ids = {id(p) for m in slow for p in m.parameters()} if slowed else set()
            param_groups = [{"params": [p for p in params if id(p) not in slow_ids], "lr": node.LR}]
            if slow_ids:
                param_groups.append({"params": [p for p in params if id(p) in slow_ids],
                                     "lr": node.LR * train.LR_MULT_GU})
            opt = adam(param_groups, lr=node.LR, betas=tuple(train.ADAM_BETAS), weight_decay=train.WEIGHT_DECAY,
                       amsgrad=train.AMSGRAD)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(node.MILESTONES), gamma=train.GAMMA)
        built[name] = StageOptimizer(opt, sched, make_scaler())
    return built


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


class Update:
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
