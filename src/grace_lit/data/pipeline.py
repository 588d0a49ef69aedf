"""The one run-to-failure pipeline: rows of (unit, time, features, conditions) -> standardisation -> windows.

Every table source (C-MAPSS's NASA text files, users' CSV or Parquet tables) is a thin loader that hands its
rows to ``RunToFailure`` as ``Runs``; the train / validation / test windows and the fitted ``Preprocessing``
come from here only. Knows nothing of Lightning; the DataModule decides which units are fitted and held out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from grace_lit.data.preprocess import Preprocessing, default_decimals, split_units, truncation_lengths, unit_slices
from grace_lit.data.windows import UnitSeries, WindowSet
from grace_lit.errors import GraceError

log = logging.getLogger(__name__)

# the calibration cuts draw from np.random.default_rng([split_seed, CALIBRATION_STREAM]): apart from the selection
# cuts (default_rng(split_seed)), so adding calibration changes neither the held-out set nor what selection sees
CALIBRATION_STREAM = 1


@dataclass
class Runs:
    """Rows grouped by unit (each unit's rows contiguous, in increasing time), as float64.

    ``unit`` holds integer ids (a table's own integer ids, else codes 0..N-1 of its sorted string ids, whose
    names ``names`` keeps); ``row`` is each row's 1-based row in ``path``, for messages.
    """

    path: str
    unit: np.ndarray  # (rows,) int64
    time: np.ndarray  # (rows,)
    features: np.ndarray  # (rows, features)
    conditions: np.ndarray  # (rows, settings): the operating settings (C-MAPSS: also when standardised globally)
    row: np.ndarray  # (rows,) int64
    names: dict[int, str] = field(default_factory=dict)  # unit id -> the table's own id, when that is a string

    def units(self) -> list[slice]:
        return unit_slices(self.unit)

    def take(self, keep: np.ndarray) -> "Runs":
        return Runs(self.path, self.unit[keep], self.time[keep], self.features[keep], self.conditions[keep],
                    self.row[keep], self.names)

    def name(self, unit: int) -> int | str:
        return self.names.get(unit, unit)


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet | None
    test: WindowSet
    preprocessing: Preprocessing | None = None
    unit_names: dict[int, str] = field(default_factory=dict)  # test unit id -> the table's own id (a string)
    # test unit id -> its true RUL after its last row, never capped (C-MAPSS: the RUL_FD00x file's value): the
    # truth of each unit's last window that metrics.json's test/*_raw scores use beside the capped test/* ones
    test_rul_raw: dict[int, float] = field(default_factory=dict)
    # protocol=holdout with interval.calibration_cuts: the held-out units' calibration cut ends, one window each
    calibration: WindowSet | None = None


def cut_test_units(runs: Runs, fraction: float, seed: int, window: int) -> tuple[Runs, Runs, dict[int, float]]:
    """Without a test file: a seeded ``fraction`` of whole units, each cut once as the NASA test units are.
    Returns (remaining training runs, cut test runs, RUL after each test unit's last kept row)."""
    if not 0 < fraction < 1:
        raise GraceError(f"dataset.test_fraction={fraction} must lie in (0, 1) when no dataset.test file is "
                         f"given. Fix: e.g. dataset.test_fraction=0.2, or pass dataset.test=<file>.")
    _, test_units = split_units(np.unique(runs.unit), fraction, seed)
    test = runs.take(np.isin(runs.unit, test_units))
    slices = test.units()
    lengths = truncation_lengths(np.array([s.stop - s.start for s in slices]), window, seed)[:, 0]
    keep = np.zeros(len(test.unit), dtype=bool)
    after_last = {}
    for rows, n in zip(slices, lengths):
        keep[rows.start:rows.start + n] = True
        after_last[int(test.unit[rows.start])] = float(test.time[rows.stop - 1] - test.time[rows.start + n - 1])
    return runs.take(~np.isin(runs.unit, test_units)), test.take(keep), after_last


class RunToFailure:
    """Train units (run to failure), test units (cut before failure, with the RUL after their last row) and
    every preprocessing choice (constructor arguments from conf/dataset/)."""

    def __init__(self, name: str, train: Runs, test: Runs, test_rul: dict[int, float], unit: str, time: str,
                 features: list[str], conditions: list[str], condition_mode: str, condition_decimals: list[int],
                 condition_clusters: int, condition_seed: int, condition_tolerance: float, max_rul: float,
                 window: int, stride: int, eval_stride: int, health_thresholds: list[float], pad_mode: str,
                 cap_test_rul: bool, select_metric: str, settings: list[str] | None = None,
                 condition_input: bool = False, condition_count: int = 0):
        """``settings``: the columns of the runs' ``conditions`` (default: ``conditions``); per-condition
        standardisation uses them when ``conditions`` names them, and their training range is kept either way.
        ``condition_input``: a one-hot of the condition follows the features; ``condition_count`` is its width as
        the config states it (the model is sized from the config, before any fitting), checked against the fit."""
        missing = sorted(set(test.unit.tolist()) - set(test_rul))
        if missing:
            raise GraceError(f"{test.path}: test unit {test.name(missing[0])} has no remaining life after its last "
                             f"row. Fix: give every test unit a row in dataset.test_rul.")
        self.name, self.train, self.test, self.test_rul = name, train, test, test_rul
        self.stride, self.select_metric, self.condition_count = stride, select_metric, condition_count
        if conditions and condition_mode == "round" and not condition_decimals:
            condition_decimals = self._default_decimals(list(conditions))
        self.spec = dict(unit=unit, time=time, features=list(features), conditions=list(conditions),
                         condition_mode=condition_mode, decimals=list(condition_decimals),
                         clusters=condition_clusters, seed=condition_seed, tolerance=condition_tolerance,
                         window=window, eval_stride=eval_stride, pad_mode=pad_mode, max_rul=max_rul,
                         cap_test_rul=cap_test_rul, health_thresholds=list(health_thresholds),
                         settings=list(settings if settings is not None else conditions),
                         condition_input=condition_input)
        Preprocessing(**self.spec)  # checks the condition settings before any fitting

    def _default_decimals(self, conditions: list[str]) -> list[int]:
        """dataset.condition_decimals left empty: chosen from the training table's settings, and said."""
        settings = self.train.conditions
        decimals = default_decimals(settings)
        if None in decimals:
            i = decimals.index(None)
            raise GraceError(f"dataset.conditions={conditions} without dataset.condition_decimals: no rounding "
                             f"groups the training values of {conditions[i]!r} (from {settings[:, i].min():g} to "
                             f"{settings[:, i].max():g}) into conditions. Fix: dataset.condition_mode=kmeans with "
                             f"dataset.condition_clusters=<the number of regimes>, or give "
                             f"dataset.condition_decimals=[...] (one per condition column).")
        rounded = np.stack([np.round(settings[:, i], d) for i, d in enumerate(decimals)], axis=1)
        log.info("dataset.condition_decimals not set: conditions %s rounded to %s decimals, chosen from the training "
                 "table (the fewest that keep each cluster of its values apart): %d conditions. Set "
                 "dataset.condition_decimals=[...] to choose them.", conditions, decimals,
                 len(np.unique(rounded, axis=0)))
        return decimals

    @property
    def n_features(self) -> int:
        return self.train.features.shape[1]

    def train_units(self) -> np.ndarray:
        return np.unique(self.train.unit)

    def _check_lengths(self, runs: Runs, window: int) -> None:
        slices = runs.units()
        rows = min(slices, key=lambda s: s.stop - s.start)
        n = rows.stop - rows.start
        if window > n:
            raise GraceError(f"dataset.window={window} is longer than the shortest training unit of {self.name} "
                             f"({n} rows: unit {runs.name(int(runs.unit[rows.start]))}, {runs.path} row "
                             f"{runs.row[rows.start]}, column {self.spec['unit']!r}). Fix: choose dataset.window "
                             f"<= {n}, or remove that unit from the training table.")

    def build(self, fit_units: np.ndarray, val_units: np.ndarray, seed: int, val_cuts: int = 1,
              calibration_cuts: int = 0) -> Splits:
        """Windows for fitting (preprocessing fitted on these units only), held-out validation units (each cut
        ``val_cuts`` times at seeded cycles; every cut is its own sequence) and the test units; with
        ``calibration_cuts``, the held-out units cut that many more times, only each cut's last window kept: the
        points that calibrate the prediction intervals (grace_lit.calibration)."""
        fit = self.train.take(np.isin(self.train.unit, fit_units))
        self._check_lengths(fit, self.spec["window"])
        prep = Preprocessing(**self.spec).fit(fit.features, fit.conditions)
        if prep.condition_input and len(prep.keys) != self.condition_count:
            raise GraceError(f"dataset.condition_count={self.condition_count}, but the fitted units of {self.name} "
                             f"show {len(prep.keys)} operating conditions (columns {prep.conditions}); with "
                             f"dataset.condition_input=true the model's input width is dataset.sensors plus "
                             f"condition_count. Fix: dataset.condition_count={len(prep.keys)}.")
        windows = dict(window=prep.window, pad_mode=prep.pad_mode, health_thresholds=prep.health_thresholds)
        train = WindowSet(series(fit, prep, test=False), stride=self.stride, **windows)
        val = calibration = None
        if len(val_units):
            held = self.train.take(np.isin(self.train.unit, val_units))
            lengths = np.array([s.stop - s.start for s in held.units()])
            cuts = truncation_lengths(lengths, prep.window, seed, val_cuts)
            val = WindowSet(series(held, prep, test=True, cuts=cuts), stride=prep.eval_stride, **windows)
            if calibration_cuts:
                ends = truncation_lengths(lengths, prep.window, [seed, CALIBRATION_STREAM], calibration_cuts)
                # a stride as long as the longest cut keeps each cut's last window only
                calibration = WindowSet(series(held, prep, test=True, cuts=ends), stride=int(ends.max()), **windows)
        test = WindowSet(series(self.test, prep, test=True, after_last=self.test_rul), stride=prep.eval_stride,
                         **windows)
        raw = {int(u): float(self.test_rul[int(u)]) for u in np.unique(self.test.unit)}
        return Splits(train, val, test, prep, self.test.names, raw, calibration)


def series(runs: Runs, prep: Preprocessing, test: bool, after_last: dict[int, float] | None = None,
           cuts: np.ndarray | None = None) -> list[UnitSeries]:
    """Per-unit standardised features and piecewise-linear RUL (time to the unit's last row, plus the RUL after
    it); with ``cuts`` (units, n), n sequences per unit, each the unit's first cuts[i, j] rows."""
    features = prep.transform(runs.features, runs.conditions, runs.path, runs.row)
    out = []
    for i, rows in enumerate(runs.units()):
        unit = int(runs.unit[rows.start])
        remaining = runs.time[rows.stop - 1] - runs.time[rows] + (after_last[unit] if after_last else 0.0)
        rul = prep.rul(remaining, test)
        lengths = cuts[i] if cuts is not None else [rows.stop - rows.start]
        out.extend(UnitSeries(unit, features[rows][:n], rul[:n]) for n in lengths)
    return out
