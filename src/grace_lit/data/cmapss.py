"""NASA C-MAPSS FD001-FD004: a thin loader of the NASA text files onto the run-to-failure pipeline.

The strict text reader (``text.read_table``) and the unit / cycle order check name a damaged file's line;
everything after reading (conditions, scaling, targets, windows) is ``pipeline.RunToFailure``'s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from grace_lit.data.archive import ensure_extracted
from grace_lit.data.pipeline import RunToFailure, Runs, Splits  # noqa: F401  (Splits: the readers' result type)
from grace_lit.data.text import read_table
from grace_lit.errors import GraceError

SENSORS = [f"s{i}" for i in range(1, 22)]
SETTINGS = ["setting1", "setting2", "setting3"]
COLUMNS = ["unit", "cycle", *SETTINGS, *SENSORS]  # the 26 columns of the NASA files, as named here
SUBSETS = ("FD001", "FD002", "FD003", "FD004")


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


def read_nasa(path: Path) -> np.ndarray:
    """One NASA train or test file, checked: (rows, 26) float64 in the order of ``COLUMNS``."""
    table = read_table(path, len(COLUMNS))
    check_units(table, path)
    return table


def runs(table: np.ndarray, path: Path, features: list[str], conditions: list[str]) -> Runs:
    """The NASA table as pipeline rows (already sorted by unit and cycle)."""
    columns = [COLUMNS.index(c) for c in features], [COLUMNS.index(c) for c in conditions]
    return Runs(str(path), table[:, 0].astype(np.int64), table[:, 1], table[:, columns[0]], table[:, columns[1]],
                np.arange(1, len(table) + 1))


def read_subset(directory: Path, subset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train table, test table, true RUL after each test unit's last cycle)."""
    train_path, test_path = directory / f"train_{subset}.txt", directory / f"test_{subset}.txt"
    rul_path = directory / f"RUL_{subset}.txt"
    train, test = read_nasa(train_path), read_nasa(test_path)
    rul = read_table(rul_path, 1)[:, 0]
    n_test = int(test[-1, 0])
    if len(rul) != n_test:
        raise GraceError(f"{rul_path} has {len(rul)} lines but {test_path} has {n_test} units. Fix: restore the "
                         f"original NASA files.")
    return train, test, rul


class CMAPSS(RunToFailure):
    """One C-MAPSS subset. ``per_condition`` standardises per operating condition (the three settings rounded
    to ``condition_decimals``), else globally; ``condition_input`` (needs ``per_condition``) adds a one-hot of the
    condition, ``condition_count`` wide, to every row's inputs."""

    SENSORS = SENSORS  # the names dataset.sensors may use (config validation reads them before any data)

    def __init__(self, name: str, data_dir: str | None, cache_dir: str, sensors: list[str], max_rul: float,
                 window: int, stride: int, eval_stride: int, per_condition: bool, condition_decimals: list[int],
                 health_thresholds: list[float], pad_mode: str, select_metric: str, cap_test_rul: bool,
                 condition_input: bool = False, condition_count: int = 0):
        if name not in SUBSETS:
            raise GraceError(f"dataset.name={name!r} is not one of {SUBSETS}.")
        unknown = sorted(set(sensors) - set(SENSORS))
        if unknown:
            raise GraceError(f"Unknown sensor names {unknown} in dataset.sensors. Fix: use names from s1..s21.")
        directory = Path(data_dir).expanduser() if data_dir else ensure_extracted(cache_dir)
        self.train_table, self.test_table, rul = read_subset(directory, name)
        conditions = SETTINGS if per_condition else []
        super().__init__(  # the runs carry the settings either way (their training range goes to predict)
            name, runs(self.train_table, directory / f"train_{name}.txt", sensors, SETTINGS),
            runs(self.test_table, directory / f"test_{name}.txt", sensors, SETTINGS),
            {i + 1: float(r) for i, r in enumerate(rul)}, unit="unit", time="cycle",
            features=sensors, conditions=conditions, condition_mode="round",
            condition_decimals=condition_decimals if per_condition else [],
            condition_clusters=0, condition_seed=0, condition_tolerance=0.0, max_rul=max_rul, window=window,
            stride=stride, eval_stride=eval_stride, health_thresholds=health_thresholds, pad_mode=pad_mode,
            cap_test_rul=cap_test_rul, select_metric=select_metric, settings=SETTINGS,
            condition_input=condition_input, condition_count=condition_count)
