"""Users' run-to-failure tables (CSV or Parquet): a thin loader onto the run-to-failure pipeline.

One row per unit and time step, columns named in the config. Rows may come in any order (each unit's rows are
sorted by time), unit ids may be strings, time steps may be irregular; a time repeated within a unit is refused,
naming both rows. Anything else gets one message naming the file, the row and the column, and what to do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from grace_lit.data.pipeline import RunToFailure, Runs, cut_test_units
from grace_lit.errors import GraceError

SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}


def read_frame(path: str | Path) -> pd.DataFrame:
    """The table as pandas read it (CSV: every column as text is kept for messages; Parquet: as stored)."""
    path = Path(path)
    if not path.is_file():
        raise GraceError(f"Table {path} does not exist. Fix: check the path (dataset.train / dataset.test, or the "
                         f"DATA argument).")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise GraceError(f"Table {path}: unknown format {path.suffix!r}. Fix: give a .csv or .parquet file.")
    if kind == "Parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise GraceError(f"Reading Parquet ({path}) needs pyarrow, which is not installed. Fix: pip install "
                             f"'grace-lit[table]' (or pyarrow), or save the table as CSV.") from err
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise GraceError(f"Table {path} cannot be read as CSV ({err}). Fix: one header line of column names, then "
                         f"one comma-separated row per unit and time step.") from err


def _where(path: Path, i: int, column: str) -> str:
    """Row i (0-based data row) as the user sees it: 1-based row, and the CSV line under the header."""
    line = f" (line {i + 2})" if path.suffix.lower() == ".csv" else ""
    return f"{path}, row {i + 1}{line}, column {column!r}"


def _numeric(frame: pd.DataFrame, path: Path, column: str, role: str) -> np.ndarray:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = bad[0]
        text = "" if pd.isna(raw.iloc[i]) else str(raw.iloc[i]).strip()
        number = text.lower().lstrip("+-") in ("nan", "inf", "infinity") or np.isinf(values[i])
        problem = "is empty" if not text else f"holds {text!r}, {'not finite' if number else 'not a number'}"
        raise GraceError(f"{_where(path, i, column)} ({role}) {problem}. Fix: every {role} value must be a "
                         f"finite number; repair or drop that row.")
    return values


def _unit_ids(frame: pd.DataFrame, path: Path, unit: str, names: dict[str, int]) -> np.ndarray:
    """Integer ids as they are; string ids as integer codes (``names``, extended in place, in sorted order)."""
    ids = frame[unit]
    text = ids.astype(str).str.strip()
    empty = np.flatnonzero(ids.isna().to_numpy() | (text == "").to_numpy())
    if empty.size:
        raise GraceError(f"{_where(path, empty[0], unit)} (dataset.unit) is empty. Fix: give every row its unit id.")
    numeric = pd.to_numeric(ids, errors="coerce")
    if numeric.notna().all() and (numeric == np.round(numeric)).all():
        return numeric.to_numpy().astype(np.int64)
    for name in sorted(set(text) - set(names)):
        names[name] = len(names)
    return text.map(names).to_numpy().astype(np.int64)


def runs_from_frame(frame: pd.DataFrame, path: str | Path, unit: str, time: str, features: list[str],
                    conditions: list[str], names: dict[str, int] | None = None) -> tuple[Runs, dict[str, int]]:
    """Validate and sort (by unit, then by time) one table. ``names`` maps string unit ids to integer ids
    (extended with new ones); integer ids are kept as they are."""
    path = Path(path)
    if len(frame) == 0:
        raise GraceError(f"Table {path} has no rows{' (only a header)' if len(frame.columns) else ''}. Fix: give "
                         f"one row per unit and time step under the header line.")
    roles = {unit: "dataset.unit", time: "dataset.time", **{c: "dataset.features" for c in features},
             **{c: "dataset.conditions" for c in conditions}}
    missing = [c for c in roles if c not in frame.columns]
    if missing:
        raise GraceError(f"{path}, header: column {missing[0]!r} ({roles[missing[0]]}) is missing; the table has "
                         f"{list(frame.columns)}. Fix: set {roles[missing[0]]} to a column of the table, or add it.")
    names = dict(names or {})
    codes = _unit_ids(frame, path, unit, names)
    t = _numeric(frame, path, time, "dataset.time")
    values = [_numeric(frame, path, c, "dataset.features") for c in features]
    settings = [_numeric(frame, path, c, "dataset.conditions") for c in conditions]
    order = np.lexsort((t, codes))  # by unit, then by time: rows exported from a database come in no order
    codes, t = codes[order], t[order]
    bad = np.flatnonzero((codes[1:] == codes[:-1]) & (t[1:] == t[:-1]))
    if bad.size:
        first, second = sorted((order[bad[0]], order[bad[0] + 1]))
        line = lambda i: f" (line {i + 2})" if path.suffix.lower() == ".csv" else ""  # noqa: E731
        raise GraceError(f"{_where(path, second, time)} (dataset.time): unit {frame[unit].iloc[second]!s} has time "
                         f"{t[bad[0]]:g} twice, on row {first + 1}{line(first)} and row {second + 1}{line(second)}. "
                         f"Fix: within a unit each time must be unique: drop the duplicate row, or correct its time.")
    n = len(frame)
    stack = lambda cols: np.stack(cols, axis=1)[order] if cols else np.zeros((n, 0))  # noqa: E731
    lookup = {code: name for name, code in names.items()}
    return Runs(str(path), codes, t, stack(values), stack(settings), order + 1, lookup), names


def read_test_rul(source: str, test: pd.DataFrame, test_path: Path, unit: str, names: dict[str, int],
                  runs: Runs) -> dict[int, float]:
    """RUL after each test unit's last row: a CSV of (unit, rul), or a column of the test table (its value on
    the unit's last row)."""
    if source in test.columns:
        values = _numeric(test, test_path, source, "dataset.test_rul")
        return {int(runs.unit[s.start]): float(values[runs.row[s.stop - 1] - 1]) for s in runs.units()}
    path = Path(source)
    frame = read_frame(path)
    missing = [c for c in (unit, "rul") if c not in frame.columns]
    if missing:
        raise GraceError(f"{path}, header: column {missing[0]!r} is missing; the table has {list(frame.columns)}. "
                         f"Fix: dataset.test_rul is a CSV with columns {unit!r} and 'rul' (remaining life after "
                         f"each test unit's last row), or the name of a column of the test table.")
    ids = _unit_ids(frame, path, unit, names)
    rul = _numeric(frame, path, "rul", "dataset.test_rul")
    return dict(zip(ids.tolist(), rul.tolist()))


