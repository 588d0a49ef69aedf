"""grace_lit.predict on finished runs: the run's own test predictions reproduced exactly, C-MAPSS through
dataset=table trains exactly as dataset=FD001, seed and K-fold ensembles of runs whose predictions differ, the
fleet view (ranking, alert, figure), bad data refused, a GPU checkpoint on a CPU, the README example."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, SENSORS, cli_env
from grace_lit.conformal import calibrate
from grace_lit.data.cmapss import read_nasa
from grace_lit.errors import GraceError
from grace_lit.predict import main, predict
from grace_lit.rundir import load_run_config
from test_table import nasa_as_csv

TINY = ["model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "protocol=holdout",
        "protocol.val_cuts=5", "interval.calibration_cuts=8"]  # holdout: 20 held-out units, 8 calibration cuts
FEATURES = [f"sensor_{s}" for s in SENSORS]


def cli(module: str, args: list[str], data_cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env(data_cache),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_cache: Path, cmapss_dir: Path) -> dict[str, Path]:
    """FD001 trained for one short epoch twice (protocol=holdout): as dataset=FD001, and as a messy CSV through
    dataset=table."""
    tmp = tmp_path_factory.mktemp("runs")
    nasa_as_csv(read_nasa(cmapss_dir / "train_FD001.txt"), tmp / "train.csv", seed=0)
    nasa_as_csv(read_nasa(cmapss_dir / "test_FD001.txt"), tmp / "test.csv", seed=1)
    rul = np.loadtxt(cmapss_dir / "RUL_FD001.txt")
    pd.DataFrame({"engine": [f"E{i:03d}" for i in range(1, 101)], "rul": rul}).to_csv(tmp / "rul.csv", index=False)
    table = ["dataset=table", f"dataset.train={tmp / 'train.csv'}", f"dataset.test={tmp / 'test.csv'}",
             f"dataset.test_rul={tmp / 'rul.csv'}", "dataset.unit=engine", "dataset.time=t",
             f"dataset.features=[{','.join(FEATURES)}]"]
    out = {}
    for name, args in (("cmapss", ["dataset=FD001"]), ("table", table)):
        run = cli("grace_lit.train", [*args, *TINY, f"hydra.run.dir={tmp / name}"], data_cache)
        assert run.returncode == 0, run.stderr[-3000:]
        out[name] = tmp / name
    out["test_csv"] = tmp / "test.csv"
    return out


def test_table_run_trains_exactly_as_the_cmapss_run(runs):
    a, b = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("cmapss", "table"))
    for key in ("test/rmse_last", "test/rmse_all", "test/nasa", "test/health_acc", "selection_score"):
        assert a[key] == b[key], key
    pa, pb = (pd.read_csv(runs[k] / "predictions.csv") for k in ("cmapss", "table"))
    assert pa["rul_pred"].tolist() == pb["rul_pred"].tolist()
    assert pb["unit"].tolist() == [f"E{u:03d}" for u in pa["unit"]]  # the table's own ids, not codes
    ca, cb = (pd.read_csv(runs[k] / "calibration.csv") for k in ("cmapss", "table"))
    assert ca["rul_pred"].tolist() == cb["rul_pred"].tolist() and ca[["cut", "row"]].equals(cb[["cut", "row"]])
    assert cb["unit"].tolist() == [f"E{u:03d}" for u in ca["unit"]]
    assert pa[["rul_lo", "rul_hi"]].equals(pb[["rul_lo", "rul_hi"]])


def test_a_holdout_run_writes_its_calibration_and_its_intervals_measured_coverage(runs, cmapss_dir):
    """calibration.csv: the cut ends of the held-out units (20 units cut 8 times), the truth the life left after
    the cut (capped), as the NASA file has it; predictions.csv's intervals and metrics.json's empirical coverage,
    overall and per true-RUL band, agree with each other."""
    metrics = json.loads((runs["cmapss"] / "metrics.json").read_text())
    held = pd.read_csv(runs["cmapss"] / "calibration.csv")
    assert held["unit"].nunique() == 20 and len(held) == 160 and held["is_last"].all()
    assert held.groupby("unit")["cut"].apply(list).map(list(range(8)).__eq__).all()
    life = pd.Series(read_nasa(cmapss_dir / "train_FD001.txt")[:, 0]).value_counts()  # rows per unit
    np.testing.assert_array_equal(held.rul_true, np.minimum(life[held.unit].to_numpy() - held.row, 125))
    predictions = pd.read_csv(runs["cmapss"] / "predictions.csv")
    assert list(predictions.columns) == ["unit", "rul_true", "rul_pred", "health_true", "health_pred", "health_name",
                                         "rul_true_raw", "rul_lo", "rul_hi", "rul_hi_open", "nominal_coverage"]
    names = {0: "healthy", 1: "degrading", 2: "critical"}
    assert predictions["health_name"].tolist() == predictions["health_pred"].map(names).tolist()
    assert (predictions.nominal_coverage == 0.9).all() and (predictions.rul_lo <= predictions.rul_hi).all()
    assert (predictions.rul_hi_open == (predictions.rul_hi == 125)).all()
    assert metrics["interval/form"] == "mondrian" and metrics["interval/calibration_points"] == 160
    assert metrics["interval/held_out_units"] == held["unit"].unique().tolist()  # recorded: audit without the split
    raw_inside = (predictions.rul_lo <= predictions.rul_true_raw) & (predictions.rul_true_raw <= predictions.rul_hi)
    assert metrics["test/interval_coverage_raw_truth"] == pytest.approx(raw_inside.mean())
    below = predictions.rul_true_raw <= 125
    assert metrics["test/interval_coverage_raw_le_cap"] == pytest.approx(raw_inside[below].mean())
    inside = (predictions.rul_lo <= predictions.rul_true) & (predictions.rul_true <= predictions.rul_hi)
    assert metrics["test/interval_coverage"] == pytest.approx(inside.mean())
    assert metrics["test/interval_width"] == pytest.approx((predictions.rul_hi - predictions.rul_lo).mean(), rel=1e-6)
    near = predictions.rul_true < 30
    assert metrics["test/interval_n_rul<30"] == near.sum()
    assert metrics["test/interval_coverage_rul<30"] == pytest.approx(inside[near].mean())


@pytest.mark.parametrize("run, data", [("cmapss", "nasa"), ("table", "csv")])
def test_predict_reproduces_the_runs_test_predictions(runs, cmapss_dir, data_cache, tmp_path, run, data):
    source = cmapss_dir / "test_FD001.txt" if data == "nasa" else runs["test_csv"]
    main([str(runs[run]), str(source), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    mine, theirs = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(runs[run] / "predictions.csv")
    assert mine["rul_pred"].tolist() == theirs["rul_pred"].tolist()  # the CSV text, digit for digit
    assert mine["health_pred"].tolist() == theirs["health_pred"].tolist()
    for column in ("rul_lo", "rul_hi", "rul_hi_open", "nominal_coverage"):  # the run's interval, from calibration.csv
        assert mine[column].tolist() == theirs[column].tolist(), column
    names = {0: "healthy", 1: "degrading", 2: "critical"}
    assert mine["health_name"].tolist() == mine["health_pred"].map(names).tolist()
    assert mine.columns.get_loc("health_name") == mine.columns.get_loc("health_pred") + 1
    probs = mine[[c for c in mine.columns if c.startswith("p_health_")]].to_numpy()
    assert probs.shape[1] == 3 and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    expected_units = list(range(1, 101)) if run == "cmapss" else [f"E{i:03d}" for i in range(1, 101)]
    assert mine["unit"].tolist() == expected_units == theirs["unit"].tolist()
    lengths = read_nasa(cmapss_dir / "test_FD001.txt")
    last_cycle = pd.Series(lengths[:, 1]).groupby(lengths[:, 0]).max().to_numpy()
    time = "cycle" if run == "cmapss" else "t"
    np.testing.assert_array_equal(mine[time].to_numpy(), last_cycle)


def test_all_windows(runs, cmapss_dir, data_cache, tmp_path):
    main([str(runs["cmapss"]), str(cmapss_dir / "test_FD001.txt"), "--all-windows", "--out",
          str(tmp_path / "all.csv")])
    frame = pd.read_csv(tmp_path / "all.csv")
    table = read_nasa(cmapss_dir / "test_FD001.txt")
    lengths = np.bincount(table[:, 0].astype(int))[1:]
    assert len(frame) == int(np.maximum(lengths - 29, 1).sum())  # windows end at cycle 30.. (or the last row)
    last = frame.groupby("unit").tail(1)
    theirs = pd.read_csv(runs["cmapss"] / "predictions.csv")
    assert last["rul_pred"].tolist() == theirs["rul_pred"].tolist()


def shifted_copy(run: Path, copy: Path, delta: float) -> Path:
    """A copy of ``run`` whose model predicts every RUL ``delta`` higher: the RUL head's last bias (and its EMA
    shadow, which predict swaps in) raised by delta / rul_scale; its calibration.csv shifted alike, as that
    model would have scored its held-out cut ends."""
    shutil.copytree(run, copy)
    cfg = load_run_config(copy)
    model = instantiate(cfg.model)
    names = [name for name, _ in model.named_parameters()]
    bias = [name for name in names if name.startswith("rul_head.")][-1]
    path = copy / "checkpoints" / f"{cfg.callbacks.checkpoint.filename}.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["state_dict"][f"model.{bias}"] += delta / model.rul_scale
    ckpt["callbacks"][instantiate(cfg.callbacks.ema).state_key]["shadow"][names.index(bias)] += delta / model.rul_scale
    torch.save(ckpt, path)
    held = pd.read_csv(copy / "calibration.csv")
    held.assign(rul_pred=held.rul_pred + delta).to_csv(copy / "calibration.csv", index=False)
    return copy


@pytest.fixture(scope="module")
def five_units(runs, tmp_path_factory) -> Path:
    test = pd.read_csv(runs["test_csv"])
    path = tmp_path_factory.mktemp("five") / "five.csv"
    test[test["engine"].isin([f"E{i:03d}" for i in range(1, 6)])].to_csv(path, index=False)
    return path


def test_a_seed_ensemble_averages_runs_that_differ_and_refuses_runs_that_do_not_share_the_data(
        runs, five_units, tmp_path, caplog):
    """A run and its copy predicting 6 cycles higher, through the CLI's RUN_DIR RUN_DIR DATA on five test units:
    the mean is the run's prediction + 3 (the first run's alone would fail), the spread 6 / sqrt(2) (standard
    deviation, ddof=1); that spread is the same everywhere, so the spread form's interval is plain's, calibrated
    on the held-out predictions + 3. A table run with a C-MAPSS run is refused with the setting they differ in."""
    higher = shifted_copy(runs["table"], tmp_path / "higher", 6.0)
    with caplog.at_level(logging.INFO, logger="grace_lit"):
        main([str(runs["table"]), str(higher), str(five_units), "--out", str(tmp_path / "e.csv"), "--device", "cpu"])
    assert "2 runs as one model" in caplog.text and "interval (spread" in caplog.text  # interval.ensemble_form
    mine, theirs = pd.read_csv(tmp_path / "e.csv"), pd.read_csv(runs["table"] / "predictions.csv").head(5)
    assert mine["unit"].tolist() == theirs["unit"].tolist()
    np.testing.assert_allclose(mine["rul_pred"], theirs["rul_pred"] + 3.0, atol=1e-3)
    np.testing.assert_allclose(mine["rul_spread"], 6.0 / np.sqrt(2.0), atol=1e-3)
    assert list(mine.columns[2:8]) == ["rul_pred", "rul_spread", "rul_lo", "rul_hi", "rul_hi_open",
                                       "nominal_coverage"]
    held = pd.read_csv(runs["table"] / "calibration.csv").query("is_last")
    plain = calibrate(held.rul_true, held.rul_pred + 3.0, "plain", 0.9, [30.0, 70.0], low=0.0, high=125.0)
    np.testing.assert_allclose(np.stack([mine.rul_lo, mine.rul_hi], axis=1),
                               np.stack(plain.interval(mine.rul_pred), axis=1), atol=1e-3)
    with pytest.raises(SystemExit):
        main([str(runs["table"]), str(runs["cmapss"]), str(five_units), "--out", str(tmp_path / "x.csv")])
    assert (f"ERROR runs {runs['table']} and {runs['cmapss']} differ in dataset.name ('table' vs 'FD001')"
            in caplog.text)


def test_a_k_fold_ensemble_predicts_the_folds_mean_with_a_cv_plus_interval(runs, five_units, tmp_path, caplog):
    """Two fold runs made from one (protocol.folds=2): fold 0 the run itself, holding out the first half of its
    held-out units, fold 1 its copy predicting 10 cycles higher, holding out the other half. The mean is the
    run's prediction + 5, the spread 10 / sqrt(2); the CV+ interval is computed here by hand from the
    out-of-fold residuals (each unit's from the fold that held it out) and each fold model's prediction."""
    fold_dirs = [shutil.copytree(runs["table"], tmp_path / "f0"), shifted_copy(runs["table"], tmp_path / "f1", 10.0)]
    units = sorted(pd.read_csv(runs["table"] / "calibration.csv")["unit"].unique())
    for k, run in enumerate(fold_dirs):
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        OmegaConf.update(cfg, "protocol.folds", 2)
        OmegaConf.update(cfg, "protocol.fold", k)
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        held = pd.read_csv(run / "calibration.csv")
        held[held["unit"].isin(units[k::2])].to_csv(run / "calibration.csv", index=False)
    with caplog.at_level(logging.INFO, logger="grace_lit"):
        main([*map(str, fold_dirs[::-1]), str(five_units), "--out", str(tmp_path / "k.csv"), "--device", "cpu"])
    mine, theirs = pd.read_csv(tmp_path / "k.csv"), pd.read_csv(runs["table"] / "predictions.csv").head(5)
    np.testing.assert_allclose(mine["rul_pred"], theirs["rul_pred"] + 5.0, atol=1e-3)
    np.testing.assert_allclose(mine["rul_spread"], 10.0 / np.sqrt(2.0), atol=1e-3)
    held = pd.read_csv(runs["table"] / "calibration.csv").query("is_last")
    fold = held["unit"].isin(units[1::2]).to_numpy().astype(int)  # the fold that held each point out
    residuals = (held.rul_true - (held.rul_pred + 10.0 * fold)).abs().to_numpy()
    n = len(residuals)
    low_rank = (n + 1) // 10  # floor(0.1 (n + 1)), and ceil(0.9 (n + 1)) = n + 1 - that, in integers
    for row, pred in enumerate(theirs["rul_pred"]):
        fold_pred = pred + 10.0 * fold  # mu_-k(i)(x): the prediction of the model that never saw point i
        lo = np.sort(fold_pred - residuals)[low_rank - 1]
        hi = np.sort(fold_pred + residuals)[n + 1 - low_rank - 1]
        assert mine.loc[row, "rul_lo"] == pytest.approx(max(lo, 0.0), abs=1e-3)
        assert mine.loc[row, "rul_hi"] == pytest.approx(min(hi, 125.0), abs=1e-3)
        assert mine.loc[row, "rul_hi_open"] == (hi >= 125.0)
    assert f"interval (cv+, calibrated on {n} out-of-fold cut ends" in caplog.text


def test_the_fleet_view_ranks_by_lower_bound_alerts_and_draws(runs, cmapss_dir, tmp_path, caplog):
    """--sort lower writes the rows lowest lower bound first; --alert 60 lists exactly the units whose lower
    bound lies below 60; --plot writes the figure; the printed table shows open ends as "125+" and health names."""
    figure = tmp_path / "fleet.png"
    with caplog.at_level(logging.INFO, logger="grace_lit"):
        main([str(runs["cmapss"]), str(cmapss_dir / "test_FD001.txt"), "--out", str(tmp_path / "r.csv"), "--sort",
              "lower", "--alert", "60", "--plot", str(figure), "--device", "cpu"])
    ranked = pd.read_csv(tmp_path / "r.csv")
    unsorted = pd.read_csv(runs["cmapss"] / "predictions.csv")
    assert sorted(ranked["unit"]) == list(range(1, 101))
    expected = unsorted.sort_values(["rul_lo", "rul_pred"], kind="stable")["unit"].tolist()
    assert ranked["unit"].tolist() == expected
    flagged = unsorted[unsorted.rul_lo < 60]
    assert f"alert: {len(flagged)} of 100 rows have a lower bound below 60" in caplog.text
    alert_lines = caplog.text.split("have a lower bound below 60:\n")[1].splitlines()[1:len(flagged) + 1]
    assert [int(line.split()[0]) for line in alert_lines] == ranked["unit"][ranked.rul_lo < 60].tolist()
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    if ranked["rul_hi_open"].head(10).any():
        assert "125+]" in caplog.text
    assert " healthy" in caplog.text or " degrading" in caplog.text or " critical" in caplog.text


def test_data_that_does_not_fit_the_run_is_refused(runs, tmp_path):
    pd.read_csv(runs["test_csv"]).drop(columns=["sensor_s7"]).to_csv(tmp_path / "less.csv", index=False)
    with pytest.raises(GraceError) as err:
        predict(runs["table"], tmp_path / "less.csv")
    assert f"{tmp_path / 'less.csv'} lacks the columns ['sensor_s7'] that run {runs['table']}" in str(err.value)
    with pytest.raises(GraceError, match=r"lacks the columns \['unit', 'cycle', 's2'"):
        predict(runs["cmapss"], runs["test_csv"])


def test_data_from_operating_conditions_the_run_never_saw_is_refused(runs, cmapss_dir, tmp_path):
    """An FD001 run (one operating condition, standardised globally: no condition map to refuse by) on FD002's
    six conditions: refused by the settings' training range it keeps, unless --allow-unseen."""
    prep = json.loads((runs["cmapss"] / "preprocessing.json").read_text())
    assert prep["settings"] == ["setting1", "setting2", "setting3"] and len(prep["setting_range"]) == 3
    fd002 = cmapss_dir / "test_FD002.txt"
    with pytest.raises(GraceError) as err:
        predict(runs["cmapss"], fd002)
    message = str(err.value)
    assert f"{fd002}, row 1: operating setting setting1=" in message and "lies far outside its range" in message
    assert "Fix: predict with a run trained on them, or pass --allow-unseen" in message
    main([str(runs["cmapss"]), str(fd002), "--allow-unseen", "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    assert pd.read_csv(tmp_path / "p.csv")["unit"].nunique() == 259


def test_a_gpu_checkpoint_predicts_on_a_cpu(runs, cmapss_dir, data_cache, tmp_path):
    """The selected checkpoint rewritten so that every tensor claims to live on cuda:0, as one saved on a GPU."""
    gpu_run = tmp_path / "gpu_run"
    subprocess.run(["cp", "-r", str(runs["cmapss"]), str(gpu_run)], check=True)
    best = gpu_run / "checkpoints" / "best.ckpt"
    script = ("import sys, torch\n"
              "torch.serialization.register_package(0, lambda obj: 'cuda:0', lambda obj, location: None)\n"
              "ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n"
              "torch.save(ckpt, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(best)], check=True, env=cli_env(data_cache))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(best, weights_only=False)  # the file really asks for a GPU
    nasa = cmapss_dir / "test_FD001.txt"
    main([str(gpu_run), str(nasa), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    theirs = pd.read_csv(runs["cmapss"] / "predictions.csv")
    assert pd.read_csv(tmp_path / "p.csv")["rul_pred"].tolist() == theirs["rul_pred"].tolist()


# ---------------------------------------------------------------------------------- the README example
def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert found, f"README.md has no '<!-- {marker} -->' bash block"
    return found.group(1)


def test_readme_your_own_data_runs_start_to_finish(data_cache, tmp_path):
    """Every command of README "Your own data", run as written (python = this interpreter)."""
    env = {**cli_env(data_cache), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("readme:own-data")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    predicted = pd.read_csv(tmp_path / "pumps" / "predicted.csv")
    truth = pd.read_csv(tmp_path / "pumps" / "test_rul.csv")
    assert sorted(predicted["unit"]) == sorted(truth["pump"]) and predicted["rul_lo"].is_monotonic_increasing
    assert list(predicted.columns) == ["unit", "hours", "rul_pred", "rul_lo", "rul_hi", "rul_hi_open",
                                       "nominal_coverage", "health_pred", "health_name", "p_health_0",
                                       "p_health_1", "p_health_2"]
    assert predicted[["rul_lo", "rul_hi"]].notna().all().all() and (predicted.nominal_coverage == 0.9).all()
    assert (f"alert: {(predicted.rul_lo < 50).sum()} of {len(predicted)} rows have a lower bound below 50"
            in run.stdout + run.stderr)
    assert (tmp_path / "pumps" / "fleet.png").read_bytes()[:4] == b"\x89PNG"
    contract = json.loads((tmp_path / "pumps" / "onnx" / "contract.json").read_text())
    assert contract["preprocessing"]["conditions"] == ["load"]
    assert contract["interval"]["form"] == "mondrian" and "125+" in contract["interval"]["open_end"]
    assert (tmp_path / "pumps" / "onnx" / "model.onnx").is_file()
    # settings far from every training load regime are refused
    test = pd.read_csv(tmp_path / "pumps" / "test.csv")
    test.loc[5, "load"] = 2.0
    test.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(GraceError, match=r"odd.csv, row 6: operating settings \[2.0\].*farther from every"):
        predict(tmp_path / "runs" / "pumps", tmp_path / "odd.csv")
