"""The LightningModule: one forward, the inner RUL loss + cross-entropy, the outer controller, one optimizer step.

Manual optimization, because the controller needs per-task gradient information before the combined gradient
exists. ``grad_mode`` chooses how a controller that wants norms on all shared parameters (GABA) gets them:

* ``fused`` (default): one VJP per task over all parameters; the norms are taken on the shared subset and the
  parameter gradients are assembled as sum_i w_i grad L_i. Exact, two backward passes.
* ``reference``: the spec's three passes: ``autograd.grad`` per task on the shared parameters, then backward of
  the weighted sum.
* ``approx``: norms of the gradients w.r.t. the backbone *output* (one cheap pass through the heads), then one
  backward. Not the spec's GABA: an opt-in approximation.

Under DDP every rank's controller sees the global batch: the losses, and the per-task gradients that
``autograd.grad`` builds outside DDP's all-reduce hooks, are averaged over ranks (``grace_lit.distributed``); the
single-backward paths (``manual_backward``) leave the gradient average to DDP. So every rank computes the same
weights and applies the same update, as one process would on the concatenated batches.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from functools import partial

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from grace_lit.errors import GraceError
from grace_lit.distributed import average_across_ranks, world_size
from grace_lit.losses.base import Controller, grad_norm, task_grads
from grace_lit.metrics import RMSE, Accuracy, NASAScore
from grace_lit.models.dual_task import DualTaskModel

GRAD_MODES = ("fused", "reference", "approx")
NONFINITE_ACTIONS = ("raise", "skip")
# Under DDP every value this module and its callbacks log is already the same on every rank (the global batch's
# losses, each rank scoring the whole evaluation set): Lightning's advice to reduce them over ranks does not apply.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True")


def _add_grads(params: list[nn.Parameter], grads: list[torch.Tensor | None]) -> None:
    """p.grad += g (accumulation); the first batch of a cycle, after zero_grad(set_to_none=True), assigns."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def weighted_sum(grads: list[tuple[torch.Tensor | None, ...]], weights: torch.Tensor) -> list[torch.Tensor | None]:
    """Per parameter sum_i w_i grads[i] (None where no task reaches it), in a few foreach kernels per task rather
    than small ops per parameter. Out of place: autograd may hand one tensor to two parameters (an LSTM's two
    biases), so scaling in place could scale it twice."""
    total: list[torch.Tensor | None] = [None] * len(grads[0])
    for w, task in zip(weights, grads):
        first = [j for j, g in enumerate(task) if g is not None and total[j] is None]
        more = [j for j, g in enumerate(task) if g is not None and total[j] is not None]
        if first:
            for j, g in zip(first, torch._foreach_mul([task[j] for j in first], w)):
                total[j] = g
        if more:
            torch._foreach_add_([total[j] for j in more], torch._foreach_mul([task[j] for j in more], w))
    return total


