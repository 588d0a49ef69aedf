"""Every pipeline stage in a real ``lightning.Trainer`` against a trajectory computed by hand.

The module is ``GraceModule`` on the tiny float64 model of tests/test_module.py, its 16 windows as training and
validation data; the stages are the composed config's callbacks (small overrides where the defaults would need
hundreds of epochs). ``Trace`` records what each stage left behind: per training batch the epoch, each parameter
group's lr and weight decay, and after the step the parameters and the values the controller and the gradient step
logged (weights, norms, EMAs, the gradient cosine).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from conftest import composed
from grace_lit.callbacks.ema import EMAWeights
from grace_lit.data.windows import batch_as_is
from grace_lit.losses.fixed import FixedWeights
from grace_lit.losses.gaba import GABA
from grace_lit.losses.gradnorm import GradNorm
from grace_lit.losses.rul import WMSE
from grace_lit.losses.single_task import SingleTask
from grace_lit.losses.uncertainty import Uncertainty
from grace_lit.module import GraceModule
from test_module import tiny_batch, tiny_model

MAX_RUL = 125.0


class Trace(L.Callback):
    def __init__(self):
        self.batches: list[dict] = []
        self.evaluated: list[list[torch.Tensor]] = []  # the parameters each evaluation ran with
        self.tested: list[list[torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.batches.append(dict(epoch=trainer.current_epoch, lr=[g["lr"] for g in groups],
                                 wd=[g["weight_decay"] for g in groups]))

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.batches[-1].update(step=trainer.global_step,
                                params=[p.detach().clone() for p in pl_module.model.parameters()],
                                logged={k: v.detach().clone() for k, v in self.logged_values(pl_module).items()})

    @staticmethod
    def logged_values(pl_module) -> dict[str, torch.Tensor]:
        return {**pl_module.controller.log_values(), **pl_module.gradient_step.log_values()}

    def on_validation_batch_start(self, trainer, pl_module, *args):
        self.evaluated.append([p.detach().clone() for p in pl_module.model.parameters()])

    def on_test_batch_start(self, trainer, pl_module, *args):
        self.tested.append([p.detach().clone() for p in pl_module.model.parameters()])

    def per_epoch(self, key: str) -> dict[int, list[float]]:
        """``key`` at the first batch of every epoch."""
        out: dict[int, list[float]] = {}
        for b in self.batches:
            out.setdefault(b["epoch"], b[key])
        return out


class Scripted(L.Callback):
    """Logs ``values[epoch]`` as the metric ``scripted`` at the end of every evaluation."""

    def __init__(self, values: list[float]):
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("scripted", self.values[trainer.current_epoch])


class FastForward(L.Callback):
    """After the epochs in ``jumps`` the next epoch is ``jumps[epoch]`` (Lightning's epoch counter, moved)."""

    def __init__(self, jumps: dict[int, int]):
        self.jumps = jumps

    def on_train_epoch_end(self, trainer, pl_module):
        to = self.jumps.get(trainer.current_epoch)
        if to is not None:  # the loop has counted this epoch processed and adds one to completed after this hook
            progress = trainer.fit_loop.epoch_progress.current
            progress.ready = progress.started = progress.processed = to
            progress.completed = to - 1


def stages(*names: str, overrides: list[str] = ()) -> list[L.Callback]:
    cfg = composed(["monitor=scripted", *overrides])
    return [instantiate(cfg.callbacks[name]) for name in names]


def fit(callbacks: list[L.Callback], epochs: int, controller=None, optimizer=None, batch_size: int = 16,
        grad_clip: float = 1e12, accumulate: int = 1, root: Path | None = None, ckpt_path: Path | None = None,
        data=None, on_nonfinite: str = "raise", grad_mode: str = "fused", **trainer_args) -> Trace:
    trace = Trace()
    module = GraceModule(tiny_model(), controller or FixedWeights([0.5, 0.5]), WMSE(MAX_RUL),
                         optimizer or partial(torch.optim.SGD, lr=1e-3), grad_clip=grad_clip, accumulate=accumulate,
                         on_nonfinite=on_nonfinite, grad_mode=grad_mode)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, precision="64-true", logger=False,
                        callbacks=[*callbacks, trace], enable_progress_bar=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
                        **trainer_args)
    data = tiny_batch() if data is None else data
    trainer.fit(module, DataLoader(data, batch_size=batch_size, collate_fn=batch_as_is),
                DataLoader(data, batch_size=len(data), collate_fn=batch_as_is), ckpt_path=ckpt_path,
                weights_only=False)
    trace.trainer, trace.module = trainer, module
    return trace


