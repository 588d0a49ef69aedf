"""DDP: every rank computes the same controller weights, the replicas stay identical, and both equal one process
trained on the concatenated batches.

Two CPU processes (gloo) run a real ``lightning.Trainer(strategy="ddp")`` in float64, each on its half of every
global batch; one process then trains on the whole global batches. Equal halves make the mean of the two ranks'
mean losses the global mean loss, so the two runs must agree to rounding. The model is ``tiny_model`` with its
BatchNorm replaced by the identity: under DDP BatchNorm normalises with each rank's own batch statistics (DDP's
documented behaviour, not an error of this project), which no single-process run reproduces; every other layer
treats each window on its own, and dropout is 0. GABA has a one-step warmup, so the first step takes the
single-backward path (DDP's own all-reduce) and later steps the per-task gradients (averaged by the module).

The whole DDP run (one process launch, every controller) is a module-scoped fixture. The last test runs
``trainer=ddp`` through the CLI and checks what it writes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader
from torchjd.aggregation import MGDAWeighting, Random, UPGradWeighting

from conftest import REPO, cli_env
from grace_lit.losses.gaba import GABA
from grace_lit.losses.gradnorm import GradNorm
from grace_lit.losses.jacobian_descent import JacobianDescent
from grace_lit.losses.rul import WMSE
from grace_lit.losses.uncertainty import Uncertainty
from grace_lit.models.dual_task import DualTaskModel
from grace_lit.module import GraceModule
from test_module import tiny_model

WORLD = 2
STEPS = 4
PER_RANK = 6  # windows per rank and step
WINDOW, FEATURES, MAX_RUL = 5, 3, 125.0
# name -> (controller factory, grad_mode); the learning rates are large enough to move every weight in 4 steps
CONTROLLERS = {
    "gaba_fused": (lambda: GABA(beta=0.5, warmup_steps=1, min_weight=0.05), "fused"),
    "gaba_reference": (lambda: GABA(beta=0.5, warmup_steps=1, min_weight=0.05), "reference"),
    "gaba_approx": (lambda: GABA(beta=0.5, warmup_steps=1, min_weight=0.05), "approx"),
    "gradnorm": (lambda: GradNorm(alpha=1.5, lr=0.1, min_weight=1e-3, scope="last_shared"), "fused"),
    "gradnorm_shared_fused": (lambda: GradNorm(alpha=1.5, lr=0.1, min_weight=1e-3, scope="shared"), "fused"),
    "uncertainty": (lambda: Uncertainty(scales=[0.5, 1.0], lr=0.1), "fused"),
    "upgrad": (lambda: JacobianDescent(UPGradWeighting), "fused"),
    "mgda_reference": (lambda: JacobianDescent(MGDAWeighting), "reference"),
    # random loss weights (conf/loss/rlw.yaml: the heads weighted too): every rank applies the same draw
    "rlw": (lambda: JacobianDescent(Random, weights_heads=True), "fused"),
}


def model_without_batchnorm() -> DualTaskModel:
    model = tiny_model()
    model.backbone.cnn = nn.Sequential(*(nn.Identity() if isinstance(m, nn.BatchNorm1d) else m
                                         for m in model.backbone.cnn))
    return model


def rank_batches(rank: int, world: int) -> list[tuple[torch.Tensor, ...]]:
    """This rank's share of the same seeded global batches: rows [rank * n, (rank + 1) * n) of each, n = total /
    world (world = 1: the whole batch)."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        total = WORLD * PER_RANK
        x = torch.randn(total, WINDOW, FEATURES, generator=gen, dtype=torch.float64)
        rul = torch.rand(total, generator=gen, dtype=torch.float64) * MAX_RUL
        health = torch.randint(0, 3, (total,), generator=gen)
        n = total // world
        batches.append(tuple(t[rank * n:(rank + 1) * n] for t in (x, rul, health)))
    return batches


