"""The training step's gradient algebra, checked through a real lightning.Trainer in float64.

With SGD(lr=1) and no clipping, the parameter update of one step equals minus the gradient the module built,
so it can be compared with lambda_1 grad L_1 + lambda_2 grad L_2 computed independently here.
"""
from __future__ import annotations

import time
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from grace_lit.callbacks.plateau import PlateauLR
from grace_lit.data.windows import UnitSeries, WindowSet, batch_as_is
from grace_lit.errors import GraceError
from grace_lit.gradients import GradientStep
from grace_lit.losses.gaba import GABA
from grace_lit.losses.rul import WMSE
from grace_lit.losses.single_task import SingleTask
from grace_lit.models.backbone import Backbone
from grace_lit.models.dual_task import DualTaskModel
from grace_lit.module import GraceModule

# float64 parameters after one step: the paths differ by summation order only (measured: at most 3e-14 apart)
EXACT = dict(rtol=0, atol=1e-12)


def tiny_model(seed: int = 0) -> DualTaskModel:
    torch.manual_seed(seed)
    backbone = Backbone(input_size=3, hidden_size=4, cnn_channels=[4], kernel_size=3, num_heads=2, fc_dims=[6],
                        dropout=0.0)
    return DualTaskModel(backbone, head_hidden=5, num_health_states=3, dropout=0.0, rul_scale=10.0).double()


def tiny_batch() -> WindowSet:
    rng = np.random.default_rng(1)
    units = [UnitSeries(u, rng.normal(size=(12, 3)).astype(np.float32),
                        np.linspace(100, 0, 12).astype(np.float32)) for u in (1, 2)]
    return WindowSet(units, window=5, stride=1, pad_mode="edge", health_thresholds=[30, 70])


def one_step(grad_mode: str, warmup_steps: int = 0, accumulate: int = 1) -> tuple[DualTaskModel, GABA]:
    """One optimizer step over the whole tiny set, fed as ``accumulate`` equal batches."""
    model, data = tiny_model(), tiny_batch()
    gaba = GABA(beta=0.0, warmup_steps=warmup_steps, min_weight=0.05)
    module = GraceModule(model, gaba, WMSE(125.0), partial(torch.optim.SGD, lr=1.0), grad_clip=1e12,
                         grad_mode=grad_mode, accumulate=accumulate)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=len(data) // accumulate, collate_fn=batch_as_is))
    assert trainer.global_step == 1
    return model, gaba


