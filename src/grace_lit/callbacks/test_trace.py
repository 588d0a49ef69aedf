"""An audit of selection, not a stage of it: under ``protocol=holdout protocol.test_trace=true`` the test set's last
windows are scored after every epoch, with the weights that epoch's selection scored (the EMA shadow), and
written to ``test_trace.csv``. Nothing reads the file, and nothing is logged: no callback, scheduler, checkpoint
or early stop can see it, so a run with the trace selects, trains and ends exactly as one without it
(``tests/test_test_trace.py``). Its one reader is the selection audit (``results/selection_inflation/``).

It keeps no checkpoint state either: on resume the rows of epochs about to be redone are dropped from the file.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import torch

from grace_lit.io import atomic_write_text
from grace_lit.metrics import nasa_terms

HEADER = ("# test_trace.csv: the test set scored after every epoch for auditing selection only; it chose nothing "
          "(no checkpoint, learning rate or early stop read it). epoch counts from 0, as metrics.csv does.\n")


class TestTrace(L.Callback):
    __test__ = False  # not a pytest class

    def __init__(self, enabled: bool, filename: str):
        self.enabled, self.filename = enabled, filename
        self.rows: list[dict[str, float]] = []

    def _path(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)  # a resumed run keeps the epochs before its checkpoint, redoes the rest
        if self.enabled and path.is_file():
            kept = pd.read_csv(path, comment="#")
            self.rows = kept[kept["epoch"] < trainer.current_epoch].to_dict("records")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        test = trainer.datamodule.splits.test
        pred = pl_module.predict_last_windows(test).double()
        truth = test.rul[test.is_last].to(pred)
        self.rows.append({"epoch": trainer.current_epoch,
                          "test/rmse_last": float((pred - truth).square().mean().sqrt()),
                          "test/nasa": float(nasa_terms(pred, truth).sum())})
        atomic_write_text(self._path(trainer), HEADER + pd.DataFrame(self.rows).to_csv(index=False))
