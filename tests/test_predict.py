"""grace_lit.predict on finished runs: the run's own test predictions reproduced exactly, C-MAPSS through
dataset=table trains exactly as dataset=FD001, bad data refused, a GPU checkpoint on a CPU, the README example."""
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

from conftest import REPO, SENSORS, cli_env
from grace_lit.data.cmapss import read_nasa
from grace_lit.errors import GraceError
from grace_lit.intervals import calibrate
from grace_lit.predict import main, predict
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
    assert list(predictions.columns[:6]) == ["unit", "rul_true", "rul_pred", "health_true", "health_pred", "rul_lo"]
    assert (predictions.coverage == 0.9).all() and (predictions.rul_lo <= predictions.rul_hi).all()
    assert metrics["interval/form"] == "mondrian" and metrics["interval/calibration_points"] == 160
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
    for column in ("rul_lo", "rul_hi", "coverage"):  # the run's interval, from its calibration.csv
        assert mine[column].tolist() == theirs[column].tolist(), column
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


def test_a_seed_ensemble_averages_its_runs_and_refuses_runs_that_do_not_share_the_data(runs, tmp_path, caplog):
    """Two runs: the same run twice (spread 0, the mean is the run) through the CLI's RUN_DIR RUN_DIR DATA, on
    five test units; a table run with a C-MAPSS run is refused with the setting they do not share."""
    twin = tmp_path / "twin"
    shutil.copytree(runs["table"], twin)
    test = pd.read_csv(runs["test_csv"])
    five = [f"E{i:03d}" for i in range(1, 6)]
    test[test["engine"].isin(five)].to_csv(tmp_path / "five.csv", index=False)
    with caplog.at_level(logging.INFO, logger="grace_lit"):
        main([str(runs["table"]), str(twin), str(tmp_path / "five.csv"), "--out", str(tmp_path / "e.csv"),
              "--device", "cpu"])
    assert "mean of 2 runs" in caplog.text and "interval (spread)" in caplog.text  # interval.ensemble_form
    mine, theirs = pd.read_csv(tmp_path / "e.csv"), pd.read_csv(runs["table"] / "predictions.csv").head(5)
    assert mine["unit"].tolist() == five == theirs["unit"].tolist()
    np.testing.assert_allclose(mine["rul_pred"], theirs["rul_pred"], rtol=1e-6)
    assert (mine["rul_spread"] == 0).all() and list(mine.columns[2:7]) == ["rul_pred", "rul_spread", "rul_lo",
                                                                            "rul_hi", "coverage"]
    # no spread anywhere: every residual is divided by spread_floor alone, so the interval is plain's
    held = pd.read_csv(runs["table"] / "calibration.csv").query("is_last")
    plain = calibrate(held.rul_true, held.rul_pred, "plain", 0.9, [30.0, 70.0], low=0.0, high=125.0)
    np.testing.assert_allclose(np.stack([mine.rul_lo, mine.rul_hi], axis=1),
                               np.stack(plain.interval(mine.rul_pred), axis=1), rtol=1e-6)
    with pytest.raises(SystemExit):
        main([str(runs["table"]), str(runs["cmapss"]), str(tmp_path / "five.csv"), "--out", str(tmp_path / "x.csv")])
    assert (f"ERROR runs {runs['table']} and {runs['cmapss']} differ in dataset.name ('table' vs 'FD001')"
            in caplog.text)


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
    assert predicted["unit"].tolist() == truth["pump"].tolist()
    assert list(predicted.columns) == ["unit", "hours", "rul_pred", "rul_lo", "rul_hi", "coverage", "health_pred",
                                       "p_health_0", "p_health_1", "p_health_2"]
    assert predicted[["rul_lo", "rul_hi", "coverage"]].isna().all().all()  # protocol=paper: no interval, and why
    assert "no interval: protocol=paper has no held-out units" in run.stdout + run.stderr
    contract = json.loads((tmp_path / "pumps" / "onnx" / "contract.json").read_text())
    assert contract["preprocessing"]["conditions"] == ["load"]
    assert contract["interval"]["form"] is None and "protocol=paper" in contract["interval"]["note"]
    assert (tmp_path / "pumps" / "onnx" / "model.onnx").is_file()
    # settings far from every training load regime are refused
    test = pd.read_csv(tmp_path / "pumps" / "test.csv")
    test.loc[5, "load"] = 2.0
    test.to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(GraceError, match=r"odd.csv, row 6: operating settings \[2.0\].*farther from every"):
        predict(tmp_path / "runs" / "pumps", tmp_path / "odd.csv")
