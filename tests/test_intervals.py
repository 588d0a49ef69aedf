"""Prediction intervals (grace_lit.intervals): coverage on data with known heteroscedastic noise for both forms,
the adaptive form's per-band coverage, the calibration equal to crepes' own intervals, no interval for
protocol=paper, and a seed ensemble refused with the setting its runs do not share."""
from __future__ import annotations

import json
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
from grace_lit.intervals import (MISSING_REASON, PAPER_REASON, Calibration, calibrate, check_settings, coverage_by_band,
                                 ensemble_difference, ensemble_held_out, for_run, held_out_band_gap, summary_keys,
                                 with_intervals)
from grace_lit.intervals import main as intervals_main

EDGES = [30.0, 70.0]
NOMINAL = 0.9


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
    for form in ("plain", "mondrian"):
        calibration = calibrate(cal_true, cal_pred, form, NOMINAL, EDGES, low=0.0, high=125.0)
        out[form] = coverage_by_band(test_true, *calibration.interval(test_pred), EDGES)
    return out


def test_both_forms_cover_the_nominal_share_within_sampling_error(measured):
    # the coverage given a calibration set varies with it (sd sqrt(p(1-p)/n_cal)) and its test share with the
    # test draw (sd sqrt(p(1-p)/n_test)): 3 standard deviations of both
    tolerance = 3 * math.sqrt(NOMINAL * (1 - NOMINAL) * (1 / 4000 + 1 / 4000))
    for form, result in measured.items():
        assert abs(result["coverage"] - NOMINAL) < tolerance, (form, result["coverage"])


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
    assert shown[["rul_lo", "rul_hi", "coverage"]].isna().all().all()  # empty cells in predictions.csv
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
    mean = ensemble_held_out([a, b])
    np.testing.assert_allclose(mean["rul_pred"], held.rul_pred + 1)
    np.testing.assert_allclose(mean["rul_spread"], np.sqrt(2))  # std (ddof=1) of x and x + 2
    for form in ("plain", "mondrian", "spread"):
        calibration, _ = for_run(edited(holdout_cfg, interval__ensemble_form=form), prep(), mean, ensemble=True)
        assert calibration.form == form and sum(calibration.points) == len(held)
    other = write_held_out(tmp_path, "f", held.iloc[:-3])
    with pytest.raises(GraceError, match="hold out different windows"):
        ensemble_held_out([a, other])


@pytest.mark.parametrize("key, value, message", [
    ("interval.form", "spread", "interval.form='spread' is not one of ('plain', 'mondrian') (a single run has no"),
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
    assert set(ensemble) == {"plain", "mondrian", "spread"}
    for form in ("plain", "mondrian"):
        assert ensemble[form]["coverage"] == pytest.approx(single[form]["coverage"])
        assert ensemble[form]["held_out_gap"] == pytest.approx(single[form]["held_out_gap"])
    assert ensemble["spread"]["coverage"] == pytest.approx(single["plain"]["coverage"])
    assert "FD001   mondrian" in capsys.readouterr().out