# ------------------------------------------------------------------------------------- learning rate
def test_lr_through_warmup_and_plateau():
    """Warmup over 3 epochs from 0.1 x base, both groups (the model's, base 0.1; Uncertainty's own, base 0.2), then
    ReduceLROnPlateau (factor 0.5, patience 2, min_lr 0.03) on a scripted metric. The metric is best (1.0) during
    warmup, which the plateau must not see; from epoch 3 on: 5, 5, 4 (improves), then 4.5 for ever, so the cuts
    come after epochs 8 (three epochs without improvement since 4) and 11 (three more; 0.025 is floored to 0.03)."""
    metric = [1.0, 1.0, 1.0, 5.0, 5.0, 4.0] + [4.5] * 8
    callbacks = [Scripted(metric), *stages("lr_warmup", "plateau", overrides=[
        "callbacks.lr_warmup.epochs=3", "callbacks.plateau.patience=2", "callbacks.plateau.min_lr=0.03"])]
    trace = fit(callbacks, epochs=len(metric), controller=Uncertainty(scales=[0.5, 1.0], lr=0.2),
                optimizer=partial(torch.optim.SGD, lr=0.1))
    factor = [0.1, 0.1 + 0.9 / 3, 0.1 + 0.9 * 2 / 3] + [1.0] * 6 + [0.5] * 3 + [None] * 2
    expected = {e: [0.1 * f, 0.2 * f] if f else [0.03, 0.05] for e, f in enumerate(factor)}
    lrs = trace.per_epoch("lr")
    assert list(lrs) == list(expected)
    for epoch, lr in expected.items():
        assert lrs[epoch] == pytest.approx(lr, rel=1e-12), epoch


def test_plateau_counts_nothing_before_warmup_ends():
    """A metric that never improves after epoch 0 cuts nothing while the warmup runs (epochs 0-3): the plateau
    starts counting at epoch 3, so its first cut comes after epoch 6, not after epoch 3."""
    metric = [1.0] + [2.0] * 7
    trace = fit([Scripted(metric), *stages("lr_warmup", "plateau", overrides=[
        "callbacks.lr_warmup.epochs=3", "callbacks.plateau.patience=2"])], epochs=len(metric),
        optimizer=partial(torch.optim.SGD, lr=0.1))
    assert [lr[0] for lr in trace.per_epoch("lr").values()][3:] == pytest.approx([0.1] * 4 + [0.05], rel=1e-12)


# ------------------------------------------------------------------------------------- weight decay
def test_weight_decay_around_both_milestones():
    """The composed schedule (x0.5 from epoch 100, x0.1 from 200) with the composed AdamW (wd 1e-4): epochs 98-101
    and 198-201, the epoch counter fast-forwarded in between. The controller's group keeps no weight decay."""
    trace = fit([*stages("weight_decay"), FastForward({1: 98, 101: 198})], epochs=202,
                controller=Uncertainty(scales=[0.5, 1.0], lr=0.2), optimizer=instantiate(composed().optimizer),
                limit_val_batches=0)
    expected = {0: 1e-4, 1: 1e-4, 98: 1e-4, 99: 1e-4, 100: 5e-5, 101: 5e-5, 198: 5e-5, 199: 5e-5, 200: 1e-5,
                201: 1e-5}
    wd = trace.per_epoch("wd")
    assert list(wd) == list(expected)
    for epoch, value in expected.items():
        assert wd[epoch] == pytest.approx([value, 0.0], rel=1e-12), epoch


# ------------------------------------------------------------------------------------- early stopping
def test_early_stopping_after_patience_epochs_without_improvement():
    """Best at epoch 2; with patience 3 epochs 3, 4 and 5 do not improve (equal is no improvement), so the run
    stops after epoch 5 of 20."""
    metric = [3.0, 2.0, 1.0, 1.0, 1.5, 1.0] + [0.5] * 14
    trace = fit([Scripted(metric), *stages("early_stopping", overrides=["callbacks.early_stopping.patience=3"])],
                epochs=len(metric))
    assert list(trace.per_epoch("lr")) == list(range(6))


