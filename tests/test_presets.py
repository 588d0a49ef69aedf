"""Every ``experiment=`` preset and every option of every config group composes and trains: one tiny step
(model=small, one batch of each split, one epoch) through ``train.run``, in this process (a subprocess per
case would spend most of its time importing). Options that need a file get a generated one; the GPU and DDP
trainers compose and validate only (tests/test_ddp.py runs DDP on CPU), and so do the MLflow and TensorBoard
loggers (tests/test_loggers.py runs them). The ``loss=`` options that tests/test_controllers.py and
tests/test_jd_methods.py train through the CLI, and the paper presets but FD002 GRACE (they differ from it only
in dataset and controller, each trained by its own case), compose, validate and build every object (data,
model, controller, callbacks, trainer) without training. Also: the debug presets do what they say, and every
paper_* preset follows its spec (the model, determinism, AMNL's loop)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from conftest import REPO, composed
from grace_lit.config import validate
from grace_lit.data.synthetic_ncmapss import generate as generate_ds02
from grace_lit.data.synthetic_table import generate as generate_table
from grace_lit.train import build, run
from test_controllers import LOSSES
from test_jd_methods import METHODS

CONF = REPO / "conf"
TINY = ["model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]
DS02 = ["dataset=DS02", "dataset.path={ds02}"]
PUMPS = ["dataset=table", "dataset.train={pumps}/fleet.csv", "dataset.test={pumps}/test.csv",
         "dataset.test_rul={pumps}/test_rul.csv", "dataset.unit=pump", "dataset.time=hours",
         "dataset.features=[temperature,pressure,vibration]", "dataset.window=10"]
NEEDS = {  # options that train only beside another choice or a file
    "dataset=DS02": DS02, "model=ncmapss_20feat": DS02, "model=ncmapss_32feat": DS02,
    "dataset/features=ncmapss_20feat": DS02, "dataset/features=ncmapss_32feat": DS02, "dataset=table": PUMPS,
}
COMPOSE_ONLY = {"trainer=gpu", "trainer=ddp", "logger=mlflow", "logger=tensorboard"}  # the loggers: test_loggers.py
WRITES = {"debug=profiler": "fit-profile.txt"}


def group_options() -> list[str]:
    """``group=option`` for every option of every group train.yaml composes (DS02 brings its nested features
    group), but the defaults, which every case shares."""
    choices = composed(["dataset=DS02"], hydra=True).hydra.runtime.choices
    found = []
    for group, default in choices.items():
        if group.startswith("hydra/"):
            continue
        found += [f"{group}={p.stem}" for p in sorted((CONF / group).glob("*.yaml"))
                  if not p.stem.startswith("_") and p.stem != default]
    return found


CASES = ["defaults", *group_options()]
BUILD_ONLY = {c for c in CASES if c.startswith("experiment=paper_") and c != "experiment=paper_FD002_grace"} | {
    f"loss={name}" for name in [*LOSSES, *METHODS]}


@pytest.fixture(autouse=True)
def torch_flags():
    """A paper preset's trainer (deterministic) turns torch's deterministic algorithms on for the whole process and
    cuDNN's benchmark off, and Lightning never turns them back: restore them for the tests that follow."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark = before[2]
    if before[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("preset-files")
    return {"ds02": str(generate_ds02(out / "ds02.h5", cycles=10, flight_rows=150, seed=0)),
            "pumps": str(generate_table(out / "pumps", units=8, test_units=3, seed=0))}


def as_cli(overrides: list[str], out: Path, data_cache: Path) -> DictConfig:
    """The config ``python -m grace_lit.train <overrides>`` runs, with Hydra's node set as in that process."""
    cfg = composed([*overrides, f"paths.output_dir={out}", f"paths.data_dir={data_cache}"], hydra=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def tiny_run(overrides: list[str], out: Path, data_cache: Path) -> dict:
    """``python -m grace_lit.train <overrides>`` in this process."""
    run(as_cli(overrides, out, data_cache))
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_group_option_trains_one_step(case, files, data_cache, tmp_path):
    overrides = []
    if case != "defaults":
        overrides = [*(o.format(**files) for o in NEEDS.get(case, [])), case]
        if not any(o.startswith(("dataset=", "experiment=")) for o in overrides):
            overrides.insert(0, "dataset=FD001")  # the smallest subset; the defaults case runs FD002
    if case in COMPOSE_ONLY:
        validate(composed([*overrides, *TINY]))
        return
    if case in BUILD_ONLY:
        cfg = as_cli([*overrides, *TINY], tmp_path, data_cache)
        validate(cfg)
        data, _, trainer = build(cfg)
        data.setup("fit")
        assert len(data.splits.train) > 0 and trainer.max_epochs == 1
        return
    metrics = tiny_run([*overrides, *TINY], tmp_path, data_cache)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert metrics["test/rmse_all"] >= 0 and case.replace("defaults", "") in metrics["command"]
    if case in WRITES:
        assert (tmp_path / WRITES[case]).exists()


def test_overfit_preset_loss_falls(data_cache, tmp_path):
    tiny_run(["dataset=FD001", "model=small", "debug=overfit", "trainer.max_epochs=6"], tmp_path, data_cache)
    losses = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["train/loss_rul"])["train/loss_rul"].tolist()
    assert len(losses) == 6 and losses[-1] < 0.6 * losses[0]  # 5298 -> 2152 over these epochs when written


def test_fast_dev_run_preset_runs_one_batch_and_tests_the_live_weights(data_cache, tmp_path):
    metrics = tiny_run(["dataset=FD001", "model=small", "debug=fdr"], tmp_path, data_cache)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert metrics["best_epoch"] is None and not (tmp_path / "checkpoints").exists()


def test_limit_preset_keeps_every_file_of_a_run_and_lines_come_every_n_epochs(data_cache, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="grace_lit.progress"):
        metrics = tiny_run(["dataset=FD001", "model=small", "debug=limit", "callbacks.progress.mode=lines",
                            "callbacks.progress.every_n_epochs=2"], tmp_path, data_cache)
    lines = [r.getMessage() for r in caplog.records if r.name == "grace_lit.progress"]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 2/3", "epoch 3/3"]  # every 2nd, and the last
    assert "test/rmse_last=" in lines[-1] and "weight_health=" in lines[-1]
    assert metrics["epochs_run"] == 3
    assert len(pd.read_csv(tmp_path / "controller_log.csv")) == 3
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "predictions.csv").is_file()