class Table(RunToFailure):
    """A run-to-failure table (``train``) and optionally a test table of units cut before failure (``test``
    with ``test_rul``); without one, a seeded ``test_fraction`` of whole units becomes the test set, cut as the
    NASA test units are. ``sensors`` repeats ``features`` for conf/model, which sizes the input from
    dataset.sensors on every dataset (plus ``condition_count`` with ``condition_input``)."""

    def __init__(self, name: str, train: str, test: str | None, test_rul: str | None, unit: str, time: str,
                 features: list[str], conditions: list[str], condition_mode: str, condition_decimals: list[int],
                 condition_clusters: int, condition_seed: int, condition_tolerance: float, test_fraction: float,
                 test_seed: int, max_rul: float, window: int, stride: int, eval_stride: int,
                 health_thresholds: list[float], pad_mode: str, cap_test_rul: bool, select_metric: str,
                 sensors: list[str], condition_input: bool = False, condition_count: int = 0):
        for key, value in (("features", features), ("conditions", conditions)):
            if isinstance(value, str):  # list() would read it letter by letter
                raise GraceError(f"dataset.{key}={value!r} is one string, not a list of column names. Fix: "
                                 f"'dataset.{key}=[{value}]' (square brackets, quoted for the shell).")
        features, conditions = list(features), list(conditions)
        if not features:
            raise GraceError("dataset.features is empty. Fix: name the feature columns, e.g. "
                             "dataset.features=[s1,s2].")
        runs, names = runs_from_frame(read_frame(train), train, unit, time, features, conditions)
        if test is None:
            if test_rul is not None:
                raise GraceError("dataset.test_rul is set but dataset.test is not. Fix: give both, or neither (a "
                                 "seeded dataset.test_fraction of the training units becomes the test set).")
            runs, test_runs, after_last = cut_test_units(runs, test_fraction, test_seed, window)
        else:
            if test_rul is None:
                raise GraceError(f"dataset.test={test} needs dataset.test_rul: a CSV of {unit!r} and 'rul' (life "
                                 f"left after each test unit's last row), or a column of the test table.")
            frame = read_frame(test)
            test_runs, names = runs_from_frame(frame, test, unit, time, features, conditions, names)
            after_last = read_test_rul(test_rul, frame, Path(test), unit, names, test_runs)
        super().__init__(name, runs, test_runs, after_last, unit=unit, time=time, features=features,
                         conditions=conditions, condition_mode=condition_mode,
                         condition_decimals=condition_decimals, condition_clusters=condition_clusters,
                         condition_seed=condition_seed, condition_tolerance=condition_tolerance, max_rul=max_rul,
                         window=window, stride=stride, eval_stride=eval_stride,
                         health_thresholds=health_thresholds, pad_mode=pad_mode, cap_test_rul=cap_test_rul,
                         select_metric=select_metric, condition_input=condition_input,
                         condition_count=condition_count)
