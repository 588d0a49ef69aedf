"""NASA C-MAPSS FD001-FD004: read the text files and turn them into train / validation / test windows.

Knows nothing of Lightning; the DataModule decides which units are fitted and which are held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grace_lit.data.archive import ensure_extracted
from grace_lit.data.preprocess import Standardizer, truncation_lengths, unit_slices
from grace_lit.data.table import read_table
from grace_lit.data.windows import UnitSeries, WindowSet
from grace_lit.errors import GraceError

N_COLUMNS = 26  # unit, cycle, 3 settings, 21 sensors
SENSORS = [f"s{i}" for i in range(1, 22)]
SUBSETS = ("FD001", "FD002", "FD003", "FD004")


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet | None
    test: WindowSet


def check_units(table: np.ndarray, path: Path) -> None:
    """Units numbered 1..N in order, each with cycles 1, 2, 3, ... without gaps or repeats."""
    unit, cycle = table[:, 0], table[:, 1]
    bad = np.flatnonzero((unit != np.round(unit)) | (cycle != np.round(cycle)))
    if bad.size:
        raise GraceError(f"{path}, line {bad[0] + 1}: unit and cycle must be integers. Fix: restore the original "
                         f"NASA file.")
    new_unit = np.r_[True, unit[1:] != unit[:-1]]
    expected_unit = np.cumsum(new_unit)
    expected_cycle = np.arange(len(cycle)) - np.flatnonzero(new_unit)[expected_unit - 1] + 1
    bad = np.flatnonzero((unit != expected_unit) | (cycle != expected_cycle))
    if bad.size:
        i = bad[0]
        raise GraceError(f"{path}, line {i + 1}: unit {int(unit[i])} cycle {int(cycle[i])} breaks the order "
                         f"(units 1..N, cycles 1, 2, 3, ... without gaps or repeats). Fix: restore the original "
                         f"NASA file.")


def read_subset(directory: Path, subset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train table, test table, true RUL after each test unit's last cycle)."""
    train_path, test_path = directory / f"train_{subset}.txt", directory / f"test_{subset}.txt"
    rul_path = directory / f"RUL_{subset}.txt"
    train, test = read_table(train_path, N_COLUMNS), read_table(test_path, N_COLUMNS)
    check_units(train, train_path)
    check_units(test, test_path)
    rul = read_table(rul_path, 1)[:, 0]
    n_test = int(test[-1, 0])
    if len(rul) != n_test:
        raise GraceError(f"{rul_path} has {len(rul)} lines but {test_path} has {n_test} units. Fix: restore the "
                         f"original NASA files.")
    return train, test, rul


def _units(table: np.ndarray) -> list[np.ndarray]:
    return [table[rows] for rows in unit_slices(table[:, 0])]


class CMAPSS:
    """One C-MAPSS subset, preprocessed as configured (every choice is a constructor argument from conf/)."""

    SENSORS = SENSORS  # the names dataset.sensors may use (config validation reads them before any data)

    def __init__(self, name: str, data_dir: str | None, cache_dir: str, sensors: list[str], max_rul: float,
                 window: int, stride: int, eval_stride: int, per_condition: bool, condition_decimals: list[int],
                 health_thresholds: list[float], pad_mode: str, select_metric: str):
        if name not in SUBSETS:
            raise GraceError(f"dataset.name={name!r} is not one of {SUBSETS}.")
        subset = name
        unknown = sorted(set(sensors) - set(self.SENSORS))
        if unknown:
            raise GraceError(f"Unknown sensor names {unknown} in dataset.sensors. Fix: use names from s1..s21.")
        self.subset, self.sensors, self.max_rul = subset, list(sensors), max_rul
        self.window, self.stride, self.eval_stride = window, stride, eval_stride
        self.per_condition, self.condition_decimals = per_condition, list(condition_decimals)
        self.health_thresholds, self.pad_mode = list(health_thresholds), pad_mode
        self.select_metric = select_metric
        directory = Path(data_dir).expanduser() if data_dir else ensure_extracted(cache_dir)
        self.train_table, self.test_table, self.test_rul = read_subset(directory, subset)
        self._columns = [5 + SENSORS.index(s) for s in self.sensors]

    @property
    def n_features(self) -> int:
        return len(self.sensors)

    def train_units(self) -> np.ndarray:
        return np.unique(self.train_table[:, 0]).astype(np.int64)

    def _series(self, table: np.ndarray, scaler: Standardizer, rul_after_last: dict[int, float] | None = None,
                lengths: dict[int, int] | None = None) -> list[UnitSeries]:
        """Per-unit normalised features and capped piecewise-linear RUL (optionally cut to ``lengths``)."""
        out = []
        for rows in _units(table):
            unit = int(rows[0, 0])
            remaining = rows[-1, 1] - rows[:, 1] + (rul_after_last[unit] if rul_after_last else 0.0)
            if lengths is not None:
                rows, remaining = rows[:lengths[unit]], remaining[:lengths[unit]]
            feats = scaler.transform(rows[:, self._columns], rows[:, 2:5])
            out.append(UnitSeries(unit, feats, np.minimum(remaining, self.max_rul).astype(np.float32)))
        return out

    def build(self, fit_units: np.ndarray, val_units: np.ndarray, seed: int) -> Splits:
        """Windows for fitting (scaler fitted on these units only), held-out validation and the NASA test set."""
        fit_rows = np.isin(self.train_table[:, 0], fit_units)
        val_rows = np.isin(self.train_table[:, 0], val_units)
        shortest = min(len(u) for u in _units(self.train_table[fit_rows]))
        if self.window > shortest:
            raise GraceError(f"dataset.window={self.window} is longer than the shortest training unit of "
                             f"{self.subset} ({shortest} cycles). Fix: choose dataset.window <= {shortest}.")
        scaler = Standardizer(self.per_condition, self.condition_decimals)
        scaler.fit(self.train_table[fit_rows][:, self._columns], self.train_table[fit_rows][:, 2:5])
        windows = dict(window=self.window, pad_mode=self.pad_mode, health_thresholds=self.health_thresholds)
        train = WindowSet(self._series(self.train_table[fit_rows], scaler), stride=self.stride, **windows)
        val = None
        if len(val_units):
            val_table = self.train_table[val_rows]
            ids, counts = np.unique(val_table[:, 0].astype(np.int64), return_counts=True)
            cuts = dict(zip(ids.tolist(), truncation_lengths(counts, self.window, seed).tolist()))
            val = WindowSet(self._series(val_table, scaler, lengths=cuts), stride=self.eval_stride, **windows)
        after_last = {i + 1: float(r) for i, r in enumerate(self.test_rul)}
        test = WindowSet(self._series(self.test_table, scaler, after_last), stride=self.eval_stride, **windows)
        return Splits(train, val, test)
