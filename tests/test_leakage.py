"""Leakage: which rows reach each split, and with which statistics, on FD002 against the raw NASA text files.

Only the public path is used: the reader and ``RULDataModule`` instantiated from the composed config, and the
windows their loaders yield. The expectation is recomputed here with numpy from the text files: the operating
condition of a row is its setting 1 (altitude) rounded, FD002's six conditions; per condition the mean and the
population standard deviation of the training units' rows (a sensor constant within a condition is left
unscaled). Every window of every split must equal rows of its own unit standardised that way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from numpy.lib.stride_tricks import sliding_window_view
from omegaconf import OmegaConf

from conftest import composed

COLUMNS = ["unit", "cycle", "setting1", "setting2", "setting3", *(f"s{i}" for i in range(1, 22))]
TOL = dict(rtol=1e-5, atol=1e-5)  # the windows are float32


def raw_units(path: Path) -> dict[int, np.ndarray]:
    table = np.loadtxt(path)
    units, first = np.unique(table[:, 0], return_index=True)  # rows are grouped by unit
    return {int(u): rows for u, rows in zip(units, np.split(table, first[1:]))}


@pytest.fixture(scope="module")
def raw(cmapss_dir) -> dict:
    return dict(train=raw_units(cmapss_dir / "train_FD002.txt"), test=raw_units(cmapss_dir / "test_FD002.txt"),
                rul=np.loadtxt(cmapss_dir / "RUL_FD002.txt"))


class Statistics:
    """Per-condition mean and standard deviation of the given units' rows; ``__call__`` standardises rows."""

    def __init__(self, units: list[np.ndarray], sensors: list[int]):
        rows = np.concatenate(units)
        self.sensors, keys = sensors, self.condition(rows)
        self.conditions = np.unique(keys)
        assert len(self.conditions) == 6  # FD002's six operating conditions
        self.mean = np.stack([rows[keys == c][:, sensors].mean(0) for c in self.conditions])
        std = np.stack([rows[keys == c][:, sensors].std(0) for c in self.conditions])
        self.std = np.where(std > 0, std, 1.0)

    @staticmethod
    def condition(rows: np.ndarray) -> np.ndarray:
        return np.round(rows[:, COLUMNS.index("setting1")]).astype(int)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        group = np.searchsorted(self.conditions, self.condition(rows))
        return (rows[:, self.sensors] - self.mean[group]) / self.std[group]


def padded(rows: np.ndarray, window: int) -> np.ndarray:
    """A unit shorter than the window is front-padded with its first row (dataset.pad_mode=edge)."""
    return np.concatenate([np.repeat(rows[:1], max(0, window - len(rows)), 0), rows])


def locate(batches: list, raw: dict[int, np.ndarray], stats: Statistics, window: int) -> dict:
    """Every window of the batches, placed in its own unit: per unit the row each window ends at (the nearest
    expected row to its last row), its target and last-window flag; ``gap``: the largest deviation of any window
    from the expected rows up to its end, in units of the tolerance."""
    x, rul, _, unit, last = (np.concatenate([b[i].numpy() for b in batches]) for i in range(5))
    ends, gap = {}, 0.0
    for u in np.unique(unit):
        rows = padded(stats(raw[int(u)]), window)
        windows = x[unit == u]
        tail = windows[:, -1].astype(np.float64)
        end = ((rows ** 2).sum(1)[None, :] - 2 * tail @ rows.T).argmin(1)  # nearest row: |tail - row|^2 - |tail|^2
        if (end < window - 1).any():  # a last row that matches no row with a full window before it
            gap = np.inf
        else:
            segments = sliding_window_view(rows, window, axis=0).transpose(0, 2, 1)[end - window + 1]
            error = np.abs(windows - segments) / (TOL["atol"] + TOL["rtol"] * np.abs(segments))
            gap = max(gap, float(error.max()))
        ends[int(u)] = (end, rul[unit == u], last[unit == u], len(rows))
    return dict(ends=ends, gap=gap)


