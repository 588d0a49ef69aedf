"""Prediction intervals (grace_lit.conformal, grace_lit.calibration, grace_lit.ensemble, the study CLI
grace_lit.intervals): coverage on data with known heteroscedastic noise for every form, the adaptive forms'
per-band coverage, the calibration equal to crepes' own intervals, the monotone form's bounds that never fall as
the prediction rises, CV+ equal to MAPIE's, no interval for protocol=paper, the three coverages of metrics.json,
and ensembles refused with the setting their runs do not share."""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from crepes import ConformalRegressor
from omegaconf import OmegaConf

from conftest import REPO, composed
from grace_lit.data.preprocess import Preprocessing
from grace_lit.errors import GraceError
from grace_lit.calibration import (MISSING_REASON, PAPER_REASON, check_settings, for_run, held_out_band_gap,
                                   summary_keys, with_intervals)
from grace_lit.conformal import COLUMNS, Calibration, calibrate, coverage_by_band
from grace_lit.ensemble import ensemble_difference, seed_held_out
from grace_lit.intervals import main as intervals_main

EDGES = [30.0, 70.0]
NOMINAL = 0.9
FLOOR = 1.0  # interval.difficulty_floor's default


def heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True RUL uniform on [0, 125]; the prediction's error has sd 2 below 30, 8 in 30-70, 20 from 70 (near
    failure small, far from it large, as on C-MAPSS)."""
    rng = np.random.default_rng(seed)
    rul = rng.uniform(0, 125, n)
    sd = np.select([rul < 30, rul < 70], [2.0, 8.0], 20.0)
    return rul, rul + rng.normal(0, sd)


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    (cal_true, cal_pred), (test_true, test_pred) = heteroscedastic(4000, 0), heteroscedastic(4000, 1)
    out = {}
    for form in ("plain", "mondrian", "monotone"):
        calibration = calibrate(cal_true, cal_pred, form, NOMINAL, EDGES, low=0.0, high=125.0,
                                groups=np.arange(4000) // 10, difficulty_floor=FLOOR)
        out[form] = coverage_by_band(test_true, *calibration.interval(test_pred), EDGES)
    return out


def test_every_form_covers_the_nominal_share_within_sampling_error(measured):
    # the coverage given a calibration set varies with it (sd sqrt(p(1-p)/n_cal)) and its test share with the
    # test draw (sd sqrt(p(1-p)/n_test)): 3 standard deviations of both
    tolerance = 3 * math.sqrt(NOMINAL * (1 - NOMINAL) * (1 / 4000 + 1 / 4000))
    for form in ("plain", "mondrian"):
        assert abs(measured[form]["coverage"] - NOMINAL) < tolerance, (form, measured[form]["coverage"])
    # the monotone form's slope limit only widens: below each step of this noise (sd 2 -> 8 -> 20) the half-width
    # rises at one cycle per cycle instead of jumping, so it over-covers (measured 0.933), never under
    assert measured["monotone"]["coverage"] > NOMINAL - tolerance


def test_the_adaptive_form_is_closer_to_nominal_in_every_band(measured):
    """One width for all over-covers near failure and under-covers far from it; bands of predicted RUL move each
    band's coverage towards nominal (not onto it: a band of predicted RUL holds some points of the neighbouring
    true band, with its noise; measured here 1.000 / 0.998 / 0.784 plain, 0.995 / 0.924 / 0.836 mondrian)."""
    labels = ["<30", "30-70", ">=70"]
    gap = {form: [abs(measured[form][f"coverage_rul{b}"] - NOMINAL) for b in labels] for form in measured}
    assert all(m < p for m, p in zip(gap["mondrian"], gap["plain"])), gap
    assert measured["plain"]["coverage_rul<30"] > 0.99 and measured["plain"]["coverage_rul>=70"] < 0.8
    assert measured["mondrian"]["width_rul<30"] < measured["plain"]["width_rul<30"] / 3  # and far narrower there


@pytest.mark.parametrize("form", ["plain", "mondrian", "spread"])
def test_intervals_are_crepes_own_on_the_same_residuals(form):
    rng = np.random.default_rng(3)
    rul_true, rul_pred, spread = rng.uniform(0, 125, 200), rng.uniform(0, 125, 200), rng.uniform(0.5, 5, 200)
    new_pred, new_spread = rng.uniform(0, 125, 50), rng.uniform(0.5, 5, 50)
    floor = 1.0 if form == "spread" else 0.0
    calibration = calibrate(rul_true, rul_pred, form, NOMINAL, EDGES, low=-np.inf, high=None,
                            spread=spread if form == "spread" else None, spread_floor=floor)
    regressor = ConformalRegressor()
    if form == "mondrian":
        bins = lambda p: np.searchsorted(EDGES, p, side="right")  # noqa: E731
        regressor.fit(rul_true - rul_pred, bins=bins(rul_pred))
        expected = regressor.predict_int(new_pred, bins=bins(new_pred), confidence=NOMINAL)
    elif form == "spread":
        regressor.fit(rul_true - rul_pred, sigmas=spread + floor)
        expected = regressor.predict_int(new_pred, sigmas=new_spread + floor, confidence=NOMINAL)
    else:
        regressor.fit(rul_true - rul_pred)
        expected = regressor.predict_int(new_pred, confidence=NOMINAL)
    lo, hi = calibration.interval(new_pred, new_spread if form == "spread" else None)
    np.testing.assert_allclose(np.stack([lo, hi], axis=1), expected, rtol=0, atol=1e-9)


def test_plain_half_width_is_the_textbook_conformal_quantile():
    """Split conformal: the ceil((n + 1) * coverage)-th smallest absolute residual (n = 50: the 46th). Where
    (1 - coverage)(n + 1) is an integer (n = 49) crepes takes one rank higher (its 1 - 0.9 rounds below 0.1):
    one point more conservative."""
    residuals = np.random.default_rng(4).normal(0, 10, 50)
    calibration = calibrate(residuals, np.zeros(50), "plain", NOMINAL, EDGES, low=-np.inf, high=None)
    assert calibration.half_widths == [np.sort(np.abs(residuals))[45]] and calibration.points == [50]
    calibration = calibrate(residuals[:49], np.zeros(49), "plain", NOMINAL, EDGES, low=-np.inf, high=None)
    assert calibration.half_widths == [np.sort(np.abs(residuals[:49]))[45]]  # the 46th, not the textbook 45th


def test_a_band_too_small_for_the_coverage_is_unbounded_and_intervals_stay_within_the_truths_range():
    """Eight points cannot give a 90% quantile (crepes: unbounded); an empty band neither."""
    rul_pred = np.array([10.0] * 8 + [50.0] * 20)
    calibration = calibrate(rul_pred + 1.0, rul_pred, "mondrian", NOMINAL, EDGES, low=0.0, high=125.0)
    assert calibration.half_widths[0] is None and calibration.half_widths[2] is None
    assert calibration.half_widths[1] == pytest.approx(1.0) and calibration.points == [8, 20, 0]
    lo, hi = calibration.interval(np.array([5.0, 50.0, 124.0]))
    np.testing.assert_allclose(lo, [0.0, 49.0, 0.0])
    np.testing.assert_allclose(hi, [125.0, 51.0, 125.0])
    again = Calibration.from_dict(calibration.to_dict())  # the ONNX contract's copy reproduces it
    assert again == calibration


def prep(**changes) -> Preprocessing:
    base = dict(unit="unit", time="cycle", features=["s2", "s3"], conditions=[], condition_mode="round",
                decimals=[], window=30, eval_stride=1, pad_mode="edge", max_rul=125.0, cap_test_rul=True,
                health_thresholds=[30.0, 70.0], mean=[[0.0, 0.0]], std=[[1.0, 1.0]])
    return Preprocessing(**{**base, **changes})


def held_out(rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    rul = rng.uniform(0, 125, n)
    return pd.DataFrame({"unit": np.arange(n) // 3, "cut": np.arange(n) % 3, "row": 40, "rul_true": rul,
                         "rul_pred": rul + rng.normal(0, 5, n), "is_last": True})


@pytest.fixture(scope="module")
def holdout_cfg():
    """Composed once (a composition takes about half a second); each test edits a copy."""
    return composed(["protocol=holdout", "dataset=FD001", "data.split_seed=42"])


def edited(cfg, **values):
    copy = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(copy, key.replace("__", "."), value, merge=False)
    return copy


def test_a_paper_run_gets_no_interval_and_says_why(holdout_cfg):
    cfg = edited(holdout_cfg, protocol__name="paper")
    calibration, note = for_run(cfg, prep(), held_out(np.random.default_rng(0)))
    assert calibration is None and note == PAPER_REASON and "protocol=paper has no held-out units" in note
    predictions = pd.DataFrame({"rul_true": [10.0, 80.0], "rul_pred": [12.0, 70.0]})
    shown = with_intervals(predictions, calibration)
    assert shown[list(COLUMNS)].isna().all().all()  # empty cells in predictions.csv
    keys = summary_keys(calibration, note, shown, EDGES)
    assert keys["interval/note"] == PAPER_REASON and keys["interval/form"] is None
    assert keys["test/interval_coverage"] is None and keys["test/interval_coverage_rul<30"] is None


def test_without_crepes_a_run_gets_no_interval_and_says_how_to_get_one(holdout_cfg, monkeypatch):
    """A machine without crepes (the GPU machine lacks it and scikit-learn) still trains: no interval, one note."""
    monkeypatch.setitem(sys.modules, "crepes", None)  # import fails
    calibration, note = for_run(holdout_cfg, prep(), held_out(np.random.default_rng(0)))
    assert calibration is None and note == MISSING_REASON and "pip install crepes scikit-learn" in note


def test_a_holdout_run_calibrates_on_the_cut_ends_only(holdout_cfg):
    cfg = holdout_cfg
    held = held_out(np.random.default_rng(1))
    noisy = held.assign(is_last=False, rul_pred=held.rul_pred + 1000)  # earlier windows: never calibrate
    calibration, note = for_run(cfg, prep(), pd.concat([held, noisy]))
    assert note is None and calibration.form == cfg.interval.form and calibration.coverage == cfg.interval.coverage
    assert sum(calibration.points) == len(held) and calibration.edges == [30.0, 70.0]
    assert calibration.high == 125.0


@pytest.mark.parametrize("n, expected", [(9, 1.0), (24, 23 / 24)])
def test_held_out_gap_calibrates_each_half_of_the_units_on_the_other(holdout_cfg, n, expected):
    """Units 2 and 4 repeat units 1 and 3 exactly, so each alternate half calibrates on the residuals it is
    scored on: the in-sample coverage of crepes' rank (9 points: too few, unbounded, all covered; 24: the 2nd
    largest, 23 of 24), in the one band the truths fall in (RUL 100, >= 70); the gap is its distance from 0.9."""
    residuals = np.arange(1.0, n + 1)
    unit = np.repeat([1, 3], [n - n // 2, n // 2])  # a half's n points, over two units
    half = pd.DataFrame({"unit": unit, "cut": 0, "row": 40, "rul_true": 100.0, "rul_pred": 100.0 - residuals,
                         "is_last": True})
    held = pd.concat([half, half.assign(unit=half.unit + 1)])
    cfg = edited(holdout_cfg, interval__form="plain")
    assert held_out_band_gap(held, cfg, prep()) == pytest.approx(abs(expected - NOMINAL))


def write_held_out(root: Path, name: str, held: pd.DataFrame) -> Path:
    (root / name).mkdir()
    held.to_csv(root / name / "calibration.csv", index=False)
    return root / name


def recorded(**changes) -> dict:
    """preprocessing.json as a run writes it."""
    return json.loads(prep(**changes).to_json())


def test_an_ensemble_of_runs_that_do_not_share_the_split_or_features_is_refused(tmp_path, holdout_cfg):
    a = (Path("runs/a"), edited(holdout_cfg, seed=1), recorded())
    assert ensemble_difference([a, (Path("runs/b"), edited(holdout_cfg, seed=2), recorded())]) is None
    older = {k: v for k, v in recorded().items() if k != "pad_mode"}  # a run written before pad_mode was kept
    assert ensemble_difference([a, (Path("runs/old"), edited(holdout_cfg, seed=2), older)]) is None
    c = (Path("runs/c"), edited(holdout_cfg, seed=3, data__split_seed=3), recorded())
    assert ensemble_difference([a, c]) == (
        "runs runs/a and runs/c differ in data.split_seed (42 vs 3): an ensemble averages runs that share "
        "preprocessing, features and split, and is calibrated on the held-out units they share. Fix: pass runs "
        "that differ only in seed (e.g. one sweep over seed=... with data.split_seed fixed).")
    d = (Path("runs/d"), edited(holdout_cfg, seed=4, dataset__window=20), recorded())
    assert "differ in dataset.window (30 vs 20)" in ensemble_difference([a, d])
    e = (Path("runs/e"), edited(holdout_cfg, seed=5), recorded(features=["s2", "s4"]))
    assert "differ in preprocessing.features (['s2', 's3'] vs ['s2', 's4'])" in ensemble_difference([a, e])


def test_an_ensemble_is_calibrated_on_the_mean_of_its_runs_shared_held_out_windows(tmp_path, holdout_cfg):
    held = held_out(np.random.default_rng(2))
    a = write_held_out(tmp_path, "a", held)
    b = write_held_out(tmp_path, "b", held.assign(rul_pred=held.rul_pred + 2))
    mean = seed_held_out([a, b])
    np.testing.assert_allclose(mean["rul_pred"], held.rul_pred + 1)
    np.testing.assert_allclose(mean["rul_spread"], np.sqrt(2))  # std (ddof=1) of x and x + 2
    for form in ("plain", "mondrian", "monotone", "spread"):
        calibration, _ = for_run(edited(holdout_cfg, interval__ensemble_form=form), prep(), mean, ensemble=True)
        assert calibration.form == form and sum(calibration.points) + calibration.fit_points == len(held)
    other = write_held_out(tmp_path, "f", held.iloc[:-3])
    with pytest.raises(GraceError, match="hold out different windows"):
        seed_held_out([a, other])


@pytest.mark.parametrize("key, value, message", [
    ("interval.form", "spread", "interval.form='spread' is not one of ('plain', 'mondrian', 'monotone') (a single "
                                "run has no"),
    ("interval.difficulty_floor", 0.0, "interval.difficulty_floor=0.0 must be > 0"),
    ("interval.ensemble_form", "wide", "interval.ensemble_form='wide' is not one of"),
    ("interval.coverage", 1.0, "interval.coverage=1.0 must lie in (0, 1)"),
    ("interval.spread_floor", -1.0, "interval.spread_floor=-1.0 must be >= 0"),
    ("interval.calibration_cuts", -1, "interval.calibration_cuts=-1 must be an integer >= 0"),
    ("interval.calibration_cuts", 2.5, "interval.calibration_cuts=2.5 must be an integer >= 0"),
    ("interval.bands", [70, 30], "interval.bands=[70, 30] must be increasing RUL edges"),
])
def test_bad_interval_settings_are_refused_before_training(holdout_cfg, key, value, message):
    cfg = holdout_cfg.copy()
    OmegaConf.update(cfg, key, value, merge=False)
    with pytest.raises(GraceError) as err:
        check_settings(cfg)
    assert str(err.value).startswith(message) and "Fix: " in str(err.value)
    check_settings(holdout_cfg)  # the defaults pass



def test_measurement_cli_recomputes_a_committed_runs_interval_and_its_band_gap(tmp_path, capsys):
    """``python -m grace_lit.intervals`` on a committed campaign run: its default form's coverage and width equal
    what the run itself wrote to metrics.json; band_gap (how the default form is chosen) is the mean distance of
    the three band coverages from nominal."""
    run = REPO / "results" / "cpu_campaign" / "FD001_grace_holdout" / "s42"
    intervals_main([str(run), "--json", str(tmp_path / "rows.json")])
    rows = {row["form"]: row for row in json.loads((tmp_path / "rows.json").read_text())}
    written = json.loads((run / "metrics.json").read_text())
    own = rows[written["interval/form"]]
    assert (own["coverage"], own["width"], own["coverage_rul30-70"]) == pytest.approx(
        (written["test/interval_coverage"], written["test/interval_width"], written["test/interval_coverage_rul30-70"]))
    gaps = {form: np.mean([abs(row[f"coverage_rul{b}"] - NOMINAL) for b in ("<30", "30-70", ">=70")])
            for form, row in rows.items()}
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == "band gap on the test sets (reported, chooses nothing), every run and subset: " + ", ".join(
        f"{form} {gap:.3f}" for form, gap in sorted(gaps.items(), key=lambda kv: kv[1]))
    held = {form: row["held_out_gap"] for form, row in rows.items()}
    assert lines[-1] == "band gap on held-out units (chooses the default form), every run and subset: " + ", ".join(
        f"{form} {gap:.3f}" for form, gap in sorted(held.items(), key=lambda kv: kv[1]))
    # a test set of 100 units: an exactly calibrated 90% interval covers 84 to 95 of them 95% of the time
    assert next(line for line in lines if line.startswith("FD001   mondrian")).endswith("0.84-0.95")


def test_measurement_cli_ensemble_of_identical_runs_is_the_run_itself(tmp_path, capsys):
    """``--ensemble`` averages each dataset's runs: two copies of one committed run average to it, with no spread,
    so the ensemble's plain and mondrian rows are the run's own, and spread (each residual over spread_floor alone)
    covers as plain does."""
    run = REPO / "results" / "cpu_campaign" / "FD001_grace_holdout" / "s42"
    copies = [shutil.copytree(run, tmp_path / name) for name in ("a", "b")]
    intervals_main([*map(str, copies), "--ensemble", "--json", str(tmp_path / "rows.json")])
    rows = json.loads((tmp_path / "rows.json").read_text())
    single = {row["form"]: row for row in rows if row["seed"] == 42 and row["run"] == str(copies[0])}
    ensemble = {row["form"]: row for row in rows if row["seed"] == "mean of 2"}
    assert set(ensemble) == {"plain", "mondrian", "monotone", "spread"}
    for form in ("plain", "mondrian", "monotone"):
        assert ensemble[form]["coverage"] == pytest.approx(single[form]["coverage"])
        assert ensemble[form]["held_out_gap"] == pytest.approx(single[form]["held_out_gap"])
    assert ensemble["spread"]["coverage"] == pytest.approx(single["plain"]["coverage"])
    assert "FD001   mondrian" in capsys.readouterr().out



# ---------------------------------------------------------------------------------- the monotone form
def test_the_monotone_form_is_closer_to_nominal_than_plain_in_every_band(measured):
    labels = ["<30", "30-70", ">=70"]
    gap = {form: [abs(measured[form][f"coverage_rul{b}"] - NOMINAL) for b in labels] for form in measured}
    assert all(m < p for m, p in zip(gap["monotone"], gap["plain"])), gap
    assert measured["monotone"]["width_rul<30"] < measured["plain"]["width_rul<30"] / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monotone_bounds_never_fall_as_the_prediction_rises_where_mondrians_jump(seed):
    """A sweep of predictions over 0..max_rul (step 0.01): no decrease in either bound. The residuals' spread
    rises steeply (sd 1 below RUL 30, 25 above), so the fitted half-width would outrun the prediction without the
    slope limit; the Mondrian form on the same points has a lower bound that falls at a band edge."""
    rng = np.random.default_rng(seed)
    rul_pred = rng.uniform(0, 125, 3000)
    rul_true = rul_pred + rng.normal(0, np.where(rul_pred < 30, 1.0, 25.0))
    sweep = np.arange(0.0, 125.0 + 1e-9, 0.01)
    monotone = calibrate(rul_true, rul_pred, "monotone", NOMINAL, EDGES, low=0.0, high=125.0,
                         groups=np.arange(3000) // 20, difficulty_floor=FLOOR)
    lo, hi = monotone.interval(sweep)
    assert np.diff(lo).min() >= -1e-9 and np.diff(hi).min() >= -1e-9
    assert lo[-1] > lo[0] and hi[-1] > hi[0]  # not trivially flat
    mondrian_lo, _ = calibrate(rul_true, rul_pred, "mondrian", NOMINAL, EDGES, low=0.0, high=125.0).interval(sweep)
    assert np.diff(mondrian_lo).min() < -10  # the jump the monotone form removes (issue 32, item 2)


def test_monotone_is_normalised_conformal_on_one_half_with_the_isotonic_difficulty_of_the_other():
    """crepes' normalised conformal half-width h (sigmas = scikit-learn's isotonic fit of |residual| on the
    prediction over alternate units in sorted order, at least the floor; calibrated on the remaining units),
    widened by brute force to the least half-width whose lower bound never falls: at p, the largest
    h(p') - (p' - p) over every p' >= p on a fine grid."""
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(5)
    rul_pred = rng.uniform(0, 125, 600)
    rul_true = rul_pred + rng.normal(0, 2 + 0.1 * rul_pred)
    units = np.arange(600) // 6
    calibration = calibrate(rul_true, rul_pred, "monotone", NOMINAL, EDGES, low=-np.inf, high=None, groups=units,
                            difficulty_floor=FLOOR)
    fit = units % 2 == 0  # units 0, 2, 4, ...: the first of each pair in sorted order
    iso = IsotonicRegression(out_of_bounds="clip").fit(rul_pred[fit], np.abs(rul_true - rul_pred)[fit])
    regressor = ConformalRegressor().fit((rul_true - rul_pred)[~fit],
                                         sigmas=np.maximum(iso.predict(rul_pred[~fit]), FLOOR))
    grid = np.arange(0.0, 130.0, 0.001)
    crepes_half = regressor.predict_int(grid, sigmas=np.maximum(iso.predict(grid), FLOOR), confidence=NOMINAL)[:, 1] - grid
    reach = np.maximum.accumulate((crepes_half - grid)[::-1])[::-1] + grid  # max over p' >= p of h(p') - (p' - p)
    new = np.linspace(0, 125, 41)
    expected = reach[np.searchsorted(grid, new)]
    np.testing.assert_allclose(calibration.half_width(new), expected, rtol=0, atol=1e-2)  # the grid's step
    assert (calibration.half_width(new) > crepes_half[np.searchsorted(grid, new)] + 1e-6).any()  # the limit acts
    assert (calibration.points, calibration.fit_points) == ([int((~fit).sum())], int(fit.sum()))
    assert Calibration.from_dict(calibration.to_dict()) == calibration  # the ONNX contract's copy


