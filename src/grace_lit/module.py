"""The LightningModule: the spec's per-batch stages in ``training_step`` (manual optimization, because the
controller needs per-task gradient information before the combined gradient exists), evaluation and test
predictions, and what a checkpoint carries besides the weights. The gradient algebra lives in
``grace_lit.gradients``, the non-finite handling in ``grace_lit.nonfinite``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
# Lightning keeps its RNG-state helpers private; they capture exactly what seed_everything seeds (torch, CUDA,
# numpy, random), which a resume must restore, and no public API returns them
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from grace_lit.data.windows import WindowSet
from grace_lit.distributed import average_across_ranks
from grace_lit.errors import GraceError
from grace_lit.gradients import GradientStep
from grace_lit.losses.base import Controller
from grace_lit.metrics import RMSE, Accuracy, NASAScore
from grace_lit.models.dual_task import DualTaskModel
from grace_lit.nonfinite import NonFiniteGuard


class GraceModule(L.LightningModule):
    def __init__(self, model: DualTaskModel, controller: Controller, rul_loss: Callable, optimizer: partial,
                 grad_clip: float, grad_mode: str = "fused", on_nonfinite: str = "raise", eval_prefix: str = "val",
                 accumulate: int = 1):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.controller, self.rul_loss = model, controller, rul_loss
        self.optimizer_factory, self.grad_clip, self.eval_prefix = optimizer, grad_clip, eval_prefix
        self.accumulate = accumulate  # batches per optimizer step; each adds 1/accumulate of its gradient
        self.gradient_step = GradientStep(model, controller, grad_mode, accumulate)
        self.nonfinite = NonFiniteGuard(on_nonfinite, checkpoints=self._checkpoint_files)
        if not controller.trains_health:
            model.health_head.requires_grad_(False)
        self.metrics = nn.ModuleDict({
            "rmse_last": RMSE(last_only=True), "rmse_all": RMSE(last_only=False),
            "nasa": NASAScore(last_only=True), "nasa_all": NASAScore(last_only=False),
            "health_acc": Accuracy(last_only=True), "health_acc_all": Accuracy(last_only=False),
        })
        self.prior_wall_time_s = 0.0  # of the runs this one resumed, up to their last checkpoint
        self.prior_cpu_time_s = 0.0
        self._clock_start, self._cpu_start = time.time(), time.process_time()
        self._cycle_losses: list[torch.Tensor] = []  # the synced losses of this accumulation cycle's batches
        self.test_predictions: pd.DataFrame | None = None
        self.held_out_predictions: pd.DataFrame | None = None  # protocol=holdout: calibration.csv
        self._predictions: list[torch.Tensor] = []

    # ----------------------------------------------------------------- optimisation
    def setup(self, stage: str) -> None:
        if self.trainer.precision == "16-mixed":  # float16 needs a loss scaler, which autograd.grad bypasses
            raise GraceError("trainer.precision=16-mixed is not supported: the per-task gradients and the clip "
                             "run outside Lightning's loss scaler. Fix: trainer.precision=bf16-mixed (no scaler "
                             "needed) or 32-true.")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self._trainable()}]
        own = [p for p in self.controller.parameters() if p.requires_grad]
        if own:  # spec pitfall 2: a controller's learnable parameters must be optimised, in their own group
            groups.append({"params": own, "lr": self.controller.lr, "weight_decay": 0.0})
        return self.optimizer_factory(groups)

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Spec 000's per-batch stages. With ``accumulate`` > 1 (spec 003's loop) the controller weighs each
        batch's losses, the gradients add up, and every ``accumulate`` batches (and at the epoch's last) the clip
        sees their sum and the optimizer steps once."""
        x, rul, health = batch[0], batch[1], batch[2]
        opt = self.optimizers()
        if batch_idx % self.accumulate == 0:
            opt.zero_grad(set_to_none=True)
            self._cycle_losses = []
            self.nonfinite.open_cycle(self.model, self.controller)
        features = self.model.backbone(x)                                    # 1. forward
        rul_pred, logits = self.model.heads(features)
        losses = torch.stack([self.rul_loss(rul_pred, rul), F.cross_entropy(logits, health)])  # 2. WMSE + CE
        synced = average_across_ranks([losses.detach()])[0]  # under DDP: the global batch's, on every rank
        self.gradient_step(losses, synced, features, self.manual_backward)  # 3-4. controller, combined gradient
        self._cycle_losses.append(synced)
        if (batch_idx + 1) % self.accumulate and batch_idx + 1 < self.trainer.num_training_batches:
            return
        cycle = torch.stack(self._cycle_losses)
        total_norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)  # 5. clip
        if not self.nonfinite.allows(cycle.flatten(), total_norm, self.global_step, self.current_epoch):
            return self.nonfinite.undo(self.model, self.controller)
        opt.step()                                                           # 6. AdamW (7. EMA: callbacks/ema.py)
        self.controller.after_step()
        mean = cycle.mean(0)
        self.log_dict({"train/loss_rul": mean[0], "train/loss_health": mean[1], "train/grad_norm": total_norm},
                      on_step=False, on_epoch=True)

    def on_train_epoch_start(self) -> None:
        # after the warmup and weight-decay callbacks (Lightning runs callbacks first): this epoch's values, not
        # the plateau's cut for the next epoch, which lands before on_train_epoch_end
        group = self.optimizers().param_groups[0]
        self.log_dict({"lr": group["lr"], "weight_decay": group["weight_decay"]}, on_step=False, on_epoch=True)
        self.controller.before_epoch()

    def on_train_epoch_end(self) -> None:
        self.nonfinite.check()

    def _checkpoint_files(self) -> list[str]:
        return [path for c in self.trainer.checkpoint_callbacks for path in (c.last_model_path, c.best_model_path)]

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, rul, health, _, is_last = batch
        rul_pred, logits = self.model(x)
        for name, metric in self.metrics.items():
            if name.startswith("health"):
                metric.update(logits, health, is_last)
            else:
                metric.update(rul_pred, rul, is_last)
        return rul_pred, logits

    def _log_metrics(self, prefix: str) -> None:
        values = {}
        for name, metric in self.metrics.items():
            if self.controller.trains_health or not name.startswith("health"):
                values[f"{prefix}/{name}"] = metric.compute()
            metric.reset()
        self.log_dict(values)

    def on_validation_start(self) -> None:
        self.nonfinite.check()  # evaluate (and checkpoint) finite weights only

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.eval_prefix)

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        rul_pred, logits = self._evaluate(batch)
        _, rul, health, unit, is_last = batch
        self._predictions.append(torch.stack([unit.to(rul), rul, rul_pred, health.to(rul),
                                              logits.argmax(-1).to(rul)], dim=1)[is_last])

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        rows = torch.cat(self._predictions).cpu().numpy()
        self._predictions = []
        frame = pd.DataFrame(rows, columns=["unit", "rul_true", "rul_pred", "health_true", "health_pred"])
        ints = ["unit", "health_true", "health_pred"]
        frame[ints] = frame[ints].astype("int64")
        if not self.controller.trains_health:
            frame["health_pred"] = pd.NA
        self.test_predictions = frame
        self.held_out_predictions = self._held_out_predictions()

    def _held_out_predictions(self) -> pd.DataFrame | None:
        """The held-out cut ends that calibrate the intervals (the calibration cuts, else the selection cuts' ends)
        scored by the weights the test set was just scored with (the selected checkpoint, EMA shadow still
        swapped in: this runs before the callbacks' ``on_test_end``). None without held-out units
        (protocol=paper)."""
        splits = getattr(getattr(self.trainer, "datamodule", None), "splits", None)
        held = None if splits is None else splits.val if splits.calibration is None else splits.calibration
        if held is None:
            return None
        return held_out_frame(held, self.predict_last_windows(held).cpu().numpy())

    def predict_last_windows(self, windows: WindowSet) -> torch.Tensor:
        """RUL predicted at every sequence's last window of ``windows`` by the weights in place, in evaluation
        batches, with the test step's input conversion and precision context (at least float32)."""
        ends = torch.nonzero(windows.is_last).flatten()
        size, precision = self.trainer.datamodule.eval_batch_size, self.trainer.precision_plugin
        preds = []
        with torch.no_grad(), precision.test_step_context():
            for index in ends.split(size):
                preds.append(self.model(precision.convert_input(windows.__getitems__(index)[0]))[0])
        rul_pred = torch.cat(preds)
        return rul_pred.to(torch.promote_types(rul_pred.dtype, torch.float32))

    # ----------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.check()  # before the file is written
        checkpoint["nonfinite_skips"] = self.nonfinite.skips
        checkpoint["wall_time_s"] = self.prior_wall_time_s + time.time() - self._clock_start
        checkpoint["cpu_time_s"] = self.cpu_time_s()
        # saved at the epoch end, after the evaluation: what the next epoch's shuffle and dropout draw from
        checkpoint["rng_states"] = _collect_rng_states()

    def cpu_time_s(self) -> float:
        """This process's CPU seconds since the module was built, plus those of the runs it resumed."""
        return self.prior_cpu_time_s + time.process_time() - self._cpu_start

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.skips = checkpoint.get("nonfinite_skips", 0)
        if self.trainer.state.fn == TrainerFn.FITTING and "rng_states" in checkpoint:  # resume, not trainer.test
            self.prior_wall_time_s = checkpoint["wall_time_s"]
            self.prior_cpu_time_s = checkpoint.get("cpu_time_s", 0.0)  # absent from checkpoints before it existed
            _set_rng_states(checkpoint["rng_states"])  # nothing draws again before the train loader's iterator


def held_out_frame(held: WindowSet, rul_pred: np.ndarray) -> pd.DataFrame:
    """One row per held-out cut end (``rul_pred``: theirs, in order): unit, cut (0 .. cuts - 1: which seeded cut
    of the unit the window's sequence is), row (the cut's last row within the unit, 1-based), rul_true, rul_pred,
    is_last (always true: what a test unit's last window is scored like; kept for calibration.csv's readers)."""
    is_last = held.is_last.cpu().numpy()
    unit = held.unit.cpu().numpy()[is_last]
    sequence = np.arange(len(unit))  # sequences are contiguous, a unit's cuts in a row
    first = pd.Series(sequence).groupby(unit).transform("min").to_numpy()
    return pd.DataFrame({"unit": unit, "cut": sequence - first, "row": held.end_row[is_last] + 1,
                         "rul_true": held.rul.cpu().numpy()[is_last], "rul_pred": rul_pred,
                         "is_last": np.ones(len(unit), dtype=bool)})
