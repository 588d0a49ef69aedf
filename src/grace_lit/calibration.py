"""A run's prediction intervals: calibrated from its settings (``interval``) and its held-out cut ends, attached
to its test predictions and summarised in metrics.json, and the held-out measure that chooses among the forms.

**What calibrates.** Under ``protocol=holdout`` every run writes ``calibration.csv``: held-out cut ends scored by
the tested weights. The test set scores each test unit's last window, and a test unit is a whole unit cut before
failure at one random cycle; each held-out unit is a whole training unit (a seeded draw from the same fleet, never
trained on) cut ``interval.calibration_cuts`` times at seeded cycles drawn uniformly over its life (a draw of
their own, apart from the ``protocol.val_cuts`` that selection sees), so a cut's last window is drawn the way a
test unit's last window is: same population of units, same kind of cut, same one-window-per-sequence scoring.
Only cut ends calibrate, never a cut's earlier windows: those over-weight early life (high RUL). Many cuts per
unit give each Mondrian band enough points that the conformal rank's finite-sample margin (a band of n points
covers ceil(0.9 (n + 1)) / (n + 1) in expectation: 0.92 at n = 12) is small; ``calibration_cuts=0`` calibrates
on the selection cuts' ends instead (runs before the key existed). The points are exchangeable with the test
points only approximately: the cuts of one unit share that unit (the guarantee holds per unit, not per cut),
the selected checkpoint was chosen on these same held-out units (slightly optimistic residuals), and the NASA
test files' cut distribution is not exactly the uniform one the held-out cuts use. Hence the coverage on the
test set is measured, not assumed (``python -m grace_lit.intervals RUN_DIR ...``), and metrics.json records it,
against the capped truth and against the raw one.

``protocol=paper`` has no held-out units: its runs get no interval (empty columns and :data:`PAPER_REASON`),
never one calibrated on the test set it is scored on. The forms themselves: grace_lit.conformal.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from grace_lit.conformal import (COLUMNS, FORMS, RUN_FORMS, Calibration, CrossConformal, band_labels, calibrate,
                                 coverage_by_band, interval_columns, raw_truth_coverage, split_units)
from grace_lit.data.preprocess import Preprocessing
from grace_lit.errors import GraceError
from grace_lit.rundir import read_held_out

DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "interval" / "default.yaml"
MISSING_REASON = ("no interval: crepes (with scikit-learn, which it imports) is not installed. Fix: pip install "
                  "crepes scikit-learn (both are dependencies of grace-lit; a hand-made environment may lack them).")
PAPER_REASON = ("no interval: protocol=paper has no held-out units, and an interval calibrated on the test set "
                "would be scored on the points it was fitted to. Fix: train with protocol=holdout (its held-out "
                "units' cut ends calibrate the interval).")
NO_FILE_REASON = ("no interval: the run has no calibration.csv (its held-out units' predictions; runs trained "
                  "before intervals existed lack it). Fix: train the run again with protocol=holdout.")
# what each test coverage in metrics.json is measured against (the README and docs/intervals.md quote these)
COVERAGE_TRUTHS = {
    "test/interval_coverage": "the test truth as the run scores it (capped at max_rul when dataset.cap_test_rul)",
    "test/interval_coverage_raw_le_cap": "the units whose raw truth is at most max_rul (the cap changes nothing)",
    "test/interval_coverage_raw_truth": "the raw truth (NASA's RUL file, never capped): an open interval "
                                        "('max_rul+') misses a raw truth above the cap"}


def settings(cfg: DictConfig) -> DictConfig:
    """The run's ``interval`` config, over conf/interval/default.yaml (a run composed before a key existed)."""
    node = cfg.get("interval")
    return OmegaConf.merge(OmegaConf.load(DEFAULTS), node) if node is not None else OmegaConf.load(DEFAULTS)


