"""ReduceLROnPlateau stepped once per epoch on the selection metric, and only after the LR warmup (spec 004)."""
from __future__ import annotations

from typing import Any

import lightning as L
from torch.optim.lr_scheduler import ReduceLROnPlateau


class PlateauLR(L.Callback):
    def __init__(self, monitor: str, factor: float, patience: int, min_lr: float, warmup_epochs: int):
        self.monitor, self.warmup_epochs = monitor, warmup_epochs
        self.kwargs = dict(mode="min", factor=factor, patience=patience, min_lr=min_lr)
        self.scheduler: ReduceLROnPlateau | None = None
        self._pending: dict[str, Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scheduler = ReduceLROnPlateau(trainer.optimizers[0], **self.kwargs)
        if self._pending is not None:
            self.scheduler.load_state_dict(self._pending)
            self._pending = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch < self.warmup_epochs:
            return
        self.scheduler.step(float(trainer.callback_metrics[self.monitor]))

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else (self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None
