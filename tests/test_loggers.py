"""The optional loggers write their own files (and keep the CSV logger the report reads): logger=tensorboard and
logger=mlflow, one tiny job each in one sweep. Skipped only where the optional package is not installed
(pip install -e '.[tensorboard,mlflow]')."""
from __future__ import annotations

import sqlite3

import pytest

from test_launchers import TINY, train

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

LOGGED = {"train/loss_rul", "test/rmse_last", "lr"}


def test_tensorboard_and_mlflow_write_their_files(tmp_path, data_cache):
    run = train(["--multirun", "logger=tensorboard,mlflow", *TINY, f"hydra.sweep.dir={tmp_path}"], data_cache)
    assert run.returncode == 0, run.stderr[-3000:]
    tensorboard, mlflow = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))

    assert list((tensorboard / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tensorboard / "tensorboard")).Reload()
    assert LOGGED <= set(events.Tags()["scalars"])

    with sqlite3.connect(mlflow / "mlflow.db") as db:  # MLflow's local store, read without MLflow
        keys = {k for (k,) in db.execute("select distinct key from metrics")}
        tags = dict(db.execute("select key, value from tags"))
    assert LOGGED <= keys
    assert (tags["dataset"], tags["controller"], tags["protocol"], tags["seed"]) == ("FD001", "gaba", "paper", "42")

    for job in (tensorboard, mlflow):  # the CSV logger stays on: the report's plots read metrics.csv
        assert (job / "metrics.csv").is_file()
