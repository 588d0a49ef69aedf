"""Several runs as one model (grace_lit.ensemble): K fold runs recognised and checked to be the folds of one split,
their out-of-fold cut ends stacked for CV+, seed ensembles told apart from them, and the members' predictions
combined, on fabricated run directories whose predictions differ (values by hand)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import composed
from grace_lit.calibration import for_folds
from grace_lit.data.preprocess import Preprocessing
from grace_lit.ensemble import combine, open_runs, out_of_fold
from grace_lit.errors import GraceError

K = 3


@pytest.fixture(scope="module")
def fold_cfg():
    return composed(["protocol=holdout", "dataset=FD001", "data.split_seed=42", f"protocol.folds={K}"])


def prep(mean: float) -> dict:
    """preprocessing.json as a fold run writes it: the scaler fitted on that fold's training units."""
    return json.loads(Preprocessing(
        unit="unit", time="cycle", features=["s2", "s3"], conditions=[], condition_mode="round", decimals=[],
        window=30, eval_stride=1, pad_mode="edge", max_rul=125.0, cap_test_rul=True, health_thresholds=[30.0, 70.0],
        mean=[[mean, 0.0]], std=[[1.0, 1.0]]).to_json())


def fabricated(root: Path, name: str, cfg, held: pd.DataFrame | None, preprocessing: dict) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / "preprocessing.json").write_text(json.dumps(preprocessing))
    if held is not None:
        held.to_csv(run / "calibration.csv", index=False)
    return run


def held(units: list[int], rul_true: list[float], rul_pred: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"unit": units, "cut": 0, "row": 40, "rul_true": rul_true, "rul_pred": rul_pred,
                         "is_last": True})


@pytest.fixture
def folds(tmp_path, fold_cfg) -> list[Path]:
    """Three fold runs, each holding out two units (one cut end each), residuals 1..6 by hand."""
    runs = []
    for k in range(K):
        cfg = fold_cfg.copy()
        OmegaConf.update(cfg, "protocol.fold", k)
        units = [2 * k + 1, 2 * k + 2]
        runs.append(fabricated(tmp_path, f"f{k}", cfg, held(units, [50.0, 80.0], [50.0 - units[0], 80.0 + units[1]]),
                               prep(mean=float(k))))
    return runs


def test_fold_runs_are_one_model_and_every_unit_calibrates_by_its_own_fold(folds, fold_cfg):
    ensemble = open_runs(folds[::-1])  # any order
    assert ensemble.kind == "folds"
    stacked = out_of_fold(ensemble)
    assert sorted(stacked["unit"]) == [1, 2, 3, 4, 5, 6]
    assert stacked.set_index("unit")["fold"].to_dict() == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}
    cross, note = for_folds(ensemble.cfg, Preprocessing(**prep(0.0)), stacked)
    assert note is None and cross.form == "cv+" and cross.high == 125.0
    assert sorted(cross.residuals) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and cross.points == [6]


def test_a_missing_or_repeated_fold_is_refused_naming_the_folds(folds, tmp_path, fold_cfg):
    with pytest.raises(GraceError) as err:
        open_runs(folds[:2])
    assert "hold out protocol.fold=[0, 1] of protocol.folds=3" in str(err.value)
    assert "Fix: pass the 3 runs of one sweep protocol.fold=0,1,2" in str(err.value)
    cfg = fold_cfg.copy()
    OmegaConf.update(cfg, "protocol.fold", 1)
    twin = fabricated(tmp_path, "twin", cfg, held([9], [1.0], [1.0]), prep(1.0))
    with pytest.raises(GraceError, match=r"protocol.fold=\[0, 1, 1\]"):
        open_runs([folds[0], folds[1], twin])


def test_fold_runs_of_different_splits_are_refused_naming_the_setting(folds, tmp_path, fold_cfg):
    cfg = fold_cfg.copy()
    OmegaConf.update(cfg, "protocol.fold", 2)
    OmegaConf.update(cfg, "data.split_seed", 7)
    other = fabricated(tmp_path, "other", cfg, None, prep(2.0))
    with pytest.raises(GraceError) as err:
        open_runs([folds[0], folds[1], other])
    assert f"runs {folds[0]} and {other} differ in data.split_seed (42 vs 7)" in str(err.value)
    assert "Fix: pass the K runs of one protocol.folds=K sweep" in str(err.value)


def test_a_unit_held_out_by_two_folds_is_refused(folds, tmp_path, fold_cfg):
    cfg = fold_cfg.copy()
    OmegaConf.update(cfg, "protocol.fold", 2)
    clash = fabricated(tmp_path, "clash", cfg, held([1], [10.0], [10.0]), prep(2.0))
    with pytest.raises(GraceError, match="unit 1 is held out by more than one fold run"):
        out_of_fold(open_runs([folds[0], folds[1], clash]))