def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad ``interval`` config before training (the interval is calibrated after it)."""
    interval = settings(cfg)
    if interval.form not in RUN_FORMS:
        raise GraceError(f"interval.form={interval.form!r} is not one of {RUN_FORMS} (a single run has no spread). "
                         f"Fix: interval.form=monotone, or set interval.ensemble_form for grace-predict ensembles.")
    if interval.ensemble_form not in FORMS:
        raise GraceError(f"interval.ensemble_form={interval.ensemble_form!r} is not one of {FORMS}. Fix: e.g. "
                         f"interval.ensemble_form=mondrian.")
    if not 0 < interval.coverage < 1:
        raise GraceError(f"interval.coverage={interval.coverage} must lie in (0, 1). Fix: e.g. "
                         f"interval.coverage=0.9.")
    cuts = interval.get("calibration_cuts", 0)
    if not isinstance(cuts, int) or isinstance(cuts, bool) or cuts < 0:
        raise GraceError(f"interval.calibration_cuts={cuts} must be an integer >= 0 (cuts per held-out unit; 0: "
                         f"the selection cuts' ends). Fix: e.g. interval.calibration_cuts=20.")
    if interval.spread_floor < 0:
        raise GraceError(f"interval.spread_floor={interval.spread_floor} must be >= 0. Fix: e.g. "
                         f"interval.spread_floor=1.0.")
    if interval.difficulty_floor <= 0:
        raise GraceError(f"interval.difficulty_floor={interval.difficulty_floor} must be > 0. Fix: e.g. "
                         f"interval.difficulty_floor=1.0.")
    bands = interval.bands
    if bands is not None and (not len(bands) or list(bands) != sorted(set(bands))):
        raise GraceError(f"interval.bands={list(bands)} must be increasing RUL edges. Fix: e.g. "
                         f"interval.bands=[30,70], or null for the dataset's health_thresholds.")


def edges_of(interval: DictConfig, prep: Preprocessing) -> list[float]:
    return [float(e) for e in (interval.bands if interval.bands is not None else prep.health_thresholds)]


def upper_limit(prep: Preprocessing) -> float | None:
    """The largest value the evaluation truth takes: max_rul when it is capped, else none."""
    return prep.max_rul if prep.cap_test_rul else None


def calibration_points(held: pd.DataFrame) -> pd.DataFrame:
    """The rows of calibration.csv that calibrate: each cut's last window (module docstring: why)."""
    return held[held["is_last"].astype(bool)]


def crepes_available() -> bool:
    """Imported where used: a machine without it (a GPU machine's bare environment) still trains, without
    intervals, and says why."""
    try:
        import crepes  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def with_intervals(frame: pd.DataFrame, calibration: Calibration | None, spread: np.ndarray | None = None
                   ) -> pd.DataFrame:
    """``frame`` (a ``rul_pred`` column) with the interval columns (grace_lit.conformal.COLUMNS); empty cells
    without a calibration."""
    if calibration is None:
        return frame.assign(**{c: np.nan for c in COLUMNS})
    lo, hi = calibration.interval(frame["rul_pred"].to_numpy(), spread)
    return frame.assign(**interval_columns(lo, hi, calibration.coverage, calibration.high))


def why_none(cfg: DictConfig, held: pd.DataFrame | None) -> str | None:
    """Why a run (or ensemble) of ``cfg`` with these held-out rows can have no interval; None when it can."""
    if cfg.protocol.name == "paper":
        return PAPER_REASON
    if held is None:
        return NO_FILE_REASON
    return None if crepes_available() else MISSING_REASON


def for_run(cfg: DictConfig, prep: Preprocessing, held: pd.DataFrame | None,
            ensemble: bool = False) -> tuple[Calibration | None, str | None]:
    """(calibration, None), or (None, why there is none), from a run's held-out predictions (calibration.csv's
    rows; for a seed ensemble its mean ``rul_pred`` and the runs' ``rul_spread``, in ``interval.ensemble_form``)."""
    reason = why_none(cfg, held)
    if reason:
        return None, reason
    interval = settings(cfg)
    points = calibration_points(held)
    spread = points["rul_spread"].to_numpy() if "rul_spread" in points else None
    return calibrate(points["rul_true"].to_numpy(), points["rul_pred"].to_numpy(),
                     interval.ensemble_form if ensemble else interval.form, interval.coverage,
                     edges_of(interval, prep), low=0.0, high=upper_limit(prep), spread=spread,
                     spread_floor=interval.spread_floor, groups=points["unit"].to_numpy(),
                     difficulty_floor=interval.difficulty_floor), None


def for_folds(cfg: DictConfig, prep: Preprocessing, out_of_fold: pd.DataFrame | None
              ) -> tuple[CrossConformal | None, str | None]:
    """CV+ from a K-fold ensemble's out-of-fold cut ends (grace_lit.ensemble.out_of_fold), or why none."""
    reason = why_none(cfg, out_of_fold)
    if reason:
        return None, reason
    points = calibration_points(out_of_fold)
    residuals = (points["rul_true"] - points["rul_pred"]).abs().to_numpy(np.float64)
    return CrossConformal(float(settings(cfg).coverage), residuals, points["fold"].to_numpy(), 0.0,
                          upper_limit(prep)), None