def test_the_slope_limit_only_widens_and_caps_the_half_widths_rise_at_one_cycle_per_cycle():
    """half rises 2 -> 12 between 10 and 11: at 11 the limit needs 11 at 10 and 1 at 0, where 2 stands, so a
    knot is added where the limit 12 - (11 - p) meets 2: p = 1; from 11 to 50 half rises gently (no change)."""
    from grace_lit.conformal import slope_limited

    knots, half = slope_limited(np.array([0.0, 10.0, 11.0, 50.0]), np.array([2.0, 2.0, 12.0, 20.0]))
    np.testing.assert_allclose(knots, [0.0, 1.0, 10.0, 11.0, 50.0])
    np.testing.assert_allclose(half, [2.0, 2.0, 11.0, 12.0, 20.0])


def test_a_band_too_small_to_calibrate_is_warned_about_naming_it_and_counted(caplog):
    rul_pred = np.array([10.0] * 8 + [50.0] * 20)
    with caplog.at_level(logging.WARNING, logger="grace_lit"):
        calibration = calibrate(rul_pred + 1.0, rul_pred, "mondrian", NOMINAL, EDGES, low=0.0, high=125.0)
    assert calibration.uncalibrated_bands() == 2
    assert "band <30 has 8 calibration points, too few for a 90% interval" in caplog.text
    assert "band >=70 has 0 calibration points" in caplog.text and "Fix: more held-out cut ends" in caplog.text
    np.testing.assert_array_equal(calibration.unbounded(np.array([5.0, 50.0, 100.0])), [True, False, True])


