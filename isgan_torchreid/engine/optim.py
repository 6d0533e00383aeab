"""Optimisers of a stage and one optimiser's update (backward, loss scaling, non-finite policy, step).

Adam (β, coupled weight decay, amsgrad: the authors' setting) updates the encoders and G; SGD with
momentum updates D (paper Sec. 4.1), or Adam with DCGAN's betas (TRAIN.D_OPTIMIZER adam). Each stage
builds fresh optimisers over the modules it trains, with its own learning rate and MultiStepLR milestones.
"""
import warnings
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn

from . import distributed

__all__ = ["StageOptimizer", "adam", "build_stage_optimizers", "Update"]


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
            opt = torch.optim.SGD(params, lr=d_lr, momentum=train.D_MOMENTUM, weight_decay=train.D_WEIGHT_DECAY)
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


class Update:
    """One optimiser's update from a dict of loss terms: zero_grad, backward (scaled), step.

    The summed loss is checked once; when it is not finite, ``on_nonfinite(term, value)`` is called with the
    first non-finite term and the step is skipped (``on_nonfinite`` may raise instead). Under torchrun the
    processes decide together: when one has a non-finite loss, all skip (or raise) with its term, so none
    waits for gradients that another will not send.
    """

    def __init__(self, stage_optimizer: StageOptimizer, on_nonfinite: Callable[[str, float], None]):
        self.opt = stage_optimizer
        self.on_nonfinite = on_nonfinite

    def __call__(self, terms: Dict[str, Tensor]) -> bool:
        """Returns whether the step was taken."""
        optimizer, scaler = self.opt.optimizer, self.opt.scaler
        optimizer.zero_grad(set_to_none=True)
        total = sum(terms.values())
        finite = bool(torch.isfinite(total).item())
        if not distributed.all_true(finite):
            self.on_nonfinite(*self._first_nonfinite(terms, total, finite))
            return False
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        return True

    @staticmethod
    def _first_nonfinite(terms: Dict[str, Tensor], total: Tensor, finite: bool):
        """(term, value) of the first non-finite term, of the lowest rank that has one (named then)."""
        mine = None
        if not finite:
            mine = next(((k, v.item()) for k, v in terms.items() if not torch.isfinite(v).item()),
                        ("total", total.item()))  # finite terms can still sum to inf - inf
        reports = distributed.all_gather_object(mine)
        rank, (name, value) = next((r, report) for r, report in enumerate(reports) if report is not None)
        return (f"{name} (rank {rank})" if len(reports) > 1 else name), value