class Record(L.Callback):
    """The controller's logged values (weights, gradient norms, EMAs, log-variances) after every step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: GraceModule, *args) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.controller.log_values().items()})


def train(name: str, rank: int = 0, world: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    make_controller, grad_mode = CONTROLLERS[name]
    module = GraceModule(model_without_batchnorm(), make_controller(), WMSE(MAX_RUL),
                         partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-4), grad_clip=1.0, grad_mode=grad_mode)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=STEPS,
                        precision="64-true", logger=False, callbacks=[record], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(module, DataLoader(rank_batches(rank, world), batch_size=None))
    assert trainer.global_step == STEPS
    logged = {f"{k}@{step}": v for step, values in enumerate(record.steps) for k, v in values.items()}
    return {"state": {k: v.detach().clone() for k, v in module.state_dict().items()}, "logged": logged}


def worker(rank: int, out: Path, port: int) -> None:
    """One DDP rank, as torchrun would start it: Lightning sees LOCAL_RANK and launches nothing itself."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1")
    # an earlier test's seed_everything leaves PL_GLOBAL_SEED in the environment the ranks inherit, and DDP's setup
    # re-seeds from it (the one-process reference does not): RLW's draws would then depend on the test order
    os.environ.pop("PL_GLOBAL_SEED", None)
    torch.set_num_threads(1)
    torch.save({name: train(name, rank, WORLD) for name in CONTROLLERS}, out / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(out, free_port()), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a.values(), b.values()))


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_ranks_agree_and_match_one_process(ranks, name):
    rank0, rank1 = (r[name] for r in ranks)
    single = train(name)
    logged = rank0["logged"]
    assert any(k.startswith("weight_rul@") for k in logged) and len({k.split("@")[1] for k in logged}) == STEPS
    weights = torch.stack([v for k, v in logged.items() if k.startswith("weight_rul@")])
    assert (weights - weights[0]).abs().max() > 1e-4  # the weights move: the comparison is not between constants
    if name.startswith(("gaba", "gradnorm")):
        assert any(k.startswith("g_rul@") for k in logged)  # gradient norms measured, and compared below
    # replicas: bit for bit the same parameters, buffers, controller state and logged weights and norms
    for part in ("state", "logged"):
        assert max_abs_diff(rank0[part], rank1[part]) == 0.0, part
    # one process on the concatenated batches, to rounding: measured at most 1.3e-13 on the parameters and 9.1e-13
    # (one ulp) on GradNorm's initial losses of 7.5e3, hence 1e-12 absolute plus 1e-13 relative
    for part in ("state", "logged"):
        for key, value in rank0[part].items():
            torch.testing.assert_close(value, single[part][key], rtol=1e-13, atol=1e-12, msg=f"{part} {key}")
    print(f"{name}: max |rank0 - rank1| = 0, max |DDP - one process| = "
          f"{max(max_abs_diff(rank0[p], single[p]) for p in ('state', 'logged')):.2e}")


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_ddp_run_scores_the_whole_test_set_once(tmp_path, data_cache):
    """``trainer=ddp`` on 2 CPU processes through the real CLI: rank 0 alone writes the results, one prediction per
    test unit, and the scores are those of the predictions (no sampler padding duplicates, no sum over ranks)."""
    run = subprocess.run([sys.executable, "-m", "grace_lit.train", "trainer=ddp", "trainer.accelerator=cpu",
                          "dataset=FD001", "model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                          "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, env=cli_env(data_cache), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run.stdout + run.stderr).count("test rmse_last=") == 1  # one rank reports and writes
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["status"], metrics["world_size"]) == ("completed", WORLD)
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["unit"].tolist() == list(range(1, 101))  # FD001 has 100 test units
    d = (predictions.rul_pred - predictions.rul_true).to_numpy()
    assert np.sqrt(np.mean(d ** 2)) == pytest.approx(metrics["test/rmse_last"], rel=1e-6)
    nasa = np.sum(np.where(d < 0, np.exp(-d / 13), np.exp(d / 10)) - 1)  # Saxena et al. 2008
    assert nasa == pytest.approx(metrics["test/nasa"], rel=1e-6)
    accuracy = np.mean(predictions.health_pred == predictions.health_true)
    assert accuracy == pytest.approx(metrics["test/health_acc"], abs=1e-9)