# ---------------------------------------------------------------------------------- what metrics.json says
def test_metrics_report_coverage_on_the_capped_truth_below_the_cap_and_against_the_raw_truth():
    """Four test units by hand: the capped truth covers all four (two intervals open at 125); the raw truths
    200 and 130 lie above the cap, so against the raw truth 2 of 4 are covered, and on the 2 units whose raw
    truth is at most 125, both."""
    calibration = Calibration("plain", NOMINAL, [], [10.0], [40], 0.0, 125.0)
    predictions = with_intervals(pd.DataFrame({"rul_true": [20.0, 60.0, 125.0, 125.0],
                                               "rul_pred": [25.0, 55.0, 120.0, 118.0],
                                               "rul_true_raw": [20.0, 60.0, 200.0, 130.0]}), calibration)
    assert predictions["rul_hi_open"].tolist() == [False, False, True, True]
    assert (predictions["nominal_coverage"] == NOMINAL).all()
    held = pd.DataFrame({"unit": [7, 7, 3], "rul_true": 1.0, "rul_pred": 1.0, "is_last": True})
    keys = summary_keys(calibration, None, predictions, EDGES, held)
    assert keys["test/interval_coverage"] == 1.0 and keys["test/interval_coverage_raw_truth"] == 0.5
    assert keys["test/interval_coverage_raw_le_cap"] == 1.0 and keys["test/interval_n_raw_le_cap"] == 2
    assert keys["interval/held_out_units"] == [7, 3] and keys["interval/uncalibrated_bands"] == 0
    assert set(keys["interval/coverage_truths"]) == {"test/interval_coverage", "test/interval_coverage_raw_truth",
                                                     "test/interval_coverage_raw_le_cap"}
    json.dumps(keys)  # metrics.json holds them