@pytest.fixture(scope="module", params=["paper", "holdout"])
def splits(request, data_cache, raw):
    cfg = composed(["dataset=FD002", f"protocol={request.param}", f"paths.data_dir={data_cache}",
                    "data.batch_size=100000", "data.eval_batch_size=100000"])
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    data.setup("fit")
    train_raw, test_raw = raw["train"], raw["test"]
    sensors = [COLUMNS.index(s) for s in cfg.dataset.sensors]
    train = list(data.train_dataloader())  # one pass: the training loader shuffles anew on every pass
    trained = np.unique(np.concatenate([b[3].numpy() for b in train]))
    stats = Statistics([train_raw[int(u)] for u in trained], sensors)  # the units training sees, and only those
    window = cfg.dataset.window
    out = dict(cfg=cfg, protocol=request.param, train_raw=train_raw, stats=stats, sensors=sensors,
               rul_file=raw["rul"], train=locate(train, train_raw, stats, window),
               test=locate(list(data.test_dataloader()), test_raw, stats, window))
    if request.param == "holdout":
        out["val"] = locate(list(data.val_dataloader()), train_raw, stats, window)
    return out


def test_held_out_units_never_reach_training(splits):
    units, trained = set(splits["train_raw"]), set(splits["train"]["ends"])
    if splits["protocol"] == "paper":
        assert trained == units and "val" not in splits
        return
    held = set(splits["val"]["ends"])
    assert len(held) == round(splits["cfg"].protocol.holdout_fraction * len(units))
    assert not held & trained and held | trained == units


def test_every_window_is_standardised_with_training_unit_statistics(splits):
    """Training, validation and test windows, per condition, with the training units' mean and std."""
    for name in ("train", "val", "test"):
        if name in splits:
            assert splits[name]["gap"] <= 1.0, name
    if splits["protocol"] == "holdout":  # the check can fail: all units' statistics move the held-out windows
        everyone = Statistics(list(splits["train_raw"].values()), splits["sensors"])
        unit = splits["train_raw"][next(iter(splits["val"]["ends"]))]
        assert np.abs(everyone(unit) - splits["stats"](unit)).max() > 100 * TOL["atol"]


def anchored(last_row: int, window: int, stride: int) -> list[int]:
    """Window ends every ``stride`` rows back from ``last_row`` (dataset.stride, dataset.eval_stride)."""
    return list(range(last_row, window - 2, -stride))[::-1]


def test_windows_and_targets_per_split(splits):
    """Training windows end at every ``stride``-th row back from each unit's last, target min(cycles left,
    max_rul). Held-out units: the same up to a cut, the last window at the cut. Test: the last window of each unit
    ends at its final cycle, with the RUL file's value (capped at max_rul unless dataset.cap_test_rul=false)."""
    data = splits["cfg"].dataset
    for unit, (ends, rul, last, rows) in splits["train"]["ends"].items():
        assert sorted(ends) == anchored(rows - 1, data.window, data.stride)
        np.testing.assert_array_equal(rul, np.minimum(rows - 1 - ends, data.max_rul))
        assert last.sum() == 1 and ends[last][0] == rows - 1
    for unit, (ends, rul, last, rows) in splits.get("val", {}).get("ends", {}).items():
        assert last.sum() == 1 and sorted(ends) == anchored(ends[last][0], data.window, data.eval_stride)
        np.testing.assert_array_equal(rul, np.minimum(rows - 1 - ends, data.max_rul))
    assert sorted(splits["test"]["ends"]) == list(range(1, len(splits["rul_file"]) + 1))
    cap = data.max_rul if OmegaConf.select(data, "cap_test_rul", default=True) else np.inf
    for unit, (ends, rul, last, rows) in splits["test"]["ends"].items():
        assert last.sum() == 1 and ends[last][0] == rows - 1
        assert rul[last][0] == min(splits["rul_file"][unit - 1], cap)