def test_runs_of_one_fold_that_differ_in_their_fitted_scaler_are_not_a_seed_ensemble(folds, tmp_path, fold_cfg):
    """The fitted scaler may differ between folds, never between the seeds of one split."""
    cfg = fold_cfg.copy()
    OmegaConf.update(cfg, "protocol.fold", 0)
    OmegaConf.update(cfg, "seed", 7)
    seed_twin = fabricated(tmp_path, "seed_twin", cfg, None, prep(5.0))
    with pytest.raises(GraceError, match=r"differ in preprocessing.mean \(\[\[0.0, 0.0\]\] vs \[\[5.0, 0.0\]\]\)"):
        open_runs([folds[0], seed_twin])


def test_members_predictions_combine_into_mean_spread_and_mean_probabilities():
    """Three members that differ: rul 10, 14, 18 (mean 14, sd 4) and 100, 100, 103 (mean 101, sd sqrt(3));
    probabilities averaged, the most probable state re-read from the mean."""
    frames = [pd.DataFrame({"unit": [1, 2], "cycle": [30, 40], "rul_pred": [a, b], "health_pred": [h, 0],
                            "p_health_0": [p0, 1.0], "p_health_1": [1 - p0, 0.0]})
              for a, b, h, p0 in ((10.0, 100.0, 1, 0.4), (14.0, 100.0, 0, 0.9), (18.0, 103.0, 1, 0.3))]
    frame, members = combine(frames)
    np.testing.assert_allclose(frame["rul_pred"], [14.0, 101.0])
    np.testing.assert_allclose(frame["rul_spread"], [4.0, np.sqrt(3.0)])
    np.testing.assert_allclose(frame["p_health_0"], [1.6 / 3, 1.0])
    assert frame["health_pred"].tolist() == [0, 0] and list(frame.columns[2:4]) == ["rul_pred", "rul_spread"]
    np.testing.assert_array_equal(members, [[10.0, 100.0], [14.0, 100.0], [18.0, 103.0]])


def test_the_study_measures_a_k_fold_ensemble_from_its_files(tmp_path, fold_cfg, capsys):
    """``python -m grace_lit.intervals F0 F1 F2 --ensemble``: three fold runs, each holding out two units cut ten
    times, and four test units each fold predicts differently (fold k: truth + 3 (k - 1) + 1): the ensemble's
    prediction is truth + 1 (RMSE 1), its CV+ interval computed here by hand from the 60 out-of-fold residuals."""
    from grace_lit.intervals import main

    rng = np.random.default_rng(0)
    truth = np.array([10.0, 40.0, 90.0, 125.0])
    runs, residuals, folds = [], [], []
    for k in range(K):
        cfg = fold_cfg.copy()
        OmegaConf.update(cfg, "protocol.fold", k)
        units = np.repeat([2 * k + 1, 2 * k + 2], 10)
        rul_true = rng.uniform(0, 125, 20)
        error = rng.normal(0, 5 + 5 * k, 20)
        calibration = held(units.tolist(), rul_true.tolist(), (rul_true + error).tolist()).assign(
            cut=np.tile(np.arange(10), 2))
        run = fabricated(tmp_path, f"f{k}", cfg, calibration, prep(float(k)))
        pd.DataFrame({"unit": [1, 2, 3, 4], "rul_true": truth, "rul_pred": truth + 3 * (k - 1) + 1,
                      "rul_true_raw": [10.0, 40.0, 90.0, 160.0]}).to_csv(run / "predictions.csv", index=False)
        runs.append(run)
        residuals += np.abs(error).tolist()
        folds += [k] * 20
    main([*map(str, runs), "--forms", "plain", "--ensemble", "--json", str(tmp_path / "rows.json")])
    row = next(r for r in json.loads((tmp_path / "rows.json").read_text()) if r["form"] == "cv+")
    residuals, folds = np.array(residuals), np.array(folds)
    low_rank = (60 + 1) // 10  # floor(0.1 * 61) = 6; ceil(0.9 * 61) = 55 = 61 - 6
    lo, hi = [], []
    for x in truth:
        fold_pred = x + 3 * (folds - 1) + 1  # each point's own fold model's prediction of this test unit
        lo.append(max(np.sort(fold_pred - residuals)[low_rank - 1], 0.0))
        hi.append(min(np.sort(fold_pred + residuals)[61 - low_rank - 1], 125.0))
    lo, hi = np.array(lo), np.array(hi)
    assert row["seed"] == "mean of 3 folds" and row["calibration_points"] == 60
    assert row["rmse"] == pytest.approx(1.0)
    assert row["width"] == pytest.approx(np.mean(hi - lo))
    assert row["coverage"] == pytest.approx(np.mean((lo <= truth) & (truth <= hi)))
    raw = np.array([10.0, 40.0, 90.0, 160.0])
    assert row["coverage_raw_truth"] == pytest.approx(np.mean((lo <= raw) & (raw <= hi)))  # 160 lies above 125
    assert row["held_out_gap"] is None and "mean of 3 folds" in capsys.readouterr().out
