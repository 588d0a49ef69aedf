"""Atomic writes: a crash before the rename leaves the previous file whole and no stray temporary file; the CSV
logger keeps every row when columns appear midway."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from grace_lit.io import AtomicCheckpointIO, AtomicCSVWriter, atomic_write_json, atomic_write_text


def crash_on_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src, dst):
        raise KeyboardInterrupt("killed before the rename")
    monkeypatch.setattr(os, "replace", replace)


def test_crash_before_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"rmse": 1.0})
    crash_on_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, '{"rmse": 2.0, "half": ')
    assert target.read_text() == '{\n  "rmse": 1.0\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the temporary file is gone


def test_checkpoint_staged_next_to_its_target(tmp_path, monkeypatch):
    staged = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (staged.append(os.path.dirname(src)), real(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "checkpoints" / "last.ckpt")
    assert staged == [str(tmp_path / "checkpoints")]  # same directory, so the rename cannot become a copy
    assert torch.equal(torch.load(tmp_path / "checkpoints" / "last.ckpt")["w"], torch.ones(3))


def test_csv_writer_keeps_rows_when_a_column_appears(tmp_path):
    writer = AtomicCSVWriter(str(tmp_path))
    writer.log_metrics({"train/loss": 2.0}, step=0)
    writer.save()
    writer.log_metrics({"train/loss": 1.5, "val/rmse": 30.0}, step=1)
    writer.save()
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert list(table.columns) == ["step", "train/loss", "val/rmse"]
    assert table["train/loss"].tolist() == [2.0, 1.5] and table["step"].tolist() == [0, 1]
    assert pd.isna(table["val/rmse"][0]) and table["val/rmse"][1] == 30.0


def test_csv_writer_killed_mid_save_keeps_the_previous_rows(tmp_path, monkeypatch):
    writer = AtomicCSVWriter(str(tmp_path))
    writer.log_metrics({"train/loss": 2.0}, step=0)
    writer.save()
    writer.log_metrics({"train/loss": 1.5, "val/rmse": 30.0}, step=1)  # a new column: a full rewrite
    crash_on_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        writer.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,train/loss", "0,2.0"]


def test_csv_writer_keeps_the_epochs_a_resumed_run_does_not_redo(tmp_path):
    first = AtomicCSVWriter(str(tmp_path))
    for epoch in range(3):  # epochs 0-2 logged; the run is killed with its checkpoint after epoch 1
        first.log_metrics({"epoch": epoch, "val/rmse": 30.0 - epoch}, step=epoch)
        first.save()
    resumed = AtomicCSVWriter(str(tmp_path))  # resumes at epoch 2
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0, 1, 2]  # nothing deleted on start
    resumed.log_metrics({"epoch": 2, "val/rmse": 27.5}, step=2)
    resumed.save()
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table["epoch"].tolist() == [0, 1, 2] and table["val/rmse"].tolist() == [30.0, 29.0, 27.5]
    fresh = AtomicCSVWriter(str(tmp_path))  # the same directory without resume: starts at epoch 0
    fresh.log_metrics({"epoch": 0, "val/rmse": 40.0}, step=0)
    fresh.save()
    assert pd.read_csv(tmp_path / "metrics.csv")["val/rmse"].tolist() == [40.0]
