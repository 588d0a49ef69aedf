"""Atomic file writes: a crash leaves the previous file or the new one, never half of either.

Each write goes to a temporary file in the target's own directory (same filesystem, so the final ``os.replace``
is a rename, atomic on POSIX), is flushed to disk, then renamed over the target.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with the temporary file next to the checkpoint.

    Lightning's own ``_atomic_save`` stages the file in the system temp directory and ``shutil.move``s it: a
    rename only when that directory shares the run directory's filesystem, otherwise a copy that a kill can cut
    in half (a node-local /tmp and a network run directory, the usual cluster layout). Remote URLs keep
    Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class AtomicCSVWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, replacing the whole file on every save, and keeping a resumed run's history.

    Lightning's appends rows in place and, when a new column appears, truncates and rewrites the file: a kill can
    leave half a row or an empty file. It also deletes an existing metrics.csv when it starts, so a resumed run
    would lose the epochs before its checkpoint. This one keeps the existing rows of the epochs before the first
    one it logs (the resumed epochs replace theirs) and writes all rows atomically, in Lightning's format (sorted
    columns, empty cells for values a row lacks).
    """

    def __init__(self, log_dir: str):
        path = Path(log_dir) / self.NAME_METRICS_FILE
        self.rows: list[dict[str, Any]] = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        self._trim = bool(self.rows)
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes metrics.csv here; the first save replaces it instead."""

    def save(self) -> None:
        if not self.metrics:
            return
        if self._trim:  # a run started again in the same directory: keep only the epochs it does not redo
            first = min((float(m["epoch"]) for m in self.metrics if "epoch" in m), default=0.0)
            self.rows = [r for r in self.rows if r.get("epoch") not in (None, "") and float(r["epoch"]) < first]
            self._trim = False
        self.rows += self.metrics
        self.metrics = []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=sorted(set().union(*self.rows)))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.metrics_file_path, text.getvalue())


class AtomicCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with :class:`AtomicCSVWriter` (conf/logger/csv.yaml)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AtomicCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AtomicCSVWriter(log_dir=self.log_dir)
        return self._experiment
