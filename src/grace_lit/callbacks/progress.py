"""A run a person can watch: in a terminal Lightning's rich progress bar (epoch, batches, time left), elsewhere
(CI, sweeps, SLURM logs, pipes) one compact line every N epochs. Both show the same numbers: the configured
metrics as last logged, i.e. the training losses, the last evaluation's selection metric, the controller's task
weights and the learning rate.

The numbers are read once per epoch and evaluation, never per batch: reading a GPU tensor would stall the step.

Both also print a cost estimate after the first few training batches (``Estimate``): a run of the spec's 500
epochs with the full model on a CPU takes days, and the user should learn that in its first minute, not at its end.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
import torch
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


class Estimate:
    """One line once ``batches`` training batches (after ``skip_batches`` untimed ones, which carry one-time costs)
    have run: the time per epoch and what the configured run costs at most, e.g. ``about 6m02s of training per
    epoch (181 batches; timed on batches 2-6); at most 500 epochs ≈ 50h20m, early stopping may end it sooner``.
    Silent when the whole run is estimated under ``quiet_below_s`` (short runs, tests). On a CPU a second line,
    ``fast_path``, names the faster setup (null where the run already is it: ``budget=cpu``). An epoch shorter
    than ``skip_batches + batches`` is timed on the batches it has past the skipped ones (whole, if none)."""

    def __init__(self, skip_batches: int, batches: int, quiet_below_s: float, fast_path: str | None):
        self.skip, self.batches, self.quiet_below_s, self.fast_path = skip_batches, batches, quiet_below_s, fast_path
        self._start, self._done = 0.0, False

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the queued kernels belong to the timed batches
        return time.monotonic()

    def epoch_start(self, pl_module: L.LightningModule) -> None:
        if not self._done:
            self._start = self._now(pl_module)

    def batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> None:
        if self._done:
            return
        done = batch_idx + 1
        last = min(self.skip + self.batches, trainer.num_training_batches)
        if done == last:
            first = self.skip if last > self.skip else 0
            self._done = True
            self.report(trainer, (self._now(pl_module) - self._start) / (done - first), first, done)
        elif done == self.skip:
            self._start = self._now(pl_module)

    def report(self, trainer: L.Trainer, per_batch: float, first: int, last: int) -> None:
        per_epoch = per_batch * trainer.num_training_batches
        epochs = trainer.max_epochs - trainer.current_epoch  # a resumed run has fewer left
        if per_epoch * epochs < self.quiet_below_s:
            return
        sooner = ", early stopping may end it sooner" if trainer.early_stopping_callback is not None else ""
        log.info("cost estimate: about %s of training per epoch (%d batches; timed on batches %d-%d); at most "
                 "%d epoch%s ≈ %s%s", duration(per_epoch), trainer.num_training_batches, first + 1, last, epochs,
                 "s" * (epochs != 1), duration(per_epoch * epochs), sooner)
        if self.fast_path and trainer.strategy.root_device.type == "cpu":
            log.info("  %s", self.fast_path)


class Estimated:
    """What both displays share: the cost estimate, fed from the training loop's hooks (rank zero only)."""

    estimate: Estimate

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.estimate.epoch_start(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_enabled:
            self.estimate.batch_end(trainer, pl_module, batch_idx)


class LiveBar(Estimated, RichProgressBar):
    """Lightning's rich bar showing the configured metrics (refreshed at epoch and evaluation ends)."""

    def __init__(self, metrics: list[str], estimate: Estimate):
        super().__init__()
        self.keys, self._shown, self.estimate = list(metrics), {}, estimate

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return self._shown

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = logged(trainer, self.keys)
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = logged(trainer, self.keys)
        super().on_train_epoch_end(trainer, pl_module)


class EpochLines(Estimated, ProgressBar):
    """``epoch 3/30 | 2.1s/epoch, at most 56s left | loss_rul=812.3 ... lr=0.001``, every ``every_n_epochs``
    epochs and after the last. "At most": early stopping may end the run sooner."""

    def __init__(self, metrics: list[str], every_n_epochs: int, estimate: Estimate):
        super().__init__()
        self.keys, self.every, self.estimate = list(metrics), every_n_epochs, estimate
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


def progress(mode: str, every_n_epochs: int, metrics: list[str], estimate: dict[str, Any]) -> ProgressBar:
    """The live bar when standard output is a terminal, else the epoch lines; ``mode=bar|lines`` forces one.
    ``estimate``: ``Estimate``'s arguments."""
    if mode not in MODES:
        raise GraceError(f"callbacks.progress.mode={mode!r} is not one of {MODES}.")
    if mode == "bar" or (mode == "auto" and sys.stdout.isatty()):
        return LiveBar(metrics, Estimate(**estimate))
    return EpochLines(metrics, every_n_epochs, Estimate(**estimate))
