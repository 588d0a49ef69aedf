"""Performance plumbing that must not change results: no host sync in the training step, deferred NaN checks
that still never reach a checkpoint, and device-resident data served in the host loader's order."""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from grace_lit.callbacks.controller_log import ControllerLog
from grace_lit.callbacks.ema import EMAWeights
from grace_lit.data.cmapss import Splits
from grace_lit.data.datamodule import RULDataModule
from grace_lit.data.windows import UnitSeries, WindowSet, batch_as_is
from grace_lit.errors import GraceError
from grace_lit.losses.gaba import GABA
from grace_lit.losses.rul import WMSE
from grace_lit.models.backbone import Backbone
from grace_lit.models.dual_task import DualTaskModel
from grace_lit.module import GraceModule

SYNCS = ("__bool__", "item", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__")


def windows(n_units: int = 6, rows: int = 20) -> WindowSet:
    rng = np.random.default_rng(0)
    units = [UnitSeries(u, rng.normal(size=(rows, 3)).astype(np.float32),
                        np.linspace(100, 0, rows).astype(np.float32)) for u in range(1, n_units + 1)]
    return WindowSet(units, window=5, stride=1, pad_mode="edge", health_thresholds=[30, 70])


def module(rul_loss=None) -> GraceModule:
    torch.manual_seed(0)
    backbone = Backbone(input_size=3, hidden_size=4, cnn_channels=[4], kernel_size=3, num_heads=2, fc_dims=[6],
                        dropout=0.0)
    model = DualTaskModel(backbone, head_hidden=5, num_health_states=3, dropout=0.0, rul_scale=10.0)
    return GraceModule(model, GABA(warmup_steps=0), rul_loss or WMSE(125.0), partial(torch.optim.AdamW, lr=1e-3),
                       grad_clip=1.0)


def fit(mod: GraceModule, tmp_path, callbacks: list, max_epochs: int = 1) -> None:
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, callbacks=callbacks,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    data = windows()
    trainer.fit(mod, DataLoader(data, batch_size=16, shuffle=True, collate_fn=batch_as_is),
                DataLoader(data, batch_size=64, collate_fn=batch_as_is))


class SyncRecorder(L.Callback):
    """Records every tensor read back to the host (bool, item, tolist, cpu, ...) from the first training batch
    to the end of the last one, and which step's finite flag was pending at the start of each batch. Adam's step
    counters are left out: they stay on the host even when the parameters are on an accelerator."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.on, self.synced, self.pending_flags = False, [], []
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def wrapped(t, *args, _original=original, **kwargs):
                if self.on:
                    self.synced.append(t)
                return _original(t, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, wrapped)

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.on = True
        pending = pl_module.nonfinite._pending  # white box: which flag the guard holds back
        self.pending_flags.append(pending[0] if pending else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx < trainer.num_training_batches - 1:
            return  # the window goes on through the loop's own work up to the next batch
        self.on = False
        counters = [state["step"] for state in trainer.optimizers[0].state.values()]
        self.synced = [t for t in self.synced if not any(t is c for c in counters)]


def test_training_steps_read_back_only_the_previous_steps_finite_flag(tmp_path, monkeypatch):
    recorder = SyncRecorder(monkeypatch)
    fit(module(), tmp_path, [recorder, EMAWeights(0.99), ControllerLog("log.csv")])  # fused GABA, 6 steps
    flags = [f for f in recorder.pending_flags if f is not None]
    assert len(flags) == len(recorder.pending_flags) - 1 == 5
    # per step exactly one read-back: the finite flag the host queued one step earlier (logging, controller
    # log, EMA, clipping and GABA stay on the device)
    assert len(recorder.synced) == len(flags)
    assert all(s is f for s, f in zip(recorder.synced, flags))


class NaNAt:
    """The RUL loss, turned into NaN at one training step (0-based)."""

    def __init__(self, step: int):
        self.step, self.calls, self.inner = step, 0, WMSE(125.0)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(pred, target)
        return out * float("nan") if self.calls - 1 == self.step else out


@pytest.mark.parametrize("every_step", [True, False])
def test_nonfinite_step_stops_the_run_and_never_reaches_a_checkpoint(tmp_path, every_step):
    bad = 8 if not every_step else 3  # 6 steps per epoch: step 8 lies in epoch 1, after epoch 0's checkpoint
    loss = NaNAt(bad)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1,
                           every_n_train_steps=1 if every_step else None)
    with pytest.raises(GraceError, match=rf"at step {bad} \(epoch {bad // 6}, losses \[nan, .*Last good checkpoint: "
                                         rf".*last\.ckpt"):
        fit(module(loss), tmp_path, [ckpt], max_epochs=3)
    assert loss.calls <= bad + 2  # detected at the latest one step later, not at the epoch's end
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == (bad if every_step else 6)  # written before the bad update
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_device_batches_follow_the_host_loaders_order():
    data = windows()
    dm = RULDataModule(source=None, protocol="paper", holdout_fraction=0.0, batch_size=16, eval_batch_size=64,
                       seed=0)
    dm.splits = Splits(train=data, val=None, test=windows(n_units=2))
    torch.manual_seed(7)
    ours = [b[0] for b in dm.train_dataloader()]
    torch.manual_seed(7)
    host = [b[0] for b in DataLoader(data, batch_size=16, shuffle=True, collate_fn=batch_as_is)]
    assert len(ours) == len(host) == 6
    for a, b in zip(ours, host):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_overfit_batches_serve_the_same_windows_every_epoch():
    """debug=overfit (trainer.overfit_batches): the same first windows each epoch, in order, not a new shuffle."""
    dm = RULDataModule(source=None, protocol="paper", holdout_fraction=0.0, batch_size=16, eval_batch_size=64,
                       seed=0)
    dm.splits = Splits(train=windows(), val=None, test=windows(n_units=2))
    dm.trainer = SimpleNamespace(overfit_batches=2, world_size=1, global_rank=0)
    first, second = ([b[0] for b in dm.train_dataloader()][:2] for _ in range(2))
    torch.testing.assert_close(torch.cat(first), dm.splits.train.__getitems__(list(range(32)))[0], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(first), torch.cat(second), rtol=0, atol=0)


def test_setup_moves_the_windows_to_the_root_device_once():
    dm = RULDataModule(source=None, protocol="paper", holdout_fraction=0.0, batch_size=16, eval_batch_size=64,
                       seed=0)
    dm.splits = Splits(train=windows(), val=None, test=windows(n_units=2))
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")),  # stands in for cuda
                                 world_size=1, global_rank=0, overfit_batches=0)
    dm.setup("fit")
    assert all(t.device.type == "meta" for part in (dm.splits.train, dm.splits.test)
               for t in (part.series, part.starts, part.rul, part.health, part.unit, part.is_last))
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory
    x, rul, health, unit, is_last = next(iter(loader))
    assert x.device.type == "meta" and x.shape == (16, 5, 3) and rul.shape == (16,)
    assert next(iter(dm.test_dataloader()))[0].shape == (len(dm.splits.test), 5, 3)


def test_float16_mixed_precision_is_rejected():
    mod = module()
    mod.trainer = SimpleNamespace(precision="16-mixed")
    with pytest.raises(GraceError) as err:
        mod.setup("fit")
    assert str(err.value) == ("trainer.precision=16-mixed is not supported: the per-task gradients and the clip run "
                              "outside Lightning's loss scaler. Fix: trainer.precision=bf16-mixed (no scaler needed) "
                              "or 32-true.")  # what the user reads, whole
    mod.trainer = SimpleNamespace(precision="bf16-mixed")
    mod.setup("fit")
