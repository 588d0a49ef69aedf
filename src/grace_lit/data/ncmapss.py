"""NASA N-CMAPSS DS02 (``N-CMAPSS_DS02-006.h5``): read the selected columns in chunks, downsample every flight,
and cut train / validation / test windows.

The file holds 6.5 M one-second rows of 46 float64 columns and the int64 RUL (2.3 GiB). Reading whole datasets
would need several times the memory of what a run uses, so the reader streams ``chunk_rows`` rows at a time,
keeps every ``downsample``-th second of each flight and only the configured columns, as float32: peak memory
stays near the size of the selected float32 columns (measured: about a quarter of it, BENCHMARKS.md).

Knows nothing of Lightning; the DataModule decides which units are fitted and which are held out (whole units:
DS02's units all run to failure, like its test units, so none is cut at a random cycle).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from grace_lit.data.pipeline import Splits
from grace_lit.data.preprocess import Preprocessing, unit_slices
from grace_lit.data.windows import UnitSeries, WindowSet
from grace_lit.errors import GraceError

# The file's schema: column names per group, as stored in its ``<group>_var`` name arrays (Y has none).
COLUMNS: dict[str, tuple[str, ...]] = {
    "W": ("alt", "Mach", "TRA", "T2"),  # flight conditions (scenario descriptors)
    "X_s": ("T24", "T30", "T48", "T50", "P15", "P2", "P21", "P24", "Ps30", "P40", "P50", "Nf", "Nc", "Wf"),
    "X_v": ("T40", "P30", "P45", "W21", "W22", "W25", "W31", "W32", "W48", "W50", "SmFan", "SmLPC", "SmHPC",
            "phi"),  # virtual sensors
    "T": ("fan_eff_mod", "fan_flow_mod", "LPC_eff_mod", "LPC_flow_mod", "HPC_eff_mod", "HPC_flow_mod",
          "HPT_eff_mod", "HPT_flow_mod", "LPT_eff_mod", "LPT_flow_mod"),  # the simulator's degradation: not inputs
    "A": ("unit", "cycle", "Fc", "hs"),  # auxiliary: unit, flight number, flight class, health state
}
WIDTHS = {**{group: len(names) for group, names in COLUMNS.items()}, "Y": 1}  # Y: the RUL in cycles
DTYPES = {"W": np.float64, "X_s": np.float64, "X_v": np.float64, "T": np.float64, "A": np.float64, "Y": np.int64}
SPLITS = ("dev", "test")
INPUT_GROUPS = ("W", "X_s", "X_v")
HEALTH_LABELS = ("rul", "hs")
FILE_SIZE = "2.3 GiB"
SOURCE = ('the NASA Prognostics Center of Excellence data repository (https://www.nasa.gov/intelligent-systems-'
          'division/discovery-and-systems-health/pcoe/pcoe-data-set-repository/), "Turbofan Engine Degradation '
          'Simulation Data Set-2" (N-CMAPSS); unzip it')


@dataclass
class Samples:
    """The kept rows of one split (dev or test), in file order: sorted by unit, then cycle, then time."""

    features: np.ndarray  # (rows, features) float32, the configured columns in their configured order
    unit: np.ndarray  # (rows,) int64
    cycle: np.ndarray  # (rows,) int64, the flight number within its unit
    rul: np.ndarray  # (rows,) float32, Y as stored (uncapped)
    hs: np.ndarray  # (rows,) int8, 1 while healthy, then 0


def _redownload(path: Path) -> str:
    return f"Fix: download {path.name} again ({FILE_SIZE}) from {SOURCE}."


def _names(f: h5py.File, path: Path, group: str, width: int) -> list[str]:
    """The decoded ``<group>_var`` name array, checked against the schema and the data's column count."""
    key = f"{group}_var"
    if key not in f:
        raise GraceError(f"{path}: name array '{key}' is missing. {_redownload(path)}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(f[key]).reshape(-1)]
    if len(names) != width or sorted(names) != sorted(COLUMNS[group]):
        raise GraceError(f"{path}: name array '{key}' holds {names}, expected the {width} names "
                         f"{list(COLUMNS[group])}. {_redownload(path)}")
    return names


def _check_schema(f: h5py.File, path: Path) -> dict[str, list[str]]:
    """Every dataset of the schema present with its dtype and shape (n, columns), n shared within a split;
    returns the file's column names per group."""
    for split in SPLITS:
        rows = None
        for group, dtype in DTYPES.items():
            key, width = f"{group}_{split}", WIDTHS[group]
            expected = f"(n, {width}) {np.dtype(dtype).name}"
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise GraceError(f"{path}: dataset '{key}' is missing (expected {expected}). {_redownload(path)}")
            data = f[key]
            if data.dtype != dtype or data.ndim != 2 or data.shape[1] != width or rows not in (None, data.shape[0]):
                raise GraceError(f"{path}: dataset '{key}' is {data.shape} {data.dtype}, expected {expected} with "
                                 f"n the row count of the other {split} datasets ({rows}). {_redownload(path)}")
            rows = data.shape[0]
    return {group: _names(f, path, group, len(names)) for group, names in COLUMNS.items()}


def _kept_rows(unit: np.ndarray, cycle: np.ndarray, previous: tuple[float, float, int] | None,
               downsample: int) -> tuple[np.ndarray, tuple[float, float, int]]:
    """Mask of rows at second 0, d, 2d, ... of their flight (a flight = one (unit, cycle)), continuing the flight
    that ``previous`` = (unit, cycle, seconds already seen) left open at the end of the last chunk."""
    index = np.arange(len(unit))
    new = np.empty(len(unit), dtype=bool)
    new[1:] = (unit[1:] != unit[:-1]) | (cycle[1:] != cycle[:-1])
    new[0] = previous is None or (unit[0], cycle[0]) != previous[:2]
    start = np.where(new, index, np.iinfo(np.int64).min)
    if not new[0]:
        start[0] = -previous[2]
    offset = index - np.maximum.accumulate(start)
    return offset % downsample == 0, (unit[-1], cycle[-1], int(offset[-1]) + 1)


def _check_order(unit: np.ndarray, cycle: np.ndarray, previous: tuple[float, float, int] | None, path: Path,
                 key: str, first_row: int) -> None:
    """Rows sorted by unit, then cycle (continuing the last chunk's last row): each unit's rows are contiguous,
    so windows can be cut per unit."""
    if previous is not None:
        unit, cycle, first_row = np.r_[previous[0], unit], np.r_[previous[1], cycle], first_row - 1
    step_unit, step_cycle = np.diff(unit), np.diff(cycle)
    bad = np.flatnonzero((step_unit < 0) | ((step_unit == 0) & (step_cycle < 0))) + 1
    if bad.size:
        i = bad[0]
        raise GraceError(f"{path}: dataset '{key}', row {first_row + i} (0-based): unit {unit[i]:g} cycle "
                         f"{cycle[i]:g} breaks the order (rows sorted by unit, then cycle). {_redownload(path)}")


def read_split(f: h5py.File, path: Path, split: str, names: dict[str, list[str]], sensors: list[str],
               downsample: int, chunk_rows: int) -> Samples:
    """Stream one split: per chunk read each needed dataset once, keep the downsampled rows and the selected
    columns as float32, drop the chunk. Memory: the kept rows plus one chunk of the widest dataset."""
    where = {s: (g, names[g].index(s)) for g in INPUT_GROUPS for s in sensors if s in names[g]}
    groups = sorted({g for g, _ in where.values()}, key=INPUT_GROUPS.index)
    aux = {k: names["A"].index(k) for k in ("unit", "cycle", "hs")}
    n_rows, previous = f[f"A_{split}"].shape[0], None
    parts: list[Samples] = []
    for first in range(0, n_rows, chunk_rows):
        rows = slice(first, min(first + chunk_rows, n_rows))
        a = f[f"A_{split}"][rows]
        _check_order(a[:, aux["unit"]], a[:, aux["cycle"]], previous, path, f"A_{split}", first)
        keep, previous = _kept_rows(a[:, aux["unit"]], a[:, aux["cycle"]], previous, downsample)
        a = a[keep]
        features = np.empty((len(a), len(sensors)), dtype=np.float32)
        for group in groups:
            block = f[f"{group}_{split}"][rows][keep]
            for j, s in enumerate(sensors):
                if where[s][0] == group:
                    features[:, j] = block[:, where[s][1]]
        bad = np.flatnonzero(~(np.isfinite(features).all(axis=1) & np.isfinite(a).all(axis=1)))
        if bad.size:
            raise GraceError(f"{path}: {split} row {first + np.flatnonzero(keep)[bad[0]]} holds a non-finite value "
                             f"(selected columns {sensors}, A {names['A']}). {_redownload(path)}")
        parts.append(Samples(features, a[:, aux["unit"]].astype(np.int64), a[:, aux["cycle"]].astype(np.int64),
                             f[f"Y_{split}"][rows][keep, 0].astype(np.float32), a[:, aux["hs"]].astype(np.int8)))
    if not parts:
        raise GraceError(f"{path}: the {split} datasets have no rows. {_redownload(path)}")
    return Samples(*(np.concatenate([getattr(p, k.name) for p in parts]) for k in fields(Samples)))


class NCMAPSS:
    """N-CMAPSS DS02, preprocessed as configured (every choice is a constructor argument from conf/).

    The dev units are the training units (``train_units``); the test units are the test set, scored on all their
    windows. Scaling is global (flight conditions are continuous, so there are no discrete operating
    conditions to standardise within), fitted on the fitted dev units' kept rows only.
    """

    SENSORS = [name for group in INPUT_GROUPS for name in COLUMNS[group]]  # what dataset.sensors may name
    SENSORS_HELP = "the file's W_var, X_s_var and X_v_var (alt, Mach, TRA, T2, T24, ..., Wf, T40, ..., phi)"
    HEALTH_LABELS = HEALTH_LABELS

    def __init__(self, name: str, path: str | None, data_dir: str, filename: str, sensors: list[str],
                 downsample: int, chunk_rows: int, max_rul: float, window: int, stride: int, eval_stride: int,
                 health_labels: str, health_thresholds: list[float], pad_mode: str, select_metric: str,
                 cap_test_rul: bool):
        unknown = sorted(set(sensors) - set(self.SENSORS))
        if unknown:
            raise GraceError(f"Unknown feature names {unknown} in dataset.sensors. Fix: use names from "
                             f"{self.SENSORS_HELP}.")
        if health_labels not in HEALTH_LABELS:
            raise GraceError(f"dataset.health_labels={health_labels!r} is not one of {HEALTH_LABELS}.")
        if downsample < 1 or chunk_rows < 1:
            raise GraceError(f"dataset.downsample ({downsample}) and dataset.chunk_rows ({chunk_rows}) must be "
                             f">= 1. Fix: use integers >= 1 (conf/dataset/DS02.yaml holds the defaults).")
        self.name, self.sensors, self.max_rul = name, list(sensors), max_rul
        self.window, self.stride, self.eval_stride = window, stride, eval_stride
        self.health_labels, self.health_thresholds = health_labels, list(health_thresholds)
        self.pad_mode, self.select_metric, self.cap_test_rul = pad_mode, select_metric, cap_test_rul
        self.path = Path(path).expanduser() if path else Path(data_dir).expanduser() / filename
        if not self.path.is_file():
            raise GraceError(f"N-CMAPSS file {self.path} does not exist. Fix: download {filename} ({FILE_SIZE}) "
                             f"from {SOURCE}; then put it into paths.data_dir (now {Path(data_dir).expanduser()}; "
                             f"also set by the GRACE_LIT_DATA_DIR environment variable) or pass "
                             f"dataset.path=<the file>.")
        try:
            with h5py.File(self.path, "r") as f:
                names = _check_schema(f, self.path)
                self.dev, self.test = (read_split(f, self.path, split, names, self.sensors, downsample, chunk_rows)
                                       for split in SPLITS)
        except OSError as err:  # not HDF5, truncated, unreadable
            raise GraceError(f"{self.path} cannot be read as HDF5 ({err}). {_redownload(self.path)}") from err

    @property
    def n_features(self) -> int:
        return len(self.sensors)

    def train_units(self) -> np.ndarray:
        return np.unique(self.dev.unit)

    def _series(self, part: Samples, units: np.ndarray, prep: Preprocessing, test: bool) -> list[UnitSeries]:
        """Per-unit scaled features, RUL capped at max_rul, and (health_labels=hs) 0 while hs=1, 1 after."""
        out, wanted = [], set(np.asarray(units).tolist())
        for rows in unit_slices(part.unit):
            if int(part.unit[rows.start]) not in wanted:
                continue
            feats = part.features[rows]
            health = (1 - part.hs[rows]).astype(np.int64) if self.health_labels == "hs" else None
            out.append(UnitSeries(int(part.unit[rows.start]), prep.transform(feats, feats[:, :0]),
                                  prep.rul(part.rul[rows], test), health))
        return out

    def build(self, fit_units: np.ndarray, val_units: np.ndarray, seed: int, val_cuts: int = 1,
              calibration_cuts: int = 0) -> Splits:
        """Windows for fitting (scaler fitted on these units only), held-out whole dev units and all test units.
        ``seed`` and ``calibration_cuts`` are part of the reader contract; nothing here is random (held-out units
        are not cut, so the intervals calibrate on the held-out units' last windows)."""
        if val_cuts != 1:
            raise GraceError(f"protocol.val_cuts={val_cuts}: DS02 holds out whole units run to failure, which "
                             f"are not cut. Fix: protocol.val_cuts=1.")
        lengths = {int(self.dev.unit[r.start]): r.stop - r.start for r in unit_slices(self.dev.unit)}
        shortest = min(lengths[int(u)] for u in fit_units)
        if self.window > shortest:
            raise GraceError(f"dataset.window={self.window} is longer than the shortest training unit of "
                             f"{self.name} ({shortest} rows after downsampling). Fix: choose dataset.window <= "
                             f"{shortest} or a smaller dataset.downsample.")
        fit = np.isin(self.dev.unit, fit_units)
        fit_features = self.dev.features[fit]
        prep = Preprocessing(unit="unit", time="cycle", features=self.sensors, conditions=[], condition_mode="round",
                             decimals=[], window=self.window, eval_stride=self.eval_stride, pad_mode=self.pad_mode,
                             max_rul=self.max_rul, cap_test_rul=self.cap_test_rul,
                             health_thresholds=self.health_thresholds).fit(fit_features, fit_features[:, :0])
        windows = dict(window=self.window, pad_mode=self.pad_mode, health_thresholds=self.health_thresholds)
        train = WindowSet(self._series(self.dev, fit_units, prep, test=False), stride=self.stride, **windows)
        val = (WindowSet(self._series(self.dev, val_units, prep, test=True), stride=self.eval_stride, **windows)
               if len(val_units) else None)
        test_units = np.unique(self.test.unit)
        test = WindowSet(self._series(self.test, test_units, prep, test=True), stride=self.eval_stride, **windows)
        last = [r.stop - 1 for r in unit_slices(self.test.unit)]  # the file's Y (uncapped) at each unit's last row
        raw = {int(self.test.unit[i]): float(self.test.rul[i]) for i in last}
        return Splits(train, val, test, prep, test_rul_raw=raw)