def expected_step(warm: bool, parts: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Independent reference: per batch (``parts`` equal slices, each its own forward), the per-task gradients,
    GABA's closed form with beta = 0 and the weighted sum; the step is minus the mean over the batches. Returns
    the parameters after the step and the last batch's weights."""
    model, data = tiny_model(), tiny_batch()
    params = list(model.parameters())
    n_shared = len(list(model.backbone.parameters()))
    before = [p.detach().clone() for p in params]
    step = [torch.zeros_like(p) for p in params]
    for rows in np.array_split(np.arange(len(data)), parts):
        x, rul, health, _, _ = data.__getitems__(rows.tolist())
        rul_pred, logits = model(x.double())
        losses = [WMSE(125.0)(rul_pred, rul.double()), F.cross_entropy(logits, health)]
        grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
        g = torch.stack([torch.sqrt(sum((gi ** 2).sum() for gi in task[:n_shared])) for task in grads])
        if warm:
            w = torch.tensor([0.5, 0.5], dtype=torch.float64)
        else:
            raw = torch.stack([g[1], g[0]]) / g.sum()
            floored = raw.clamp(min=0.05)
            w = floored / floored.sum()
        for s, g0, g1 in zip(step, *grads):
            s += (w[0] * (g0 if g0 is not None else 0) + w[1] * (g1 if g1 is not None else 0)) / parts
    return [p0 - s for p0, s in zip(before, step)], w


@pytest.mark.parametrize("grad_mode", ["fused", "reference"])
def test_combined_gradient_is_weighted_sum(grad_mode):
    model, gaba = one_step(grad_mode)
    after, w = expected_step(warm=False)
    torch.testing.assert_close(gaba.last_weights, w, rtol=1e-12, atol=0)
    for p, e in zip(model.parameters(), after):
        torch.testing.assert_close(p.detach(), e, **EXACT)


def test_warmup_step_uses_uniform_weights_and_one_backward():
    model, gaba = one_step("fused", warmup_steps=5)
    assert gaba.last_norms is None  # no per-task gradients were measured
    after, _ = expected_step(warm=True)
    for p, e in zip(model.parameters(), after):
        torch.testing.assert_close(p.detach(), e, **EXACT)


def test_fused_matches_three_pass_reference():
    fused, g_fused = one_step("fused")
    ref, g_ref = one_step("reference")
    torch.testing.assert_close(g_fused.last_weights, g_ref.last_weights, rtol=1e-12, atol=0)
    for a, b in zip(fused.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, **EXACT)


def test_fused_mode_never_takes_the_combined_backward_pass():
    """fused gets the combined gradient from the per-task ones (its speed in BENCHMARKS.md rests on that);
    reference differentiates the weighted sum once more."""
    model, data = tiny_model(), tiny_batch()
    x, rul, health, _, _ = data.__getitems__(list(range(len(data))))
    for mode, passes in (("fused", 0), ("reference", 1)):
        features = model.backbone(x.double())
        rul_pred, logits = model.heads(features)
        losses = torch.stack([WMSE(125.0)(rul_pred, rul.double()), F.cross_entropy(logits, health)])
        calls = []
        GradientStep(model, GABA(warmup_steps=0), mode, accumulate=1)(
            losses, losses.detach(), features, lambda loss: (calls.append(loss), loss.backward()))
        assert len(calls) == passes, mode


def test_an_unknown_gradient_mode_names_the_fix():
    with pytest.raises(GraceError) as err:
        GradientStep(tiny_model(), GABA(), "fuse", accumulate=1)
    assert str(err.value) == ("grad_mode=fuse is unknown. Fix: grad_mode=fused | reference | approx (fused is the "
                              "default).")


@pytest.mark.parametrize("grad_mode", ["fused", "reference"])
def test_accumulated_step_is_the_mean_of_the_batches_weighted_sums(grad_mode):
    """accumulate=2 (spec 003): GABA weighs each batch's losses with that batch's norms, the step uses the mean of
    the two weighted gradients."""
    model, gaba = one_step(grad_mode, accumulate=2)
    after, w_last = expected_step(warm=False, parts=2)
    torch.testing.assert_close(gaba.last_weights, w_last, rtol=1e-12, atol=0)
    for p, e in zip(model.parameters(), after):
        torch.testing.assert_close(p.detach(), e, **EXACT)
    single, _ = expected_step(warm=False, parts=1)
    assert max((a - b).abs().max() for a, b in zip(after, single)) > 1e-6  # two batches are not one batch


@pytest.mark.parametrize("accumulate, epochs, batch_size, steps", [(2, 2, 5, 4), (3, 1, 5, 2), (3, 1, 6, 1)])
def test_epoch_end_closes_an_unfinished_accumulation_cycle(accumulate, epochs, batch_size, steps):
    """Batch size 5 gives 4 batches per epoch: accumulate=2 steps after batches (0, 1) and (2, 3); accumulate=3
    after (0, 1, 2), then after batch 3 alone, at the epoch's end. Batch size 6 gives 3 batches: one step."""
    data = tiny_batch()
    module = GraceModule(tiny_model(), GABA(warmup_steps=0), WMSE(125.0), partial(torch.optim.SGD, lr=1e-3),
                         grad_clip=1.0, accumulate=accumulate)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=batch_size, collate_fn=batch_as_is))  # 16 windows
    assert trainer.global_step == steps


