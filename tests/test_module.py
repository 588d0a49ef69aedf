"""The training step's gradient algebra, checked through a real lightning.Trainer in float64.

With SGD(lr=1) and no clipping, the parameter update of one step equals minus the gradient the module built,
so it can be compared with lambda_1 grad L_1 + lambda_2 grad L_2 computed independently here.
"""
from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from grace_lit.callbacks.plateau import PlateauLR
from grace_lit.data.windows import UnitSeries, WindowSet, batch_as_is
from grace_lit.losses.gaba import GABA
from grace_lit.losses.rul import WMSE
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


@pytest.mark.parametrize("accumulate, epochs, steps", [(2, 2, 4), (3, 1, 2)])
def test_epoch_end_closes_an_unfinished_accumulation_cycle(accumulate, epochs, steps):
    """4 batches per epoch: accumulate=2 steps after batches (0, 1) and (2, 3); accumulate=3 after (0, 1, 2),
    then after batch 3 alone, at the epoch's end."""
    data = tiny_batch()
    module = GraceModule(tiny_model(), GABA(warmup_steps=0), WMSE(125.0), partial(torch.optim.SGD, lr=1e-3),
                         grad_clip=1.0, accumulate=accumulate)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=5, collate_fn=batch_as_is))  # 16 windows: 5, 5, 5, 1
    assert trainer.global_step == steps


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
