"""The conformal core: calibration objects and forms, from residuals alone (no run directories, no Lightning).

**Forms.** ``plain`` split conformal gives every prediction the same half-width, the ``coverage`` quantile of
the calibration points' absolute residuals; ``mondrian`` does the same within each band of *predicted* RUL, so
the width follows how hard each part of life is to predict, but jumps at the band edges (a higher prediction
can get a lower lower bound); ``monotone`` is normalised conformal with a difficulty that is a non-decreasing
function of the prediction (isotonic regression of the absolute residual on it, fitted on one half of the
calibration units, the normalised scores calibrated on the other half, so no point both fits and calibrates),
its half-width made to rise by at most one cycle per cycle of prediction (only ever widening), so both bounds
are non-decreasing in the prediction; ``spread`` (seed ensembles) divides each residual by the runs' standard
deviation plus ``spread_floor``. The quantiles come from ``crepes.ConformalRegressor`` (its finite-sample rank:
the floor((1 - coverage) (n + 1))-th largest score, one rank more conservative where that product is an
integer, as 1 - 0.9 rounds below 0.1 in floating point); a band with too few points for the coverage gets an
unbounded interval, as crepes gives, and a warning. :class:`CrossConformal` is CV+ (Barber et al. 2021,
"Predictive inference with the jackknife+") for a K-fold ensemble: every unit calibrates, scored by the one fold
model that never trained on it.

Intervals are clipped to the range the truth can take: [0, max_rul] when the evaluation truth is capped at
max_rul. An interval whose upper end reaches that cap is open: it says "RUL >= rul_lo" (``rul_hi_open``).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from grace_lit.errors import GraceError

log = logging.getLogger("grace_lit")

FORMS = ("plain", "mondrian", "monotone", "spread")
RUN_FORMS = FORMS[:3]  # a single run has no spread
COLUMNS = ("rul_lo", "rul_hi", "rul_hi_open", "nominal_coverage")


@dataclass
class Calibration:
    """What reproduces an interval from a prediction (also the ONNX contract's ``interval``): band
    b = the number of ``edges`` <= rul_pred (``mondrian``; one band otherwise), half = ``half_widths[b]`` (None:
    unbounded), times (spread + ``spread_floor``) for ``spread``; for ``monotone`` (when half_widths[0] is not
    None) half = the linear interpolation of ``knot_half_widths`` at rul_pred over ``knots`` (constant beyond
    them); the interval is [clip(rul_pred - half), clip(rul_pred + half)] with clip to [``low``, ``high``]
    (``high`` None: no upper bound)."""

    form: str
    coverage: float
    edges: list[float]
    half_widths: list[float | None]  # monotone: the normalised scores' quantile
    points: list[int]  # calibration points per band (monotone: those the quantile was taken over)
    low: float
    high: float | None
    spread_floor: float = 0.0
    knots: list[float] = field(default_factory=list)  # monotone: predicted RUL at the difficulty's knots
    knot_half_widths: list[float] = field(default_factory=list)  # monotone: the half-width at each knot
    fit_points: int = 0  # monotone: the points the difficulty was fitted on (not calibrated on)

    def band(self, rul_pred: np.ndarray) -> np.ndarray:
        rul_pred = np.asarray(rul_pred, dtype=np.float64)
        if self.form != "mondrian":
            return np.zeros(len(rul_pred), dtype=np.int64)
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), rul_pred, side="right")

    def half_width(self, rul_pred: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
        rul_pred = np.asarray(rul_pred, dtype=np.float64)
        half = np.array([np.inf if h is None else h for h in self.half_widths])[self.band(rul_pred)]
        if self.form == "monotone" and self.half_widths[0] is not None:
            half = np.interp(rul_pred, self.knots, self.knot_half_widths)
        if self.form == "spread":
            if spread is None:
                raise GraceError("interval form 'spread' needs the spread of a seed ensemble. Fix: pass several "
                                 "runs to grace-predict, or use interval.form=plain, mondrian or monotone.")
            half = half * (np.asarray(spread, dtype=np.float64) + self.spread_floor)
        return half

    def interval(self, rul_pred: np.ndarray, spread: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        rul_pred = np.asarray(rul_pred, dtype=np.float64)
        half = self.half_width(rul_pred, spread)
        return clip(rul_pred - half, self.low, self.high), clip(rul_pred + half, self.low, self.high)

    def unbounded(self, rul_pred: np.ndarray) -> np.ndarray:
        """Which predictions fall in a band too small to calibrate (their interval is the whole range)."""
        bounded = np.array([h is not None for h in self.half_widths])
        return ~bounded[self.band(rul_pred)]

    def uncalibrated_bands(self) -> int:
        return sum(h is None for h in self.half_widths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        return cls(**values)


def clip(values: np.ndarray, low: float, high: float | None) -> np.ndarray:
    return np.clip(values, low, np.inf if high is None else high)


def band_labels(edges: list[float]) -> list[str]:
    """``[30, 70]`` -> ``['<30', '30-70', '>=70']``."""
    if not edges:
        return []
    inner = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{edges[0]:g}", *inner, f">={edges[-1]:g}"]


def conformal_quantile(scores: np.ndarray, coverage: float) -> float | None:
    """crepes' rank of the non-negative ``scores`` (module docstring); None when too few for ``coverage``."""
    from crepes import ConformalRegressor  # noqa: PLC0415 (grace_lit.calibration.crepes_available)

    if not len(scores):
        return None
    with warnings.catch_warnings():  # crepes warns when too few points: calibrate() says so, naming the band
        warnings.simplefilter("ignore")
        half = float(ConformalRegressor().fit(np.asarray(scores, dtype=np.float64)).predict_int(
            np.zeros(1), confidence=coverage)[0, 1])
    return half if np.isfinite(half) else None


def monotone_difficulty(rul_pred: np.ndarray, abs_residual: np.ndarray, floor: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(knots, difficulty): the isotonic (non-decreasing) regression of the absolute residual on the prediction,
    at least ``floor`` (a stretch fitted as zero error would otherwise give zero width)."""
    from sklearn.isotonic import IsotonicRegression  # noqa: PLC0415 (crepes needs scikit-learn too)

    fit = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(rul_pred, abs_residual)
    return fit.X_thresholds_.astype(np.float64), np.maximum(fit.y_thresholds_.astype(np.float64), floor)


def slope_limited(knots: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least widening of the piecewise-linear ``half`` (non-decreasing, given at ``knots``) that never rises
    faster than one cycle per cycle, so that rul_pred - half never decreases as rul_pred grows (rul_pred + half
    never does while half rises): at p, the largest half(p') - (p' - p) over p' >= p. Returned as knots and
    values again, with a knot added where a segment of ``half`` meets the limit."""
    level = half[-1] - knots[-1]  # the largest half(p') - p' right of the current knot
    out_knots, out_half = [knots[-1]], [half[-1]]
    for k in range(len(knots) - 2, -1, -1):
        own = half[k] - knots[k]
        if own > level:  # half - p falls through the level inside this segment: a new knot where they meet
            crossing = knots[k] + (own - level) / (own - (half[k + 1] - knots[k + 1])) * (knots[k + 1] - knots[k])
            if knots[k] < crossing < knots[k + 1]:
                out_knots.append(crossing)
                out_half.append(level + crossing)
            level = own
        out_knots.append(knots[k])
        out_half.append(level + knots[k])
    return np.array(out_knots[::-1]), np.array(out_half[::-1])


def split_units(groups: np.ndarray) -> np.ndarray:
    """True for the points of alternate units in sorted order (a unit's points stay together)."""
    units = np.unique(groups)
    return np.isin(groups, units[::2])


def calibrate(rul_true: np.ndarray, rul_pred: np.ndarray, form: str, coverage: float, edges: list[float],
              low: float, high: float | None, spread: np.ndarray | None = None, spread_floor: float = 0.0,
              groups: np.ndarray | None = None, difficulty_floor: float = 0.0) -> Calibration:
    """Half-widths from crepes' ConformalRegressor fitted on the residuals rul_true - rul_pred; ``groups`` (the
    unit of each point) splits the monotone form's points into the half that fits the difficulty and the half
    that calibrates. A band too small for the coverage is logged as a warning."""
    if form not in FORMS:
        raise GraceError(f"interval.form={form!r} is not one of {FORMS}.")
    if not 0 < coverage < 1:
        raise GraceError(f"interval.coverage={coverage} must lie in (0, 1). Fix: e.g. interval.coverage=0.9.")
    rul_true, rul_pred = np.asarray(rul_true, dtype=np.float64), np.asarray(rul_pred, dtype=np.float64)
    calibration = Calibration(form, float(coverage), [float(e) for e in edges] if form == "mondrian" else [], [],
                              [], float(low), None if high is None else float(high), float(spread_floor))
    scores = np.abs(rul_true - rul_pred)
    if form == "spread":
        if spread is None:
            raise GraceError("interval form 'spread' needs the spread of a seed ensemble. Fix: pass several runs "
                             "to grace-predict, or use interval.ensemble_form=plain, mondrian or monotone.")
        scores = scores / (np.asarray(spread, dtype=np.float64) + spread_floor)
    if form == "monotone":
        if difficulty_floor <= 0:
            raise GraceError(f"interval.difficulty_floor={difficulty_floor} must be > 0 for the monotone form (a "
                             f"difficulty of zero gives zero width). Fix: e.g. interval.difficulty_floor=1.0.")
        if groups is None or len(np.unique(groups)) < 2:
            raise GraceError("interval form 'monotone' fits its difficulty on half of the calibration units and "
                             "calibrates on the other half, so it needs points of two units or more. Fix: more "
                             "held-out units (protocol.holdout_fraction), or interval.form=plain.")
        fit = split_units(np.asarray(groups))
        knots, difficulty = monotone_difficulty(rul_pred[fit], scores[fit], difficulty_floor)
        scores = scores[~fit] / np.interp(rul_pred[~fit], knots, difficulty)
        calibration.fit_points = int(fit.sum())
        quantile = conformal_quantile(scores, coverage)
        if quantile is not None:
            limited = slope_limited(knots, quantile * difficulty)
            calibration.knots, calibration.knot_half_widths = limited[0].tolist(), limited[1].tolist()
        calibration.half_widths, calibration.points = [quantile], [len(scores)]
    else:
        bins = calibration.band(rul_pred)
        for b in range(len(calibration.edges) + 1):
            calibration.half_widths.append(conformal_quantile(scores[bins == b], coverage))
            calibration.points.append(int((bins == b).sum()))
    labels = band_labels(calibration.edges) or ["all predictions"]
    for label, half, n in zip(labels, calibration.half_widths, calibration.points):
        if half is None:
            log.warning("WARNING interval (%s): %s has %d calibration points, too few for a %.0f%% interval: its "
                        "intervals are unbounded, [%g, %s]. Fix: more held-out cut ends "
                        "(interval.calibration_cuts) or wider bands (interval.bands).", form,
                        f"band {label}" if form == "mondrian" else label, n, 100 * coverage, low,
                        "no upper bound" if high is None else f"{high:g}")
    return calibration


@dataclass
class CrossConformal:
    """CV+ (Barber et al. 2021): point i, of ``fold`` k(i), has the out-of-fold residual R_i = |y_i - mu_-k(i)
    (x_i)|; a new point x gets [the floor(alpha (n + 1))-th smallest of mu_-k(i)(x) - R_i, the
    ceil((1 - alpha)(n + 1))-th smallest of mu_-k(i)(x) + R_i], alpha = 1 - ``coverage``, mu_-k the model of the
    fold that held k out (unbounded where n is too small for the rank), clipped to [``low``, ``high``]."""

    coverage: float
    residuals: np.ndarray  # (n,) absolute out-of-fold residuals
    fold: np.ndarray  # (n,) the fold (0..K-1) whose model scored each point
    low: float
    high: float | None
    form: str = "cv+"

    @property
    def points(self) -> list[int]:
        return [len(self.residuals)]

    def interval(self, fold_predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``fold_predictions``: (K, m), each fold model's prediction of the m new points."""
        per_point = np.asarray(fold_predictions, dtype=np.float64)[self.fold]  # (n, m): mu_-k(i)(x)
        n = len(self.residuals)
        # floor(alpha (n + 1)) = n + 1 - ceil((1 - alpha)(n + 1)), from the coverage itself: 1 - 0.9 would round
        # below 0.1 and take a rank lower where alpha (n + 1) is an integer (as MAPIE does not)
        high_rank = math.ceil(self.coverage * (n + 1))
        low_rank = n + 1 - high_rank
        lower = np.sort(per_point - self.residuals[:, None], axis=0)
        upper = np.sort(per_point + self.residuals[:, None], axis=0)
        lo = lower[low_rank - 1] if low_rank >= 1 else np.full(per_point.shape[1], -np.inf)
        hi = upper[high_rank - 1] if high_rank <= n else np.full(per_point.shape[1], np.inf)
        return clip(lo, self.low, self.high), clip(hi, self.low, self.high)


def interval_columns(lo: np.ndarray, hi: np.ndarray, coverage: float, high: float | None) -> dict[str, Any]:
    """rul_lo, rul_hi, rul_hi_open (the upper end reaches the cap or is unbounded: the interval means
    "RUL >= rul_lo") and the coverage the interval was calibrated for (nominal, not measured)."""
    hi = np.asarray(hi, dtype=np.float64)
    is_open = ~np.isfinite(hi) if high is None else hi >= high
    return {"rul_lo": lo, "rul_hi": hi, "rul_hi_open": is_open, "nominal_coverage": coverage}


def coverage_by_band(rul_true: np.ndarray, lo: np.ndarray, hi: np.ndarray, edges: list[float]) -> dict[str, Any]:
    """Empirical coverage and mean width, overall and per band of *true* RUL: keys ``coverage``, ``width``,
    ``coverage_rul<30``, ``width_rul<30``, ``n_rul<30``, ... (None for an empty band, and for the width of one
    holding an unbounded interval: JSON has no infinity)."""
    rul_true, lo, hi = (np.asarray(a, dtype=np.float64) for a in (rul_true, lo, hi))
    inside, width = (lo <= rul_true) & (rul_true <= hi), hi - lo

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if len(values) and np.isfinite(values).all() else None

    out: dict[str, Any] = {"coverage": mean(inside), "width": mean(width)}
    bands = np.searchsorted(np.asarray(edges, dtype=np.float64), rul_true, side="right")
    for b, label in enumerate(band_labels(edges)):
        mask = bands == b
        out[f"coverage_rul{label}"], out[f"width_rul{label}"] = mean(inside[mask]), mean(width[mask])
        out[f"n_rul{label}"] = int(mask.sum())
    return out


def raw_truth_coverage(frame: pd.DataFrame, cap: float | None) -> dict[str, Any]:
    """The coverage of ``frame``'s intervals (rul_lo, rul_hi) against the raw truth (``rul_true_raw``, never
    capped), and on the units whose raw truth is at most ``cap`` (where capping changes nothing), with their
    count; None without a raw truth."""
    keys = ("coverage_raw_truth", "coverage_raw_le_cap", "n_raw_le_cap")
    if "rul_true_raw" not in frame:
        return dict.fromkeys(keys)
    raw = frame["rul_true_raw"].to_numpy(np.float64)
    inside = (frame["rul_lo"].to_numpy(np.float64) <= raw) & (raw <= frame["rul_hi"].to_numpy(np.float64))
    below = raw <= (np.inf if cap is None else cap)
    return dict(zip(keys, (float(inside.mean()), float(inside[below].mean()) if below.any() else None,
                           int(below.sum()))))
