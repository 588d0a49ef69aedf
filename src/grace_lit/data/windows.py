"""Sliding windows over per-unit series, stored once as a flat array and gathered by index.

A window is (start row, window length) into one flat (rows, features) tensor, so memory stays at the size of
the series rather than window x series, and a batch is one gather: no per-sample ``__getitem__`` or collate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from grace_lit.errors import GraceError


@dataclass
class UnitSeries:
    """One engine unit: normalised features per row and the (capped) RUL target of each row."""

    unit: int
    features: np.ndarray  # (rows, features) float32
    rul: np.ndarray  # (rows,) float32
    health: np.ndarray | None = None  # (rows,) int health states given by the data; None: from the RUL thresholds


def health_labels(rul: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Health state = number of thresholds the RUL lies strictly below (0 healthy ... len(thresholds) critical)."""
    return (np.asarray(rul)[:, None] < np.asarray(thresholds, dtype=np.float64)[None, :]).sum(axis=1)


def health_names(states: int) -> list[str]:
    """The states' names by code: 0 healthy ... the last critical (three states: healthy, degrading, critical;
    two, as N-CMAPSS's hs flag gives: healthy, degraded)."""
    if states == 2:
        return ["healthy", "degraded"]
    middle = ["degrading"] if states == 3 else [f"degrading {k}" for k in range(1, states - 1)]
    return ["healthy", *middle, "critical"]


def with_health_names(frame: pd.DataFrame, states: int) -> pd.DataFrame:
    """``frame`` with ``health_name`` (the predicted state's name) right after ``health_pred``; empty where the
    run has no health head."""
    names = health_names(states)
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("health_pred") + 1, "health_name",
                 frame["health_pred"].map(lambda code: names[int(code)], na_action="ignore"))
    return frame


class WindowSet(Dataset):
    """Windows of length ``window`` ending at every ``stride``-th row of each unit, the last row always included.

    A "unit" here is one sequence: a held-out unit cut several times (protocol.val_cuts) gives several, each
    with its own last window (``is_last``), and the last-window metrics count every one of them.

    Units shorter than the window are front-padded (``pad_mode``: ``edge`` repeats the first row, ``zero`` uses
    zeros, i.e. the training mean after standardisation). Windows never cross units.
    """

    def __init__(self, units: list[UnitSeries], window: int, stride: int, pad_mode: str,
                 health_thresholds: list[float]):
        if window < 1 or stride < 1:
            raise GraceError(f"window ({window}) and stride ({stride}) must be >= 1. Fix: dataset.window=30 "
                             f"dataset.stride=1 are the paper's values.")
        if pad_mode not in ("edge", "zero"):
            raise GraceError(f"dataset.pad_mode={pad_mode!r} is not one of 'edge', 'zero'.")
        if not units:
            raise GraceError("No units to build windows from. Fix: check the dataset split settings.")
        blocks, starts, ends_rul, ends_health, unit_ids, is_last, end_rows = [], [], [], [], [], [], []
        offset = 0
        for u in units:
            feats = u.features
            pad = max(0, window - len(feats))
            if pad:
                fill = feats[:1] if pad_mode == "edge" else np.zeros_like(feats[:1])
                feats = np.concatenate([np.repeat(fill, pad, axis=0), feats])
            ends = np.arange(len(feats) - 1, window - 2, -stride)[::-1]  # anchored at the last row
            blocks.append(feats)
            starts.append(offset + ends - window + 1)
            ends_rul.append(u.rul[ends - pad])
            ends_health.append(health_labels(u.rul[ends - pad], health_thresholds) if u.health is None
                               else u.health[ends - pad])
            unit_ids.append(np.full(len(ends), u.unit))
            end_rows.append(ends - pad)
            last = np.zeros(len(ends), dtype=bool)
            last[-1] = True
            is_last.append(last)
            offset += len(feats)
        self.window = window
        self.series = torch.from_numpy(np.concatenate(blocks).astype(np.float32))
        self.starts = torch.from_numpy(np.concatenate(starts).astype(np.int64))
        self.rul = torch.from_numpy(np.concatenate(ends_rul).astype(np.float32))
        self.health = torch.from_numpy(np.concatenate(ends_health).astype(np.int64))
        self.unit = torch.from_numpy(np.concatenate(unit_ids).astype(np.int64))
        self.is_last = torch.from_numpy(np.concatenate(is_last))
        self.end_row = np.concatenate(end_rows)  # each window's last row within its unit's series (host side)
        self._offsets = torch.arange(window)

    @property
    def n_features(self) -> int:
        return self.series.shape[1]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, device=self.starts.device)
        rows = self.starts[idx, None] + self._offsets
        return self.series[rows], self.rul[idx], self.health[idx], self.unit[idx], self.is_last[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([index]))

    def to(self, device: torch.device | str) -> "WindowSet":
        for name in ("series", "starts", "rul", "health", "unit", "is_last", "_offsets"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def batch_as_is(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Collate function for ``__getitems__`` datasets: the batch is already stacked."""
    return batch