# ---------------------------------------------------------------------------------- CV+
class Lookup:
    """A scikit-learn regressor whose fold models are given: row r of X is point r, and a model fitted without
    the points of fold k predicts table[k] (the model fitted on every point, which MAPIE also fits, the mean)."""

    def __init__(self, table=None, fold_of=None):
        self.table, self.fold_of = table, fold_of

    def get_params(self, deep=True):
        return {"table": self.table, "fold_of": self.fold_of}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X, y):
        seen = set(X[:, 0].astype(int))
        absent = [k for k in range(len(self.table)) if not seen & set(np.flatnonzero(self.fold_of == k))]
        self.fold_ = absent[0] if absent else None
        return self

    def predict(self, X):
        rows = X[:, 0].astype(int)
        return self.table[self.fold_, rows] if self.fold_ is not None else self.table[:, rows].mean(axis=0)


@pytest.mark.parametrize("n", [37, 39, 200])  # 39: alpha (n + 1) an integer, where the rank is easily off by one
def test_cv_plus_is_mapies_on_the_same_fold_predictions(n):
    mapie = pytest.importorskip("mapie.regression")  # in the dev extra
    from sklearn.model_selection import PredefinedSplit

    from grace_lit.conformal import CrossConformal

    rng = np.random.default_rng(n)
    k, m = 5, 30
    fold_of = rng.integers(0, k, n)
    rul_true = rng.uniform(0, 125, n)
    table = rng.uniform(0, 125, (k, n + m))  # each fold model's predictions of every point
    regressor = mapie.CrossConformalRegressor(Lookup(table, np.concatenate([fold_of, np.full(m, -1)])),
                                              confidence_level=NOMINAL, cv=PredefinedSplit(fold_of), method="plus")
    x = np.arange(n + m, dtype=float)[:, None]
    _, expected = regressor.fit_conformalize(x[:n], rul_true).predict_interval(x[n:])
    residuals = np.abs(rul_true - table[fold_of, np.arange(n)])
    lo, hi = CrossConformal(NOMINAL, residuals, fold_of, -np.inf, None).interval(table[:, n:])
    np.testing.assert_allclose(np.stack([lo, hi], axis=1), expected[:, :, 0], rtol=0, atol=1e-9)


def test_cv_plus_by_hand_on_nine_points():
    """n = 9, coverage 0.8: ranks floor(0.2 * 10) = 2 and ceil(0.8 * 10) = 8. Two folds predict a new point at 50
    (fold 0) and 60 (fold 1); residuals 1..9, points 0-4 in fold 0: lower values 49, 48, 47, 46, 45 and 54, 53,
    52, 51 -> sorted 45, 46, ...: the 2nd is 46; upper values 51..55 and 66..69 -> the 8th smallest is 68."""
    from grace_lit.conformal import CrossConformal

    residuals = np.arange(1.0, 10.0)
    fold = np.array([0] * 5 + [1] * 4)
    lo, hi = CrossConformal(0.8, residuals, fold, 0.0, 125.0).interval(np.array([[50.0], [60.0]]))
    assert (lo[0], hi[0]) == (46.0, 68.0)