# ------------------------------------------------------------------------------------- gradient clip
def test_step_is_clipped_to_the_global_norm():
    """One SGD(lr=1) step with clip 1e-3: the update equals minus the combined gradient scaled by
    clip / (norm + 1e-6) (torch's clip_grad_norm_), everything computed here from the model and the batch."""
    clip = 1e-3
    trace = fit([], epochs=1, optimizer=partial(torch.optim.SGD, lr=1.0), grad_clip=clip, limit_val_batches=0)
    model, data = tiny_model(), tiny_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    x, rul, health, _, _ = data.__getitems__(list(range(len(data))))
    rul_pred, logits = model(x.double())
    total = 0.5 * WMSE(MAX_RUL)(rul_pred, rul.double()) + 0.5 * F.cross_entropy(logits, health)
    grads = torch.autograd.grad(total, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 100 * clip  # the clip binds
    scale = clip / (norm + 1e-6)
    for after, before, g in zip(trace.batches[0]["params"], params, grads):
        torch.testing.assert_close(after, before.detach() - scale * g, rtol=0, atol=1e-15)
    assert trace.trainer.callback_metrics["train/grad_norm"].item() == pytest.approx(norm.item(), rel=1e-12)


# ------------------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_after_every_optimizer_step_and_evaluated(accumulate):
    """EMA (decay 0.5) over 3 epochs of 3 batches: the shadow follows s = 0.5 s + 0.5 p after every optimizer step
    (after every batch with accumulate=1; after batches 2 and 3 of each epoch with accumulate=2), every evaluation
    runs with the shadow of its epoch's end, and the live weights come back afterwards."""
    start = [p.detach().clone() for p in tiny_model().parameters()]
    ema, = stages("ema", overrides=["callbacks.ema.decay=0.5"])
    trace = fit([ema], epochs=3, batch_size=6, accumulate=accumulate)
    steps = [b for i, b in enumerate(trace.batches) if b["step"] != (trace.batches[i - 1]["step"] if i else 0)]
    assert len(steps) == trace.trainer.global_step == 3 * (3 if accumulate == 1 else 2)
    shadow, shadows = start, []
    for b in steps:
        shadow = [0.5 * s + 0.5 * p for s, p in zip(shadow, b["params"])]
        shadows.append(shadow)
    per_epoch = len(steps) // 3
    for epoch, evaluated in enumerate(trace.evaluated):
        for got, want in zip(evaluated, shadows[(epoch + 1) * per_epoch - 1]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    for got, want in zip(ema.shadow, shadow):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    for live, last in zip(trace.module.model.parameters(), steps[-1]["params"]):
        assert torch.equal(live, last)
    trace.trainer.test(trace.module, DataLoader(tiny_batch(), batch_size=16, collate_fn=batch_as_is), verbose=False)
    for got, want in zip(trace.tested[0], shadow):  # the test set too is scored with the shadow
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    for live, last in zip(trace.module.model.parameters(), steps[-1]["params"]):
        assert torch.equal(live, last)


# ------------------------------------------------------------------------------------- controller log
def test_controller_log_epoch_values_are_the_means_of_the_steps(tmp_path):
    """GABA (one warmup step, beta 0.5) over 2 epochs of 3 steps: each row of controller_log.csv holds the epoch
    mean of every value the controller logged after its steps (the norms: over the steps that measured them)."""
    log, = stages("controller_log")
    trace = fit([log], epochs=2, batch_size=6, root=tmp_path, controller=GABA(beta=0.5, warmup_steps=1),
                limit_val_batches=0)
    rows = pd.read_csv(tmp_path / "controller_log.csv")
    assert rows["epoch"].tolist() == [0, 1] and rows["step"].tolist() == [3, 6]
    assert set(rows.columns) == {"epoch", "step", "weight_rul", "weight_health", "ema_rul", "ema_health", "g_rul",
                                 "g_health", "raw_rul", "raw_health", "cos_rul_health"}  # README's columns
    for epoch, row in rows.iterrows():
        steps = [b["logged"] for b in trace.batches if b["epoch"] == epoch]
        keys = set().union(*steps)
        assert keys == set(row.index) - {"epoch", "step"}
        for key in keys:
            mean = torch.stack([s[key] for s in steps if key in s]).mean().item()
            assert row[key] == pytest.approx(mean, rel=1e-6, abs=1e-6), (epoch, key)  # summed in float32
    weights = torch.stack([b["logged"]["weight_rul"] for b in trace.batches])
    assert weights.std() > 1e-3  # the weights move: the means are not those of a constant
    last = trace.trainer.callback_metrics["controller/weight_rul"].item()
    assert last == pytest.approx(rows["weight_rul"].iloc[-1], rel=1e-6)



def task_gradients() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Independently of the module: the two task losses of the whole tiny batch at the initial weights and each
    task's gradient on the backbone, flattened."""
    model, data = tiny_model(), tiny_batch()
    x, rul, health, _, _ = data.__getitems__(list(range(len(data))))
    rul_pred, logits = model(x.double())
    losses = torch.stack([WMSE(MAX_RUL)(rul_pred, rul.double()), F.cross_entropy(logits, health)])
    shared = list(model.backbone.parameters())
    grads = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)])
             for loss in losses]
    return losses.detach(), grads


