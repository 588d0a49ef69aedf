"""GRACE's adaptive weight decay: wd = wd0 * factor of the last milestone reached (epochs are 0-based)."""
from __future__ import annotations

import bisect

import lightning as L

from grace_lit.errors import GraceError


def decay_factor(epoch: int, milestones: list[int], factors: list[float]) -> float:
    """With milestones (100, 200) and factors (0.5, 0.1): 1 for epochs 0-99, 0.5 for 100-199, 0.1 from 200."""
    reached = bisect.bisect_right(milestones, epoch)
    return 1.0 if reached == 0 else factors[reached - 1]


class WeightDecaySchedule(L.Callback):
    """Applied at the start of every epoch to every group with non-zero initial weight decay."""

    def __init__(self, milestones: list[int], factors: list[float]):
        if len(milestones) != len(factors) or list(milestones) != sorted(milestones):
            raise GraceError(f"callbacks.weight_decay.milestones={list(milestones)} with factors={list(factors)}: the "
                             f"milestones must be increasing, one factor each. Fix: e.g. milestones=[100,200] "
                             f"factors=[0.5,0.1].")
        self.milestones, self.factors = list(milestones), list(factors)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        factor = decay_factor(trainer.current_epoch, self.milestones, self.factors)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                base = group.setdefault("base_weight_decay", group["weight_decay"])
                group["weight_decay"] = base * factor