class GraceModule(L.LightningModule):
    def __init__(self, model: DualTaskModel, controller: Controller, rul_loss: Callable, optimizer: partial,
                 grad_clip: float, grad_mode: str = "fused", on_nonfinite: str = "raise", eval_prefix: str = "val",
                 accumulate: int = 1):
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise GraceError(f"grad_mode={grad_mode!r} is not one of {GRAD_MODES}.")
        if on_nonfinite not in NONFINITE_ACTIONS:
            raise GraceError(f"on_nonfinite={on_nonfinite!r} is not one of {NONFINITE_ACTIONS}.")
        self.automatic_optimization = False
        self.model, self.controller, self.rul_loss = model, controller, rul_loss
        self.optimizer_factory, self.grad_clip = optimizer, grad_clip
        self.grad_mode, self.on_nonfinite, self.eval_prefix = grad_mode, on_nonfinite, eval_prefix
        self.accumulate = accumulate  # batches per optimizer step; each adds 1/accumulate of its gradient
        if not controller.trains_health:
            model.health_head.requires_grad_(False)
        self.metrics = nn.ModuleDict({
            "rmse_last": RMSE(last_only=True), "rmse_all": RMSE(last_only=False),
            "nasa": NASAScore(last_only=True), "nasa_all": NASAScore(last_only=False),
            "health_acc": Accuracy(last_only=True), "health_acc_all": Accuracy(last_only=False),
        })
        self.nonfinite_skips = 0
        self.prior_wall_time_s = 0.0  # of the runs this one resumed, up to their last checkpoint
        self._clock_start = time.time()
        self._pending: tuple[torch.Tensor, torch.Tensor, int, int] | None = None  # see _finite_or_skip
        self._cycle_losses: list[torch.Tensor] = []  # the synced losses of this accumulation cycle's batches
        self._cycle_snapshot: tuple[list[torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.test_predictions: pd.DataFrame | None = None
        self._predictions: list[torch.Tensor] = []

    # ----------------------------------------------------------------- optimisation
    def setup(self, stage: str) -> None:
        if self.trainer.precision == "16-mixed":  # float16 needs a loss scaler, which autograd.grad bypasses
            raise GraceError("trainer.precision=16-mixed is not supported: the per-task gradients and the clip "
                             "run outside Lightning's loss scaler. Fix: trainer.precision=bf16-mixed (no scaler "
                             "needed) or 32-true.")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        own = [p for p in self.controller.parameters() if p.requires_grad]
        if own:  # spec pitfall 2: a controller's learnable parameters must be optimised, in their own group
            groups.append({"params": own, "lr": self.controller.lr, "weight_decay": 0.0})
        return self.optimizer_factory(groups)

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _backward(self, losses: torch.Tensor, synced: torch.Tensor, features: torch.Tensor) -> None:
        """Add this batch's share (1/accumulate) of the step's gradient to every trainable parameter. ``synced``:
        the detached losses of the global batch (this rank's own in a single process), what the controller sees."""
        scope = self.controller.norm_scope()
        if scope == "shared" and self.grad_mode == "fused":
            return self._fused_backward(losses, synced)
        if scope == "shared" and self.grad_mode == "approx":
            scope = "features"
        inputs = {"none": None, "shared": self.model.shared_parameters,
                  "last_shared": self.model.last_shared_parameters, "features": lambda: [features]}[scope]
        norms = None if inputs is None else self._synced_norms(losses, inputs(), per_sample=scope == "features")
        weights, aux = self.controller(synced, norms)
        objective = (weights * losses).sum()  # this rank's losses: DDP averages the gradients in manual_backward
        self.manual_backward((objective if aux is None else objective + aux) / self.accumulate)

    @staticmethod
    def _synced_norms(losses: torch.Tensor, inputs: list[torch.Tensor], per_sample: bool) -> torch.Tensor:
        """Per-task gradient norms of the global batch's losses, identical on every rank (graph retained).

        Parameter gradients are averaged over ranks before the norm. Gradients w.r.t. activations are per sample:
        the global loss is the mean of the W ranks' losses, so its gradient on this rank's activations is 1/W of
        the local one and the squared norms add up over ranks: norm^2 = mean_r(norm_r^2) / W.
        """
        grads = task_grads(losses, inputs)
        if not per_sample:
            return torch.stack([grad_norm(average_across_ranks(task)) for task in grads])
        norms, ranks = torch.stack([grad_norm(task) for task in grads]), world_size()
        return norms if ranks == 1 else (average_across_ranks([norms.square()])[0] / ranks).sqrt()

    def _fused_backward(self, losses: torch.Tensor, synced: torch.Tensor) -> None:
        params = self._trainable()
        shared = {id(p) for p in self.model.shared_parameters()}
        last = len(losses) - 1
        # autograd.grad never fires DDP's all-reduce hooks: the per-task gradients are averaged over ranks here,
        # so the norms, the weights and the assembled gradients are the global batch's on every rank
        grads = [average_across_ranks(torch.autograd.grad(loss, params, retain_graph=i < last, allow_unused=True))
                 for i, loss in enumerate(losses)]
        norms = torch.stack([grad_norm([g for g, p in zip(task, params) if id(p) in shared]) for task in grads])
        weights, aux = self.controller(synced, norms)
        _add_grads(params, weighted_sum(grads, weights.detach() / self.accumulate))
        if weights.requires_grad or aux is not None:  # the controller's own parameters
            # from the global losses: the same gradient on every rank. autograd.grad, not backward(): DDP's hooks
            # on these parameters alone would leave its reduction half done and fail the next step
            objective = (weights * synced).sum()
            own = [p for p in self.controller.parameters() if p.requires_grad]
            _add_grads(own, torch.autograd.grad((objective if aux is None else objective + aux) / self.accumulate,
                                                own))

    def _finite_or_skip(self, losses: torch.Tensor, total_norm: torch.Tensor) -> bool:
        """Whether to apply this step's update; stops (raise) or skips (skip) on a NaN/inf loss or gradient.

        ``skip`` must decide before the step: one host sync per step. ``raise`` never waits for this step's
        flag: it keeps it on the device and checks the previous step's, whose kernels the device has finished
        (or nearly) while this step's are queued, so the host does not stall it. The last flag is checked
        before every validation, epoch end and checkpoint (``_check_pending``): a non-finite update never
        reaches a checkpoint, and the error names the step it happened at.
        """
        finite = torch.isfinite(losses).all() & torch.isfinite(total_norm)
        if self.on_nonfinite == "skip":
            if bool(finite):
                return True
            self.nonfinite_skips += 1
            return False
        self._check_pending()
        self._pending = (finite, losses.detach(), self.global_step, self.current_epoch)
        return True

    def _check_pending(self) -> None:
        """Raise if the last unchecked step (``on_nonfinite=raise``) had a non-finite loss or gradient."""
        if self._pending is None:
            return
        finite, losses, step, epoch = self._pending
        if bool(finite):
            self._pending = None
            return  # a non-finite flag stays: a later save (an on-exception checkpoint) raises too
        written = [path for c in self.trainer.checkpoint_callbacks for path in (c.last_model_path, c.best_model_path)
                   if path and os.path.isfile(path)]
        last_good = max(written, key=os.path.getmtime, default="")  # the newest: last.ckpt, or best.ckpt
        raise GraceError(
            f"Non-finite loss or gradient at step {step} (epoch {epoch}, losses {losses.cpu().tolist()}). "
            f"Last good checkpoint: {last_good or 'none written yet'}. "
            f"Fix: lower optimizer.lr or check the data; on_nonfinite=skip skips such steps instead.")

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """One batch; every ``accumulate`` batches (and at the epoch's last) one optimizer step, as spec 003's
        loop: the controller weighs each batch's losses, the gradients add up, the clip sees their sum."""
        x, rul, health = batch[0], batch[1], batch[2]
        opt = self.optimizers()
        if batch_idx % self.accumulate == 0:
            opt.zero_grad(set_to_none=True)
            self._cycle_losses = []
            self._cycle_snapshot = self._state_snapshot() if self.on_nonfinite == "skip" else None
        features = self.model.backbone(x)
        rul_pred, logits = self.model.heads(features)
        losses = torch.stack([self.rul_loss(rul_pred, rul), F.cross_entropy(logits, health)])
        # under DDP the mean of the ranks' mean losses (equal per-rank batches): the global batch's, on every rank
        synced = average_across_ranks([losses.detach()])[0]
        self._backward(losses, synced, features)
        self._cycle_losses.append(synced)
        if (batch_idx + 1) % self.accumulate and batch_idx + 1 < self.trainer.num_training_batches:
            return
        cycle = torch.stack(self._cycle_losses)
        total_norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
        if self._finite_or_skip(cycle.flatten(), total_norm):  # the same decision on every rank
            opt.step()
            self.controller.after_step()
            mean = cycle.mean(0)
            self.log_dict({"train/loss_rul": mean[0], "train/loss_health": mean[1],
                           "train/grad_norm": total_norm}, on_step=False, on_epoch=True)
        else:
            self._restore_snapshot(self._cycle_snapshot)

    def _state_snapshot(self) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """What the forward and the controller change besides the parameters (BatchNorm statistics, controller
        EMAs and counters): a skipped step must leave no NaN in them."""
        return ([b.clone() for b in self.model.buffers()],
                {k: v.clone() for k, v in self.controller.state_dict().items()})

    def _restore_snapshot(self, snapshot: tuple[list[torch.Tensor], dict[str, torch.Tensor]]) -> None:
        buffers, controller = snapshot
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        self.controller.load_state_dict(controller)  # also resets host mirrors (GABA's step count)

    def on_train_epoch_end(self) -> None:
        self._check_pending()
        group = self.optimizers().param_groups[0]
        self.log_dict({"lr": group["lr"], "weight_decay": group["weight_decay"]})

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
        self._check_pending()  # evaluate (and checkpoint) finite weights only

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

    # ----------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_pending()  # before the file is written
        checkpoint["nonfinite_skips"] = self.nonfinite_skips
        checkpoint["wall_time_s"] = self.prior_wall_time_s + time.time() - self._clock_start
        # saved at the epoch end, after the evaluation: what the next epoch's shuffle and dropout draw from
        checkpoint["rng_states"] = _collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_skips = checkpoint.get("nonfinite_skips", 0)
        if self.trainer.state.fn == TrainerFn.FITTING and "rng_states" in checkpoint:  # resume, not trainer.test
            self.prior_wall_time_s = checkpoint["wall_time_s"]
            _set_rng_states(checkpoint["rng_states"])  # nothing draws again before the train loader's iterator