def test_logged_values_of_a_step_follow_the_control_laws():
    """One step on the whole batch; what the controller log records, recomputed from the task gradients:
    GABA (beta 0.5, no warmup): norms, raw weights (S - g_i) / S, EMA from 0.5, floored weights, and the gradient
    cosine; Uncertainty (SGD lr 0.1 on its log-variances, from 0): s = -0.1 (-c L + 1/2), weights c exp(-s)."""
    losses, (g_rul, g_health) = task_gradients()
    trace = fit([], epochs=1, controller=GABA(beta=0.5, warmup_steps=0), limit_val_batches=0)
    logged = {k: v.item() for k, v in trace.batches[0]["logged"].items()}
    norms = [g_rul.norm().item(), g_health.norm().item()]
    raw = [norms[1] / sum(norms), norms[0] / sum(norms)]
    ema = [0.5 * 0.5 + 0.5 * r for r in raw]
    floored = [max(e, 0.05) for e in ema]
    expected = {"g_rul": norms[0], "g_health": norms[1], "raw_rul": raw[0], "raw_health": raw[1],
                "ema_rul": ema[0], "ema_health": ema[1], "weight_rul": floored[0] / sum(floored),
                "weight_health": floored[1] / sum(floored),
                "cos_rul_health": (g_rul @ g_health).item() / (norms[0] * norms[1])}
    assert logged == pytest.approx(expected, rel=1e-12)
    trace = fit([], epochs=1, controller=Uncertainty(scales=[0.5, 1.0], lr=0.1), limit_val_batches=0)
    c = torch.tensor([0.5, 1.0], dtype=torch.float64)
    s = -0.1 * (-c * losses + 0.5)
    logged = {k: v.item() for k, v in trace.batches[0]["logged"].items()}
    weights = c * torch.exp(-s)
    assert logged == pytest.approx({"logvar_rul": s[0].item(), "logvar_health": s[1].item(),
                                    "weight_rul": weights[0].item(), "weight_health": weights[1].item()}, rel=1e-12)