def test_single_task_leaves_the_health_head_untouched():
    """loss=single_task freezes the health head: AdamW's weight decay must not shrink it either."""
    model, data = tiny_model(), tiny_batch()
    head = [p.detach().clone() for p in model.health_head.parameters()]
    module = GraceModule(model, SingleTask(), WMSE(125.0), partial(torch.optim.AdamW, lr=0.1, weight_decay=0.5),
                         grad_clip=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=8, collate_fn=batch_as_is))
    assert not any(p.requires_grad for p in model.health_head.parameters())
    for p, before in zip(model.health_head.parameters(), head):
        assert torch.equal(p, before)


def attached(fn: TrainerFn) -> GraceModule:
    module = GraceModule(tiny_model(), GABA(), WMSE(125.0), partial(torch.optim.SGD, lr=0.1), grad_clip=1.0)
    module.trainer = SimpleNamespace(state=SimpleNamespace(fn=fn))
    return module


def test_checkpoint_carries_skips_wall_time_and_the_rng_into_a_resume():
    """What a checkpoint adds to the weights: the non-finite skip count, the wall and CPU time so far (a resumed
    run adds its own), and the RNG states the next epoch draws from. ``trainer.test`` on a checkpoint restores neither the
    clock nor the RNG."""
    saving = attached(TrainerFn.FITTING)
    checkpoint: dict = {}
    torch.manual_seed(7)
    saving.nonfinite.skips = 3
    saving.on_save_checkpoint(checkpoint)
    drawn = torch.rand(4)
    assert checkpoint["nonfinite_skips"] == 3 and 0 <= checkpoint["wall_time_s"] < 0.5  # a fresh run's clock

    saving.prior_wall_time_s, saving._clock_start = 100.0, time.time() - 5.0
    saving.prior_cpu_time_s, saving._cpu_start = 50.0, time.process_time() - 2.0
    saving.on_save_checkpoint(later := {})
    assert later["wall_time_s"] == pytest.approx(105.0, abs=0.5)
    assert later["cpu_time_s"] == pytest.approx(52.0, abs=0.5)

    tested = attached(TrainerFn.TESTING)
    tested.on_load_checkpoint(checkpoint)
    assert tested.nonfinite.skips == 3 and tested.prior_wall_time_s == 0.0
    assert not torch.equal(torch.rand(4), drawn)  # the RNG was left alone

    resumed = attached(TrainerFn.FITTING)
    resumed.on_load_checkpoint({**checkpoint, "wall_time_s": 42.0, "cpu_time_s": 21.0})
    assert resumed.nonfinite.skips == 3 and (resumed.prior_wall_time_s, resumed.prior_cpu_time_s) == (42.0, 21.0)
    assert torch.equal(torch.rand(4), drawn)  # the draws continue where the saved run's did

    older = attached(TrainerFn.FITTING)
    older.nonfinite.skips = 9
    older.on_load_checkpoint({})  # a checkpoint from before these extras
    assert older.nonfinite.skips == 0 and older.prior_wall_time_s == older.prior_cpu_time_s == 0.0


