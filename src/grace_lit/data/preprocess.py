"""Dataset-independent preprocessing: operating conditions, standardisation, unit splits."""
from __future__ import annotations

import numpy as np

from grace_lit.errors import GraceError


def condition_keys(settings: np.ndarray, decimals: list[int]) -> np.ndarray:
    """Operating-condition key per row: the settings rounded to ``decimals`` (one entry per setting column)."""
    rounded = np.stack([np.round(settings[:, i], d) for i, d in enumerate(decimals)], axis=1)
    return rounded


def unit_slices(unit: np.ndarray) -> list[slice]:
    """Row ranges of consecutive equal unit ids (rows sorted by unit): one slice per unit, in file order."""
    bounds = np.r_[0, np.flatnonzero(np.diff(unit)) + 1, len(unit)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class Standardizer:
    """Per-group z-scoring fitted on training rows only (one group = global, one per condition otherwise)."""

    def __init__(self, per_condition: bool, decimals: list[int]):
        self.per_condition = per_condition
        self.decimals = decimals
        self.keys: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _group(self, settings: np.ndarray) -> np.ndarray:
        if not self.per_condition:
            return np.zeros(len(settings), dtype=np.int64)
        keys = condition_keys(settings, self.decimals)
        if self.keys is None:
            self.keys, groups = np.unique(keys, axis=0, return_inverse=True)
            return groups.reshape(-1)
        match = (keys[:, None, :] == self.keys[None, :, :]).all(axis=2)
        unknown = ~match.any(axis=1)
        if unknown.any():
            raise GraceError(f"Operating condition {keys[unknown][0].tolist()} does not occur in the training "
                             f"units. Fix: check dataset.condition_decimals (now {self.decimals}).")
        return match.argmax(axis=1)

    def fit(self, features: np.ndarray, settings: np.ndarray) -> "Standardizer":
        groups = self._group(settings)
        n_groups = groups.max() + 1
        self.mean = np.stack([features[groups == g].mean(axis=0) for g in range(n_groups)])
        std = np.stack([features[groups == g].std(axis=0) for g in range(n_groups)])
        self.std = np.where(std > 0, std, 1.0)  # a sensor constant within a condition carries no signal there
        return self

    def transform(self, features: np.ndarray, settings: np.ndarray) -> np.ndarray:
        groups = self._group(settings)
        return ((features - self.mean[groups]) / self.std[groups]).astype(np.float32)


def split_units(units: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of unit ids into (fit, held-out); held-out holds round(fraction * n) units."""
    units = np.sort(np.asarray(units))
    n_out = int(round(fraction * len(units)))
    if fraction > 0 and not 1 <= n_out < len(units):
        raise GraceError(f"protocol.holdout_fraction={fraction} leaves {n_out} of {len(units)} units held out. "
                         f"Fix: choose a fraction in (0, 1) that holds out at least one unit.")
    held = np.sort(np.random.default_rng(seed).choice(units, size=n_out, replace=False))
    return np.setdiff1d(units, held), held


def truncation_lengths(lengths: np.ndarray, window: int, seed: int) -> np.ndarray:
    """Seeded cut point per unit, uniform in [min(window, L), L], so held-out units end before failure like the
    NASA test units do (and the last window's RUL is not always 0)."""
    rng = np.random.default_rng(seed)
    low = np.minimum(window, lengths)
    return rng.integers(low, lengths + 1)