def test_the_live_bar_runs_where_a_terminal_would_show_it(data_cache, tmp_path):
    metrics = tiny_run(["dataset=FD001", *TINY, "callbacks.progress.mode=bar"], tmp_path, data_cache)
    assert metrics["status"] == "completed"


# ----------------------------------------------------------------- the paper presets against their specs
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml"))


@pytest.mark.parametrize("preset", PAPER)
def test_paper_preset_follows_its_spec(preset):
    """Spec 000's backbone (no LayerNorm) with a plain RUL head; trainer=gpu deterministic, cuDNN's benchmark off
    (spec 000's set_seed sets cudnn.deterministic); AMNL as spec 003 runs it (2 batches per step, adaptive weight
    decay), GRACE with the decay, every other baseline without it (spec 000's "GRACE-only")."""
    cfg = composed([f"experiment={preset}", "trainer=gpu"])  # the README's "one paper-scale run" for FD002 GRACE
    validate(cfg)
    assert cfg.model.backbone.layer_norm is False and cfg.model.rul_scale == 1
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.deterministic is True and cfg.trainer.benchmark is False
    method = preset.split("_", 2)[2]
    accumulate, factors = {"grace": (1, [0.5, 0.1]), "amnl": (2, [0.5, 0.1])}.get(method, (1, [1.0, 1.0]))
    assert cfg.loss.name == ("gaba" if method == "grace" else method)
    assert cfg.accumulate == accumulate and list(cfg.callbacks.weight_decay.factors) == factors
    assert list(cfg.callbacks.weight_decay.milestones) == [100, 200]


def test_the_paper_model_is_the_specs_backbone_and_the_layer_norm_an_option():
    """The paper presets build Conv1d x3 -> BiLSTM -> attention -> FC without a LayerNorm: 1,839,556 parameters on
    FD002 (the spec says "roughly 1.7M"); model=cmapss elsewhere keeps it (1,840,580), and trainer=gpu alone keeps
    cuDNN's benchmark."""
    def built(overrides: list[str]) -> nn.Module:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            return instantiate(composed(overrides).model)
    paper, default = built(["experiment=paper_FD002_grace"]), built(["dataset=FD002"])
    assert not any(isinstance(m, nn.LayerNorm) for m in paper.modules())
    assert sum(isinstance(m, nn.LayerNorm) for m in default.modules()) == 1
    assert sum(p.numel() for p in paper.parameters()) == 1_839_556
    assert sum(p.numel() for p in default.parameters()) == 1_840_580
    gpu = composed(["trainer=gpu"]).trainer
    assert gpu.benchmark is True and gpu.deterministic is False