class ScriptedMetric(L.Callback):
    """Logs a constant selection metric (so the plateau cuts after every epoch past the first) and records the
    learning rate each epoch's steps actually use."""

    def __init__(self):
        self.used: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("scripted", 1.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.used[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]


def test_logged_lr_is_the_one_the_epoch_used(tmp_path):
    """The plateau cuts at the end of an epoch's validation, before the epoch's metrics are written: the logged
    lr must still be the one that epoch's steps used."""
    data = tiny_batch()
    script = ScriptedMetric()
    module = GraceModule(tiny_model(), GABA(warmup_steps=0), WMSE(125.0), partial(torch.optim.SGD, lr=0.01),
                         grad_clip=1.0)
    plateau = PlateauLR(monitor="scripted", factor=0.5, patience=0, min_lr=0.0, warmup_epochs=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, precision="64-true", logger=CSVLogger(tmp_path),
                        callbacks=[script, plateau], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    loader = DataLoader(data, batch_size=len(data), collate_fn=batch_as_is)
    trainer.fit(module, loader, loader)
    logged = pd.read_csv(next(tmp_path.rglob("metrics.csv"))).dropna(subset=["lr"]).set_index("epoch")["lr"]
    assert script.used == {0: 0.01, 1: 0.01, 2: 0.005, 3: 0.0025}  # by hand: a cut after epochs 1 and 2
    assert logged.to_dict() == pytest.approx(script.used, rel=1e-6)  # logged as float32


class HeldOutData(L.LightningDataModule):
    """What GraceModule reads of RULDataModule after a test: the held-out sequences (unit 1 cut twice, unit 2
    once) as ``splits.val`` or, with calibration cuts, as ``splits.calibration`` (``held_as``), and
    ``eval_batch_size`` (2: the cut ends span two batches)."""

    def __init__(self, held_as: str | None):
        super().__init__()
        rng = np.random.default_rng(2)
        rows = {u: rng.normal(size=(12, 3)).astype(np.float32) for u in (1, 2)}
        rul = np.linspace(100, 0, 12).astype(np.float32)
        cuts = [UnitSeries(u, rows[u][:n], rul[:n]) for u, n in ((1, 7), (1, 10), (2, 6))]
        held = WindowSet(cuts, window=5, stride=1, pad_mode="edge", health_thresholds=[30, 70]) if held_as \
            else None
        other = tiny_batch() if held_as == "calibration" else None  # selection's cuts: not what calibrates
        self.splits = SimpleNamespace(train=tiny_batch(), val=held if held_as == "val" else other, test=tiny_batch(),
                                      calibration=held if held_as == "calibration" else None)
        self.eval_batch_size = 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits.train, batch_size=8, collate_fn=batch_as_is)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits.test, batch_size=16, collate_fn=batch_as_is)


@pytest.mark.parametrize("held_as", ["val", "calibration", None])
def test_held_out_windows_are_scored_by_the_tested_weights(held_as):
    """calibration.csv's rows: each held-out cut's last window scored by the weights ``trainer.test`` scored (EMA
    shadow in, not the live weights), named by unit, cut and last row; none without held-out units."""
    from grace_lit.callbacks.ema import EMAWeights
    data, ema = HeldOutData(held_as), EMAWeights(decay=0.5)
    module = GraceModule(tiny_model(), GABA(warmup_steps=0), WMSE(125.0), partial(torch.optim.SGD, lr=0.5),
                         grad_clip=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, precision="64-true", logger=False, callbacks=[ema],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    frame = module.held_out_predictions
    if held_as is None:
        assert frame is None
        return
    held = getattr(data.splits, held_as)
    module.eval()  # trainer.test hands the module back in training mode
    with torch.no_grad():
        x = held.__getitems__([2, 8, 10])[0].double()  # the three cuts' last windows (3, 6 and 2 windows each)
        live = module.model(x)[0].numpy()
        ema.swap_in(module)
        shadow = module.model(x)[0].numpy()
        ema.swap_out(module)
    assert np.abs(shadow - live).max() > 1e-6  # the two weight sets differ, so the check below tells them apart
    np.testing.assert_allclose(frame["rul_pred"], shadow, rtol=0, atol=1e-12)
    assert list(frame.columns) == ["unit", "cut", "row", "rul_true", "rul_pred", "is_last"]
    assert frame["unit"].tolist() == [1, 1, 2]  # cuts of 7, 10 and 6 rows
    assert frame["cut"].tolist() == [0, 1, 0] and frame["is_last"].all()
    assert frame["row"].tolist() == [7, 10, 6]
    np.testing.assert_array_equal(frame["rul_true"], held.rul.numpy()[[2, 8, 10]])
