"""Resume after SIGKILL and same-seed reruns give exactly the same numbers on CPU (real CLI, subprocesses).

Two runs of one command start together: A runs through, B is killed with SIGKILL during its second epoch and
resumed from ``checkpoints/last.ckpt``; B ending equal to A shows both the resume and that one command and seed
give the same numbers. The settings make every piece of state matter within four
short epochs: GABA past its warmup (EMA weights), LR warmup done after one epoch so the plateau scheduler steps
(patience 0), a fast EMA shadow (decay 0.5, used for every evaluation), dropout and a shuffled loader.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from conftest import REPO, cli_env, composed
from grace_lit.train import build

EPOCHS = 4
ARGS = ["dataset=FD001", "model=small", f"trainer.max_epochs={EPOCHS}", "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "data.batch_size=64",
        "loss.controller.warmup_steps=4", "callbacks.lr_warmup.epochs=1", "callbacks.plateau.patience=0",
        "callbacks.ema.decay=0.5", "callbacks.early_stopping.patience=2"]


def start(run_dir: Path, data_cache: Path, *extra: str) -> subprocess.Popen:
    env = {**cli_env(data_cache), "OMP_NUM_THREADS": "1"}  # the numbers depend on the thread count; keep one
    with open(run_dir.parent / f"{run_dir.name}.log", "a") as log:
        return subprocess.Popen([sys.executable, "-m", "grace_lit.train", *ARGS, f"hydra.run.dir={run_dir}", *extra],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)


def finish(proc: subprocess.Popen, run_dir: Path) -> None:
    assert proc.wait(timeout=300) == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> dict:
    base = tmp_path_factory.mktemp("resume")
    a, b = base / "A", base / "B"
    procs = {"A": start(a, data_cache), "B": start(b, data_cache)}
    last = b / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and procs["B"].poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    os.kill(procs["B"].pid, signal.SIGKILL)
    assert procs["B"].wait() == -signal.SIGKILL
    assert not (b / "metrics.json").exists()  # killed before the end
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] <= EPOCHS - 2  # at least one whole epoch is redone after the resume
    resumed = start(b, data_cache, "resume=true")
    finish(procs["A"], a)
    finish(resumed, b)
    return {"A": a, "B": b, "killed_checkpoint": checkpoint}


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def numbers(run_dir: Path) -> dict:
    return {k: v for k, v in metrics(run_dir).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("wall_time_s", "cpu_time_s")}


def test_killed_and_resumed_run_ends_with_identical_metrics(runs):
    a, b = numbers(runs["A"]), numbers(runs["B"])
    assert {"test/rmse_last", "test/nasa", "test/health_acc", "selection_score", "best_epoch"} <= set(a)
    assert a == b  # exact equality of every number
    assert metrics(runs["B"])["epochs_run"] == EPOCHS


def test_resumed_run_restores_controller_log_metrics_csv_and_predictions(runs):
    for name in ("controller_log.csv", "metrics.csv", "predictions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(runs["A"] / name), pd.read_csv(runs["B"] / name), check_exact=True)
    log = pd.read_csv(runs["B"] / "controller_log.csv")
    assert log.epoch.tolist() == list(range(EPOCHS)) and log.weight_rul.nunique() > 1  # GABA past its warmup


def test_wall_time_adds_up_across_the_resume(runs):
    before = runs["killed_checkpoint"]["wall_time_s"]
    assert 0 < before < metrics(runs["B"])["wall_time_s"]


class Worsening(L.LightningModule):
    """Its selection metric gets worse every epoch: only epoch 0 is ever the best."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).square().sum()

    def validation_step(self, batch, batch_idx):
        self.log("test/rmse_last", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_every_epoch_best_only_on_improvement(tmp_path):
    """The resume point must be the latest epoch, not the best one (Lightning 2.6's ``save_last`` writes only
    when the best improves, so a resume would redo every epoch since the best)."""
    cfg = composed([f"paths.output_dir={tmp_path}"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None and "Checkpoint" in c._target_]
    data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)
    trainer = L.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Worsening(), data, data)
    load = partial(torch.load, map_location="cpu", weights_only=False)
    assert load(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 2  # 0-based: the third epoch
    assert load(tmp_path / "checkpoints" / "best.ckpt")["epoch"] == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_float64_run_is_float64_before_its_checkpoint_loads(tmp_path, data_cache, monkeypatch):
    """Lightning restores a resumed checkpoint before it converts the module to the run's precision: a module
    built in float32 would round a 64-true run's weights and controller state (GABA's EMA) through float32."""
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))
    cfg = composed(["dataset=FD001", "model=small", "trainer=cpu", "trainer.precision=64-true",
                    f"paths.output_dir={tmp_path}"], hydra=True)
    _, module, _ = build(cfg)
    floats = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    assert {t.dtype for t in floats} == {torch.float64} and any(t is module.controller.ema_weights for t in floats)