def from_run_dir(run_dir: Path, cfg: DictConfig, prep: Preprocessing) -> tuple[Calibration | None, str | None]:
    """A finished run's calibration, from its calibration.csv (no checkpoint needed)."""
    return for_run(cfg, prep, read_held_out(run_dir))


def summary_keys(calibration: Calibration | None, reason: str | None, predictions: pd.DataFrame | None,
                 edges: list[float], held: pd.DataFrame | None = None) -> dict[str, Any]:
    """metrics.json's interval keys: the calibration (``interval/...``: its bands too small to calibrate
    counted, the held-out units named) and the test set's empirical coverage and mean width, overall and per
    true-RUL band, and against the raw truth (``test/interval_...``, each named in :data:`COVERAGE_TRUTHS`);
    None without an interval."""
    out: dict[str, Any] = {"interval/form": None, "interval/nominal_coverage": None, "interval/half_widths": None,
                           "interval/calibration_points": None, "interval/uncalibrated_bands": None,
                           "interval/held_out_units": None, "interval/note": reason,
                           "interval/coverage_truths": COVERAGE_TRUTHS}
    keys = {**coverage_by_band([], [], [], edges), **raw_truth_coverage(pd.DataFrame(), None)}
    if held is not None:
        out["interval/held_out_units"] = pd.unique(held["unit"]).tolist()
    if calibration is not None:
        out.update({"interval/form": calibration.form, "interval/nominal_coverage": calibration.coverage,
                    "interval/half_widths": calibration.half_widths,
                    "interval/calibration_points": sum(calibration.points) + calibration.fit_points,
                    "interval/uncalibrated_bands": calibration.uncalibrated_bands()})
        if predictions is not None:
            keys = {**coverage_by_band(predictions["rul_true"], predictions["rul_lo"], predictions["rul_hi"], edges),
                    **raw_truth_coverage(predictions, calibration.high)}
    out.update({f"test/interval_{k}": v if calibration is not None else None for k, v in keys.items()})
    return out


def attach(cfg: DictConfig, prep: Preprocessing, summary: dict[str, Any], predictions: pd.DataFrame | None,
           held: pd.DataFrame | None) -> pd.DataFrame | None:
    """A finished run's test predictions with their intervals; ``summary`` (metrics.json) gains the interval
    keys, with ``interval/note`` saying why when there is no interval (the run's closing lines print it).
    ``held``: calibration.csv's rows, its units as the run's table names them."""
    if held is not None:  # calibrate on what calibration.csv holds (its text), as grace-predict does later: the
        held = pd.read_csv(io.StringIO(held.to_csv(index=False)))  # same intervals, digit for digit
    calibration, reason = for_run(cfg, prep, held)
    if predictions is not None:
        predictions = with_intervals(predictions, calibration)
    summary.update(summary_keys(calibration, reason, predictions, edges_of(settings(cfg), prep), held))
    return predictions


def held_out_band_gap(held: pd.DataFrame, cfg: DictConfig, prep: Preprocessing, ensemble: bool = False) -> float:
    """How the default form is chosen, on held-out units only: the units split in two halves (alternate units in
    sorted order; a unit's cuts stay together), each half calibrates the other as :func:`for_run` calibrates a
    run (``interval.form``, or ``ensemble_form`` for a seed ensemble's rows), and the gap is the mean distance of
    the per-band coverages from nominal over both directions."""
    interval, edges = settings(cfg), edges_of(settings(cfg), prep)
    points = calibration_points(held)
    first = split_units(points["unit"].to_numpy())
    gaps = []
    for fit, score in ((points[first], points[~first]), (points[~first], points[first])):
        calibration, _ = for_run(cfg, prep, fit, ensemble)
        spread = score["rul_spread"].to_numpy() if "rul_spread" in score else None
        covered = coverage_by_band(score["rul_true"], *calibration.interval(score["rul_pred"].to_numpy(), spread),
                                   edges)
        gaps += [abs(covered[f"coverage_rul{b}"] - interval.coverage) for b in band_labels(edges)
                 if covered[f"coverage_rul{b}"] is not None]
    return float(np.mean(gaps))
