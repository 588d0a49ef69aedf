"""DWA (Liu et al. 2019) against hand-computed weights, and its epoch state across a checkpoint and resume."""
from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from conftest import composed
from grace_lit.data.windows import batch_as_is
from grace_lit.losses.dwa import DWA
from grace_lit.losses.rul import WMSE
from grace_lit.module import GraceModule
from test_module import tiny_batch, tiny_model


def run_epoch(dwa: DWA, steps: list[tuple[float, float]]) -> list[list[float]]:
    """One epoch as the module drives it: the epoch hook, then one call per step; the weights of each step."""
    dwa.before_epoch()
    return [dwa(torch.tensor(losses), None)[0].tolist() for losses in steps]


def dwa_weights(r_rul: float, r_health: float, temperature: float = 2.0) -> list[float]:
    e = [math.exp(r_rul / temperature), math.exp(r_health / temperature)]
    return [2 * e[0] / sum(e), 2 * e[1] / sum(e)]


def test_weights_by_hand():
    dwa = DWA(temperature=2.0)
    assert run_epoch(dwa, [(10.0, 2.0), (8.0, 2.0)]) == [[1.0, 1.0]] * 2  # epoch means (9, 2)
    assert run_epoch(dwa, [(6.0, 1.9), (6.0, 1.7)]) == [[1.0, 1.0]] * 2  # epoch means (6, 1.8)
    # epoch 3: r = (6 / 9, 1.8 / 2): the RUL loss fell faster, so its weight drops below 1
    third = run_epoch(dwa, [(3.0, 1.8), (3.0, 1.8), (3.0, 1.8)])
    assert third == [pytest.approx(dwa_weights(6 / 9, 0.9))] * 3 and third[0][0] < 1 < third[0][1]
    # epoch 4: r = (3 / 6, 1.8 / 1.8)
    assert run_epoch(dwa, [(2.0, 1.0)])[0] == pytest.approx(dwa_weights(0.5, 1.0))
    assert set(dwa.log_values()) == {"weight_rul", "weight_health"}


def test_temperature_and_config():
    cfg = composed(["loss=dwa"]).loss.controller
    assert (cfg.temperature, cfg.n_tasks) == (2.0, 2)
    hot = DWA(temperature=1e6)
    for losses in [(9.0, 2.0), (6.0, 1.8), (3.0, 1.8)]:
        weights = run_epoch(hot, [losses])
    assert weights[0] == pytest.approx([1.0, 1.0], abs=1e-6)  # T -> infinity: uniform


def fit(max_epochs: int, root, ckpt_path: str | None = None) -> GraceModule:
    module = GraceModule(tiny_model(), DWA(temperature=2.0), WMSE(125.0), partial(torch.optim.SGD, lr=1e-3),
                         grad_clip=1.0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, precision="64-true", logger=False,
                        default_root_dir=root, callbacks=[ModelCheckpoint(dirpath=root, save_last=True)],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    data = tiny_batch()
    trainer.fit(module, DataLoader(data, batch_size=4, collate_fn=batch_as_is),
                DataLoader(data, batch_size=len(data), collate_fn=batch_as_is), ckpt_path=ckpt_path,
                weights_only=False)  # our own file (it holds the RNG states)
    return module


def test_resume_continues_the_epoch_history(tmp_path):
    """Stopped after epoch 2 and resumed to epoch 4, DWA ends where an uninterrupted run does: its loss sums and
    epoch means travel in the checkpoint."""
    straight = fit(4, tmp_path / "straight")
    fit(2, tmp_path / "stopped")
    resumed = fit(4, tmp_path / "resumed", ckpt_path=str(tmp_path / "stopped" / "last.ckpt"))
    assert int(straight.controller.epochs_seen) == 3 and straight.controller.weights[0] != 1.0
    for key, value in straight.controller.state_dict().items():
        torch.testing.assert_close(resumed.controller.state_dict()[key], value, rtol=1e-12, atol=0, msg=key)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)
