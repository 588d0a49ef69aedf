"""Every ``experiment=`` preset and every option of every config group composes and trains: one tiny step
(model=small, one batch of each split, one epoch) through ``train.run``, in this process (a subprocess per
case would spend most of its time importing). Options that need a file get a generated one; the GPU and DDP
trainers compose and validate only (tests/test_ddp.py runs DDP on CPU), and so do the MLflow and TensorBoard
loggers (tests/test_loggers.py runs them). The ``loss=`` options that tests/test_controllers.py and
tests/test_jd_methods.py train through the CLI, and the paper presets but FD002 GRACE (they differ from it only
in dataset and controller, each trained by its own case), compose, validate and build every object (data,
model, controller, callbacks, trainer) without training. Also: the debug presets do what they say."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

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
