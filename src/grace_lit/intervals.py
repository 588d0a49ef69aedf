"""Prediction intervals around RUL predictions, calibrated on held-out units (split conformal, via ``crepes``).

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
test set is measured, not assumed (``python -m grace_lit.intervals RUN_DIR ...``), and metrics.json records it.

**Forms** (conf/interval/): ``plain`` split conformal gives every prediction the same half-width, the
``coverage`` quantile of the calibration points' absolute residuals; ``mondrian`` does the same within each band
of *predicted* RUL (the bands are the health thresholds': below 30, 30-70, 70 and above), so the width follows
how hard each part of life is to predict; ``spread`` (seed ensembles) divides each residual by the runs'
standard deviation plus ``spread_floor`` and scales the interval back by it. The quantiles come from
``crepes.ConformalRegressor`` (its finite-sample rank: the floor((1 - coverage) (n + 1))-th largest score, one
rank more conservative where that product is an integer, as 1 - 0.9 rounds below 0.1 in floating point); a
band with too few calibration points for the coverage gets an unbounded interval, as crepes gives. Intervals are
clipped to the range the truth can take: [0, max_rul] when the evaluation truth is capped at max_rul.

``protocol=paper`` has no held-out units: its runs get no interval (empty columns and :data:`PAPER_REASON`),
never one calibrated on the test set it is scored on.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy.stats import binom

from grace_lit.data.preprocess import Preprocessing
from grace_lit.errors import GraceError

log = logging.getLogger("grace_lit")

DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "interval" / "default.yaml"
FORMS = ("plain", "mondrian", "spread")
COLUMNS = ("rul_lo", "rul_hi", "coverage")
SAMPLING_RANGE = 0.95  # calibrated_95: the share of exactly calibrated intervals' test coverages it spans
MISSING_REASON = ("no interval: crepes (with scikit-learn, which it imports) is not installed. Fix: pip install "
                  "crepes scikit-learn (both are dependencies of grace-lit; a hand-made environment may lack them).")
PAPER_REASON = ("no interval: protocol=paper has no held-out units, and an interval calibrated on the test set "
                "would be scored on the points it was fitted to. Fix: train with protocol=holdout (its held-out "
                "units' cut ends calibrate the interval).")


@dataclass
class Calibration:
    """What reproduces an interval from a prediction (also the ONNX contract's ``interval``): band
    b = the number of ``edges`` <= rul_pred (``mondrian``; one band otherwise), half = ``half_widths[b]`` (None:
    unbounded), times (spread + ``spread_floor``) for ``spread``; the interval is
    [clip(rul_pred - half), clip(rul_pred + half)] with clip to [``low``, ``high``] (``high`` None: no upper
    bound)."""

    form: str
    coverage: float
    edges: list[float]
    half_widths: list[float | None]
    points: list[int]  # calibration points per band
    low: float
    high: float | None
    spread_floor: float = 0.0

    def band(self, rul_pred: np.ndarray) -> np.ndarray:
        rul_pred = np.asarray(rul_pred, dtype=np.float64)
        if self.form != "mondrian":
            return np.zeros(len(rul_pred), dtype=np.int64)
        return np.searchsorted(np.asarray(self.edges, dtype=np.float64), rul_pred, side="right")

    def interval(self, rul_pred: np.ndarray, spread: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        rul_pred = np.asarray(rul_pred, dtype=np.float64)
        half = np.array([np.inf if h is None else h for h in self.half_widths])[self.band(rul_pred)]
        if self.form == "spread":
            if spread is None:
                raise GraceError("interval form 'spread' needs the spread of a seed ensemble. Fix: pass several "
                                 "runs to grace-predict, or use interval.form=plain or mondrian.")
            half = half * (np.asarray(spread, dtype=np.float64) + self.spread_floor)
        high = np.inf if self.high is None else self.high
        return np.clip(rul_pred - half, self.low, high), np.clip(rul_pred + half, self.low, high)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        return cls(**values)


def settings(cfg: DictConfig) -> DictConfig:
    """The run's ``interval`` config; conf/interval/default.yaml for a run composed before it existed."""
    node = cfg.get("interval")
    return node if node is not None else OmegaConf.load(DEFAULTS)


def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad ``interval`` config before training (the interval is calibrated after it)."""
    interval = settings(cfg)
    if interval.form not in FORMS[:2]:
        raise GraceError(f"interval.form={interval.form!r} is not one of {FORMS[:2]} (a single run has no spread). "
                         f"Fix: interval.form=mondrian, or set interval.ensemble_form for grace-predict ensembles.")
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
    bands = interval.bands
    if bands is not None and (not len(bands) or list(bands) != sorted(set(bands))):
        raise GraceError(f"interval.bands={list(bands)} must be increasing RUL edges. Fix: e.g. "
                         f"interval.bands=[30,70], or null for the dataset's health_thresholds.")


def edges_of(interval: DictConfig, prep: Preprocessing) -> list[float]:
    return [float(e) for e in (interval.bands if interval.bands is not None else prep.health_thresholds)]


def calibration_points(held: pd.DataFrame) -> pd.DataFrame:
    """The rows of calibration.csv that calibrate: each cut's last window (module docstring: why)."""
    return held[held["is_last"].astype(bool)]


def crepes_available() -> bool:
    """Imported where used: a machine without it (the GPU machine of BENCHMARKS.md) still trains, without
    intervals, and says why."""
    try:
        import crepes  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def calibrate(rul_true: np.ndarray, rul_pred: np.ndarray, form: str, coverage: float, edges: list[float],
              low: float, high: float | None, spread: np.ndarray | None = None,
              spread_floor: float = 0.0) -> Calibration:
    """Half-widths from crepes' ConformalRegressor fitted on the residuals rul_true - rul_pred."""
    if form not in FORMS:
        raise GraceError(f"interval.form={form!r} is not one of {FORMS}.")
    if not 0 < coverage < 1:
        raise GraceError(f"interval.coverage={coverage} must lie in (0, 1). Fix: e.g. interval.coverage=0.9.")
    rul_true, rul_pred = np.asarray(rul_true, dtype=np.float64), np.asarray(rul_pred, dtype=np.float64)
    calibration = Calibration(form, float(coverage), [float(e) for e in edges] if form == "mondrian" else [], [],
                              [], float(low), None if high is None else float(high), float(spread_floor))
    residuals = rul_true - rul_pred
    sigmas = None
    if form == "spread":
        if spread is None:
            raise GraceError("interval form 'spread' needs the spread of a seed ensemble. Fix: pass several runs "
                             "to grace-predict, or use interval.ensemble_form=plain or mondrian.")
        sigmas = np.asarray(spread, dtype=np.float64) + spread_floor
    from crepes import ConformalRegressor  # noqa: PLC0415 (crepes_available)

    bins = calibration.band(rul_pred)
    regressor = ConformalRegressor()
    with warnings.catch_warnings():  # crepes warns when a band is too small: its interval is then unbounded
        warnings.simplefilter("ignore")
        if form == "mondrian":
            regressor.fit(residuals, bins=bins)
        else:
            regressor.fit(residuals, sigmas=sigmas)
        for b in range(len(calibration.edges) + 1):
            n = int((bins == b).sum())
            half = np.inf
            if n:
                kwargs = {"bins": np.array([b])} if form == "mondrian" else {}
                if form == "spread":
                    kwargs["sigmas"] = np.ones(1)
                half = float(regressor.predict_int(np.zeros(1), confidence=coverage, **kwargs)[0, 1])
            calibration.half_widths.append(None if not np.isfinite(half) else half)
            calibration.points.append(n)
    return calibration


def band_labels(edges: list[float]) -> list[str]:
    """``[30, 70]`` -> ``['<30', '30-70', '>=70']``."""
    if not edges:
        return []
    inner = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{edges[0]:g}", *inner, f">={edges[-1]:g}"]


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


def with_intervals(frame: pd.DataFrame, calibration: Calibration | None,
                   spread: np.ndarray | None = None) -> pd.DataFrame:
    """``frame`` (a ``rul_pred`` column) with rul_lo, rul_hi and the coverage they were calibrated for; empty
    cells without a calibration."""
    if calibration is None:
        return frame.assign(**{c: np.nan for c in COLUMNS})
    lo, hi = calibration.interval(frame["rul_pred"].to_numpy(), spread)
    return frame.assign(rul_lo=lo, rul_hi=hi, coverage=calibration.coverage)


def for_run(cfg: DictConfig, prep: Preprocessing, held: pd.DataFrame | None,
            ensemble: bool = False) -> tuple[Calibration | None, str | None]:
    """(calibration, None), or (None, why there is none), from a run's held-out predictions (calibration.csv's
    rows; for an ensemble its mean ``rul_pred`` and the runs' ``rul_spread``, in ``interval.ensemble_form``)."""
    if cfg.protocol.name == "paper":
        return None, PAPER_REASON
    if held is None:
        return None, ("no interval: the run has no calibration.csv (its held-out units' predictions; runs trained "
                      "before intervals existed lack it). Fix: train the run again with protocol=holdout.")
    if not crepes_available():
        return None, MISSING_REASON
    interval = settings(cfg)
    points = calibration_points(held)
    spread = points["rul_spread"].to_numpy() if "rul_spread" in points else None
    return calibrate(points["rul_true"].to_numpy(), points["rul_pred"].to_numpy(),
                     interval.ensemble_form if ensemble else interval.form, interval.coverage,
                     edges_of(interval, prep), low=0.0, high=prep.max_rul if prep.cap_test_rul else None,
                     spread=spread, spread_floor=interval.spread_floor), None


def read_held_out(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "calibration.csv"
    return pd.read_csv(path) if path.is_file() else None


def from_run_dir(run_dir: Path, cfg: DictConfig, prep: Preprocessing) -> tuple[Calibration | None, str | None]:
    """A finished run's calibration, from its calibration.csv (no checkpoint needed)."""
    return for_run(cfg, prep, read_held_out(run_dir))


# ------------------------------------------------------------------ seed ensembles
SPLIT_KEYS = ("protocol.name", "dataset.name", "data.split_seed", "protocol.holdout_fraction", "protocol.folds",
              "protocol.fold", "protocol.val_cuts", "interval.calibration_cuts")
LOCAL_KEYS = ("data_dir", "cache_dir")  # where a machine keeps the files, not what they are


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ensemble_difference(runs: list[tuple[Path, DictConfig, dict[str, Any]]]) -> str | None:
    """The first setting that two of ``runs`` (directory, config, preprocessing.json as read) do not share: split,
    then dataset, then fitted preprocessing, as a message naming it; None when an ensemble of them is sound. A
    dataset or preprocessing key that only one of two runs records (one written before the key existed) is not
    compared."""
    def fields(cfg: DictConfig, prep: dict[str, Any]) -> dict[str, Any]:
        out = {key: OmegaConf.select(cfg, key) for key in SPLIT_KEYS}
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        out.update({f"dataset.{k}": v for k, v in dataset.items() if k not in LOCAL_KEYS})
        out.update({f"preprocessing.{k}": v for k, v in prep.items()})
        return out

    (first, _, _), reference = runs[0], fields(runs[0][1], runs[0][2])
    for other, cfg, prep in runs[1:]:
        theirs = fields(cfg, prep)
        for key in dict.fromkeys([*reference, *theirs]):
            if key not in SPLIT_KEYS and (key not in reference or key not in theirs):
                continue
            if reference.get(key) != theirs.get(key):
                return (f"runs {first} and {other} differ in {key} ({_shown(reference.get(key))} vs "
                        f"{_shown(theirs.get(key))}): an ensemble averages runs that share preprocessing, features "
                        f"and split, and is calibrated on the held-out units they share. Fix: pass runs that differ "
                        f"only in seed (e.g. one sweep over seed=... with data.split_seed fixed).")
    return None


def ensemble_runs(run_dirs: list[Path]) -> list[tuple[Path, DictConfig, dict[str, Any]]]:
    """Each run's (directory, config, preprocessing.json); refused unless an ensemble of them is sound."""
    from grace_lit.predict import load_preprocessing  # noqa: PLC0415 (predict imports this module)
    from grace_lit.replay import load_run_config  # noqa: PLC0415

    runs = []
    for d in run_dirs:
        load_preprocessing(d)  # the message for a run without one
        runs.append((d, load_run_config(d), json.loads((d / "preprocessing.json").read_text())))
    difference = ensemble_difference(runs)
    if difference:
        raise GraceError(difference)
    return runs


def ensemble_held_out(run_dirs: list[Path]) -> pd.DataFrame | None:
    """The runs' calibration.csv rows averaged: rul_pred their mean, rul_spread their standard deviation
    (ddof=1); None when a run has none."""
    frames = [read_held_out(d) for d in run_dirs]
    if any(f is None for f in frames):
        return None
    keys = ["unit", "cut", "row", "rul_true", "is_last"]
    first = frames[0]
    for d, frame in zip(run_dirs[1:], frames[1:]):
        if len(frame) != len(first) or not frame[keys].astype(str).equals(first[keys].astype(str)):
            raise GraceError(f"runs {run_dirs[0]} and {d} hold out different windows (calibration.csv). Fix: pass "
                             f"runs that share data.split_seed and protocol settings.")
    preds = np.stack([f["rul_pred"].to_numpy(dtype=np.float64) for f in frames])
    return first[keys].assign(rul_pred=preds.mean(axis=0), rul_spread=preds.std(axis=0, ddof=1))


def summary_keys(calibration: Calibration | None, reason: str | None, predictions: pd.DataFrame | None,
                 edges: list[float]) -> dict[str, Any]:
    """metrics.json's interval keys: the calibration (``interval/...``) and the test set's empirical coverage
    and mean width, overall and per true-RUL band (``test/interval_...``); None without an interval."""
    out: dict[str, Any] = {"interval/form": None, "interval/coverage": None, "interval/half_widths": None,
                           "interval/calibration_points": None, "interval/note": reason}
    keys = coverage_by_band([], [], [], edges)
    if calibration is not None:
        out.update({"interval/form": calibration.form, "interval/coverage": calibration.coverage,
                    "interval/half_widths": calibration.half_widths,
                    "interval/calibration_points": sum(calibration.points)})
        if predictions is not None:
            keys = coverage_by_band(predictions["rul_true"], predictions["rul_lo"], predictions["rul_hi"], edges)
    out.update({f"test/interval_{k}": v if calibration is not None else None for k, v in keys.items()})
    return out


def attach(cfg: DictConfig, prep: Preprocessing, summary: dict[str, Any], predictions: pd.DataFrame | None,
           held: pd.DataFrame | None) -> pd.DataFrame | None:
    """A finished run's test predictions with their intervals; ``summary`` (metrics.json) gains the interval
    keys, with ``interval/note`` saying why when there is no interval (the run's closing lines print it)."""
    if held is not None:  # calibrate on what calibration.csv holds (its text), as grace-predict does later: the
        held = pd.read_csv(io.StringIO(held.to_csv(index=False)))  # same intervals, digit for digit
    calibration, reason = for_run(cfg, prep, held)
    if predictions is not None:
        predictions = with_intervals(predictions, calibration)
    summary.update(summary_keys(calibration, reason, predictions, edges_of(settings(cfg), prep)))
    return predictions


# ------------------------------------------------------------------ measurement
def held_out_band_gap(held: pd.DataFrame, cfg: DictConfig, prep: Preprocessing, ensemble: bool = False) -> float:
    """How the default form is chosen, on held-out units only: the units split in two halves (alternate units in
    sorted order; a unit's cuts stay together), each half calibrates the other as :func:`for_run` calibrates a
    run (``interval.form``, or ``ensemble_form`` for a seed ensemble's rows), and the gap is the mean distance of
    the per-band coverages from nominal over both directions."""
    interval, edges = settings(cfg), edges_of(settings(cfg), prep)
    points = calibration_points(held)
    first = points["unit"].isin(np.sort(points["unit"].unique())[::2])
    gaps = []
    for fit, score in ((points[first], points[~first]), (points[~first], points[first])):
        calibration, _ = for_run(cfg, prep, fit, ensemble)
        spread = score["rul_spread"].to_numpy() if "rul_spread" in score else None
        covered = coverage_by_band(score["rul_true"], *calibration.interval(score["rul_pred"].to_numpy(), spread),
                                   edges)
        gaps += [abs(covered[f"coverage_rul{b}"] - interval.coverage) for b in band_labels(edges)
                 if covered[f"coverage_rul{b}"] is not None]
    return float(np.mean(gaps))


def measure(run_dir: Path, forms: tuple[str, ...] = ("plain", "mondrian")) -> list[dict[str, Any]]:
    """Test-set coverage and width of each form for one finished holdout run, from its files alone
    (calibration.csv, predictions.csv, preprocessing.json, .hydra/config.yaml)."""
    from grace_lit.predict import load_preprocessing  # noqa: PLC0415 (predict imports this module)
    from grace_lit.replay import load_run_config  # noqa: PLC0415

    cfg, prep = load_run_config(run_dir), load_preprocessing(run_dir)
    path = run_dir / "calibration.csv"
    if not path.is_file():
        raise GraceError(f"{path} is missing. Fix: pass protocol=holdout runs trained since runs write it.")
    held, test = pd.read_csv(path), pd.read_csv(run_dir / "predictions.csv")
    edges = edges_of(settings(cfg), prep)
    rows = []
    for form in forms:
        with_form = OmegaConf.merge(cfg, {"interval": {**OmegaConf.to_container(settings(cfg)), "form": form}})
        calibration, _ = for_run(with_form, prep, held)
        lo, hi = calibration.interval(test["rul_pred"].to_numpy())
        rows.append({"run": str(run_dir), "dataset": cfg.dataset.name, "seed": cfg.seed, "form": form,
                     "nominal": calibration.coverage, "calibration_points": sum(calibration.points),
                     "held_out_gap": held_out_band_gap(held, with_form, prep),
                     **coverage_by_band(test["rul_true"], lo, hi, edges)})
    return rows


def measure_ensemble(run_dirs: list[Path], forms: tuple[str, ...] = ("plain", "mondrian", "spread")
                     ) -> list[dict[str, Any]]:
    """As :func:`measure` for the seed ensemble of ``run_dirs`` (their predictions.csv and calibration.csv
    averaged; refused unless they share preprocessing, features and split)."""
    from grace_lit.predict import load_preprocessing  # noqa: PLC0415
    from grace_lit.replay import load_run_config  # noqa: PLC0415

    runs = ensemble_runs(run_dirs)
    cfg, prep = runs[0][1], load_preprocessing(run_dirs[0])
    held = ensemble_held_out(run_dirs)
    tests = [pd.read_csv(d / "predictions.csv") for d in run_dirs]
    preds = np.stack([t["rul_pred"].to_numpy(dtype=np.float64) for t in tests])
    rul_pred, spread = preds.mean(axis=0), preds.std(axis=0, ddof=1)
    edges = edges_of(settings(cfg), prep)
    rows = []
    for form in forms:
        with_form = OmegaConf.merge(cfg, {"interval": {**OmegaConf.to_container(settings(cfg)),
                                                       "ensemble_form": form}})
        calibration, _ = for_run(with_form, prep, held, ensemble=True)
        lo, hi = calibration.interval(rul_pred, spread)
        rows.append({"run": ",".join(map(str, run_dirs)), "dataset": cfg.dataset.name,
                     "seed": f"mean of {len(run_dirs)}", "form": form, "nominal": calibration.coverage,
                     "calibration_points": sum(calibration.points),
                     "held_out_gap": held_out_band_gap(held, with_form, prep, ensemble=True),
                     **coverage_by_band(tests[0]["rul_true"], lo, hi, edges)})
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m grace_lit.intervals RUN_DIR [RUN_DIR ...] [--ensemble] [--json FILE]``: per run and form,
    then per dataset and form (mean over runs), the test set's coverage and mean width overall and per true-RUL
    band; ``--ensemble`` adds each dataset's runs averaged as one seed ensemble (plain, mondrian, spread)."""
    parser = argparse.ArgumentParser(prog="python -m grace_lit.intervals", description=main.__doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+", help="finished protocol=holdout run directories")
    parser.add_argument("--forms", default="plain,mondrian", help="comma-separated forms (default plain,mondrian)")
    parser.add_argument("--ensemble", action="store_true", help="also each dataset's runs as one seed ensemble")
    parser.add_argument("--json", type=Path, help="also write the per-run rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = [row for d in args.run_dirs for row in measure(d, tuple(args.forms.split(",")))]
        if args.ensemble:
            by_dataset: dict[str, list[Path]] = {}
            for row in rows:
                by_dataset.setdefault(row["dataset"], [])
                if Path(row["run"]) not in by_dataset[row["dataset"]]:
                    by_dataset[row["dataset"]].append(Path(row["run"]))
            rows += [row for dirs in by_dataset.values() if len(dirs) > 1 for row in measure_ensemble(dirs)]
    except GraceError as err:
        log.error("ERROR %s", err)
        raise SystemExit(1) from None
    table = pd.DataFrame(rows)
    bands = [c for c in table.columns if c.startswith("coverage_rul")]
    # the mean distance of the per-band coverage from nominal: on the test set reported, on the held-out units
    # (held_out_gap) what chooses the default form (docs/intervals.md)
    table["band_gap"] = (table[bands].sub(table["nominal"], axis=0)).abs().mean(axis=1)
    # the test set's own sampling error: the coverage an exactly calibrated interval shows on this many units
    table["units"] = table[[c for c in table.columns if c.startswith("n_rul")]].sum(axis=1)
    tail = (1 - SAMPLING_RANGE) / 2
    low, high = (binom.ppf(q, table["units"], table["nominal"]) / table["units"] for q in (tail, 1 - tail))
    table["calibrated_95"] = [f"{a:.2f}-{b:.2f}" for a, b in zip(low, high)]
    shown = [c for c in table.columns if c.startswith(("coverage", "width"))] + ["band_gap", "held_out_gap"]
    pd.set_option("display.width", 200)
    print(table[["dataset", "seed", "form", "calibration_points", *shown]].round(3).to_string(index=False))
    single = table[~table["seed"].astype(str).str.startswith("mean of")]
    by = single.groupby(["dataset", "form"])
    mean = by[shown].mean().round(3)
    mean.insert(0, "runs", by.size())
    mean["calibrated_95"] = by["calibrated_95"].first()
    print("\nmean over runs (calibrated_95: where 95% of exactly calibrated intervals' test coverage falls, on this "
          "many test units):\n" + mean.to_string())
    for label, column in (("the test sets (reported, chooses nothing)", "band_gap"),
                          ("held-out units (chooses the default form)", "held_out_gap")):
        print(f"\nband gap on {label}, every run and subset: " + ", ".join(
            f"{form} {gap:.3f}" for form, gap in single.groupby("form")[column].mean().sort_values().items()))
    if args.json:
        from grace_lit.io import atomic_write_json  # noqa: PLC0415

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
