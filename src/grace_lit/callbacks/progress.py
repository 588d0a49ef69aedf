"""A run a person can watch: in a terminal Lightning's rich progress bar (epoch, batches, time left), elsewhere
(CI, sweeps, SLURM logs, pipes) one compact line every N epochs. Both show the same numbers: the configured
metrics as last logged, i.e. the training losses, the last evaluation's selection metric, the controller's task
weights and the learning rate.

The numbers are read once per epoch and evaluation, never per batch: reading a GPU tensor would stall the step.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from grace_lit.errors import GraceError

MODES = ("auto", "bar", "lines")
SHORT = ("train/", "controller/")  # prefixes dropped from labels; the evaluation's (test/, val/) is kept
log = logging.getLogger("grace_lit.progress")


def label(key: str) -> str:
    for prefix in SHORT:
        key = key.removeprefix(prefix)
    return key


def logged(trainer: L.Trainer, keys: list[str]) -> dict[str, str]:
    """The configured metrics that have been logged so far, formatted, under their labels."""
    metrics = trainer.callback_metrics
    return {label(k): f"{float(metrics[k]):.4g}" for k in keys if k in metrics}


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


class LiveBar(RichProgressBar):
    """Lightning's rich bar showing the configured metrics (refreshed at epoch and evaluation ends)."""

    def __init__(self, metrics: list[str]):
        super().__init__()
        self.keys, self._shown = list(metrics), {}

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return self._shown

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = logged(trainer, self.keys)
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = logged(trainer, self.keys)
        super().on_train_epoch_end(trainer, pl_module)


class EpochLines(ProgressBar):
    """``epoch 3/30 | 2.1s/epoch, at most 56s left | loss_rul=812.3 ... lr=0.001``, every ``every_n_epochs``
    epochs and after the last. "At most": early stopping may end the run sooner."""

    def __init__(self, metrics: list[str], every_n_epochs: int):
        super().__init__()
        self.keys, self.every = list(metrics), every_n_epochs
        self._enabled, self._start, self._first = True, 0.0, 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first = time.monotonic(), trainer.current_epoch  # a resumed run starts mid-way

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if not self._enabled or (done % self.every and done != trainer.max_epochs):
            return
        per_epoch = (time.monotonic() - self._start) / (done - self._first)
        left = trainer.max_epochs - done
        timing = f"{per_epoch:.1f}s/epoch" + (f", at most {duration(per_epoch * left)} left" if left else "")
        values = " ".join(f"{k}={v}" for k, v in logged(trainer, self.keys).items())
        log.info("epoch %d/%d | %s | %s", done, trainer.max_epochs, timing, values)


def progress(mode: str, every_n_epochs: int, metrics: list[str]) -> ProgressBar:
    """The live bar when standard output is a terminal, else the epoch lines; ``mode=bar|lines`` forces one."""
    if mode not in MODES:
        raise GraceError(f"callbacks.progress.mode={mode!r} is not one of {MODES}.")
    if mode == "bar" or (mode == "auto" and sys.stdout.isatty()):
        return LiveBar(metrics)
    return EpochLines(metrics, every_n_epochs)