def test_approx_mode_weighs_by_the_gradients_on_the_backbone_output():
    """grad_mode=approx: GABA's norms and cosine are those of the task gradients w.r.t. the backbone output (the
    whole batch's), and the SGD(lr=1) step is minus the weighted sum of the full task gradients."""
    trace = fit([], epochs=1, controller=GABA(beta=0.0, warmup_steps=0), grad_mode="approx",
                optimizer=partial(torch.optim.SGD, lr=1.0), limit_val_batches=0)
    model, data = tiny_model(), tiny_batch()
    x, rul, health, _, _ = data.__getitems__(list(range(len(data))))
    features = model.backbone(x.double())
    rul_pred, logits = model.heads(features)
    losses = [WMSE(MAX_RUL)(rul_pred, rul.double()), F.cross_entropy(logits, health)]
    on_output = [torch.autograd.grad(loss, features, retain_graph=True)[0].flatten() for loss in losses]
    norms = [g.norm().item() for g in on_output]
    floored = [max(norms[1] / sum(norms), 0.05), max(norms[0] / sum(norms), 0.05)]  # beta 0: the raw weights
    weights = [f / sum(floored) for f in floored]
    logged = {k: v.item() for k, v in trace.batches[0]["logged"].items()}
    assert [logged["g_rul"], logged["g_health"], logged["weight_rul"]] == pytest.approx(norms + weights[:1], rel=1e-12)
    cos = (on_output[0] @ on_output[1]).item() / (norms[0] * norms[1])
    assert logged["cos_rul_health"] == pytest.approx(cos, rel=1e-12)
    params = list(model.parameters())
    grads = [[torch.zeros_like(p) if g is None else g
              for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)]
             for loss in losses]
    for after, p, g0, g1 in zip(trace.batches[0]["params"], params, *grads):
        torch.testing.assert_close(after, p.detach() - (weights[0] * g0 + weights[1] * g1), rtol=0, atol=1e-12)


def test_fused_gradnorm_on_all_shared_parameters_accumulates_like_the_reference():
    """GradNorm with scope=shared takes the fused path; with accumulate=2 its own weights and the model must move as
    under the three-pass reference (each batch adds half of its gradient)."""
    runs = {mode: fit([], epochs=1, batch_size=8, accumulate=2, grad_mode=mode, limit_val_batches=0,
                      controller=GradNorm(alpha=1.5, lr=0.1, min_weight=1e-3, scope="shared"),
                      optimizer=partial(torch.optim.SGD, lr=1e-3)) for mode in ("fused", "reference")}
    fused, reference = (runs[m].module for m in ("fused", "reference"))
    assert not torch.equal(fused.controller.weights, torch.ones(2, dtype=torch.float64))  # the weights moved
    torch.testing.assert_close(fused.controller.weights, reference.controller.weights, rtol=1e-12, atol=0)
    for a, b in zip(fused.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

# ------------------------------------------------------------------------------------- resume
def test_stages_resume_from_last_checkpoint_as_if_never_stopped(tmp_path):
    """8 epochs in one run against 4 epochs, then a resume from last.ckpt to 8: the same learning rates (the
    plateau's counters survive: warmup 2 epochs, patience 1, a flat metric cuts after epochs 4 and 6), the same EMA
    shadow and the same controller_log.csv rows."""
    metric = [1.0, 1.0] + [5.0] * 6
    overrides = ["callbacks.lr_warmup.epochs=2", "callbacks.plateau.patience=1", "callbacks.ema.decay=0.5"]
    names = ("lr_warmup", "plateau", "ema", "controller_log")

    def run(root: Path, epochs: int, resume: bool = False) -> Trace:
        checkpoint, = stages("last_checkpoint", overrides=[f"paths.output_dir={root}"])
        return fit([Scripted(metric), *stages(*names, overrides=overrides), checkpoint], epochs=epochs, root=root,
                   batch_size=6, optimizer=partial(torch.optim.AdamW, lr=0.01),
                   controller=GABA(warmup_steps=1).double(),  # float64 already when the checkpoint loads into it
                   ckpt_path=root / "checkpoints" / "last.ckpt" if resume else None)

    whole = run(tmp_path / "whole", 8)
    run(tmp_path / "parts", 4)
    resumed = run(tmp_path / "parts", 8, resume=True)
    lrs = whole.per_epoch("lr")
    assert [lr[0] for lr in lrs.values()] == pytest.approx([1e-3, 5.5e-3] + [1e-2] * 3 + [5e-3] * 2 + [2.5e-3])
    assert resumed.per_epoch("lr") == {e: lrs[e] for e in range(4, 8)}
    shadows = [next(c for c in t.trainer.callbacks if isinstance(c, EMAWeights)).shadow for t in (whole, resumed)]
    for a, b in zip(*shadows):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    logs = [pd.read_csv(tmp_path / run_dir / "controller_log.csv") for run_dir in ("whole", "parts")]
    assert len(logs[1]) == 8
    pd.testing.assert_frame_equal(*logs, rtol=1e-12)


# ------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("controller", [FixedWeights([0.5, 0.5]), SingleTask()], ids=["both", "single_task"])
def test_evaluation_reports_the_scores_of_its_predictions(controller):
    """One epoch, then the test: every logged name, each score recomputed here from the model's predictions
    (rmse and NASA over the last window of each unit and over all windows, health accuracy), the training losses,
    and predictions.csv's rows (one per unit). Single-task reports no health score and no health prediction."""
    trace = fit([], epochs=1, controller=controller, optimizer=partial(torch.optim.SGD, lr=1e-3))
    trainer, module, data = trace.trainer, trace.module, tiny_batch()
    x, rul, health, unit, last = data.__getitems__(list(range(len(data))))
    start = tiny_model()  # the training loss: the batch's, before the step, BatchNorm on batch statistics
    rul_pred, logits = start(x.double())
    losses = [WMSE(MAX_RUL)(rul_pred, rul.double()).item(), F.cross_entropy(logits, health).item()]
    module.model.eval()
    with torch.no_grad():
        rul_pred, logits = (t.numpy() for t in module.model(x.double()))
    d, rul, health, last = rul_pred - rul.numpy(), rul.numpy(), health.numpy(), last.numpy()
    nasa = np.where(d < 0, np.exp(-d / 13), np.exp(d / 10)) - 1
    scores = {"rmse_last": np.sqrt(np.mean(d[last] ** 2)), "rmse_all": np.sqrt(np.mean(d ** 2)),
              "nasa": nasa[last].sum(), "nasa_all": nasa.sum()}
    if controller.trains_health:
        scores |= {"health_acc": np.mean(logits[last].argmax(1) == health[last]),
                   "health_acc_all": np.mean(logits.argmax(1) == health)}
    expected = {f"val/{k}": v for k, v in scores.items()} | {"lr": 1e-3, "weight_decay": 0.0}
    expected |= {"train/loss_rul": losses[0], "train/loss_health": losses[1]}
    logged = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert set(logged) == set(expected) | {"train/grad_norm"}
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6), key  # logged as float32
    trainer.test(module, DataLoader(data, batch_size=7, collate_fn=batch_as_is), verbose=False)
    assert {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")} == pytest.approx(
        {f"test/{k}": v for k, v in scores.items()}, rel=1e-6)
    frame = module.test_predictions
    assert frame.columns.tolist() == ["unit", "rul_true", "rul_pred", "health_true", "health_pred"]
    assert frame["unit"].tolist() == unit[last].tolist() == [1, 2]
    np.testing.assert_allclose(frame["rul_true"], rul[last])
    np.testing.assert_allclose(frame["rul_pred"], rul_pred[last], rtol=1e-12)
    assert frame["health_true"].tolist() == health[last].tolist()
    if controller.trains_health:
        assert frame["health_pred"].tolist() == logits[last].argmax(1).tolist()
        assert str(frame["health_pred"].dtype) == "int64"
    else:
        assert frame["health_pred"].isna().all()


