"""Per-epoch controller log: the epoch mean of every value the controller exposes (weights, gradient norms,
raw weights, loss EMAs, log-variances) and of the cosine between the task gradients where the step measured
them, written to a CSV in the run directory and to the Lightning logger.

Values stay on the device during the epoch; they cross to the host once, at the epoch end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from grace_lit.io import atomic_write_csv


class ControllerLog(L.Callback):
    def __init__(self, filename: str):
        self.filename = filename
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._seen_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sums, self._counts = {}, {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._seen_step:  # a skipped (non-finite) step: its values are not the run's
            return
        self._seen_step = trainer.global_step
        values = {**pl_module.controller.log_values(), **pl_module.gradient_step.log_values()}
        for key, value in values.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        means = {k: (s / self._counts[k]) for k, s in self._sums.items()}
        if means:
            pl_module.log_dict({f"controller/{k}": v for k, v in means.items()})
        if trainer.is_global_zero:
            self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                              **{k: float(v) for k, v in means.items()}})
            atomic_write_csv(Path(trainer.default_root_dir) / self.filename, pd.DataFrame(self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
