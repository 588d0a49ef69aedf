"""Optuna pruning: report the selection metric every epoch and stop a trial the pruner finds unpromising.

optuna-integration's PyTorchLightningPruningCallback does the same through private APIs of Lightning and Optuna
(for DDP); a trial here is one process, so these few lines serve without the extra package.
"""
from __future__ import annotations

import lightning as L
import optuna

from grace_lit.errors import GraceError


class OptunaPruning(L.Callback):
    """``first_step``: the step of epoch 0. A trial of several runs (tune's variants) gives each run steps of its
    own, so that the pruner compares each run with the same run of earlier trials. ``from_epoch``: each run's
    epochs before the pruner may stop it (reported all the same): the first epochs rank a low learning rate or a
    slow EMA shadow below where they end."""

    def __init__(self, trial: optuna.Trial, monitor: str, first_step: int = 0, from_epoch: int = 0):
        self.trial, self.monitor, self.first_step, self.from_epoch = trial, monitor, first_step, from_epoch
        self.reported = 0  # epochs validated and reported: a pruned run's last one included

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise GraceError("A tuning trial runs in one process (trainer=ddp would report each epoch once per rank). "
                             "Fix: drop trainer=ddp; run trials in parallel instead (--multirun worker=0,1,...).")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=self.first_step + trainer.current_epoch)
        self.reported += 1
        if trainer.current_epoch >= self.from_epoch and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} at epoch {trainer.current_epoch} is worse than the "
                                     f"pruner's threshold")