def test_skipped_steps_leave_no_trace_in_the_ema_or_the_controller_log(tmp_path):
    """on_nonfinite=skip with a NaN in unit 1 (batches 0 and 1 of 4 every epoch): the EMA shadow and
    controller_log.csv equal those of training on unit 2's batches alone."""
    poisoned = tiny_batch()
    poisoned.series[6, 1] = float("nan")  # unit 1's row 6: windows 2..6 (window i covers rows i..i+4)
    runs = {}
    for name, data in (("skip", poisoned), ("clean", Subset(tiny_batch(), range(8, 16)))):
        ema, log = stages("ema", "controller_log", overrides=["callbacks.ema.decay=0.5"])
        trace = fit([ema, log], epochs=2, batch_size=4, data=data, on_nonfinite="skip", root=tmp_path / name,
                    controller=GABA(beta=0.5, warmup_steps=0), limit_val_batches=0)
        runs[name] = (trace.trainer.global_step, ema.shadow, pd.read_csv(tmp_path / name / "controller_log.csv"))
    (steps, shadow, log), (clean_steps, clean_shadow, clean_log) = runs["skip"], runs["clean"]
    assert steps == clean_steps == 4
    for a, b in zip(shadow, clean_shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    pd.testing.assert_frame_equal(log, clean_log)
