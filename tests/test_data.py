"""C-MAPSS reading and preprocessing against the NASA README's figures and hand computations; the operating
condition as an input (dataset.condition_input) from the data through training, prediction and the ONNX export."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from conftest import REPO, SENSORS, cli_env
from grace_lit.data.cmapss import CMAPSS
from grace_lit.data.datamodule import RULDataModule
from grace_lit.data.windows import UnitSeries, WindowSet, health_labels
from grace_lit.errors import GraceError
from grace_lit.predict import main as predict_main
from grace_lit.rundir import load_preprocessing, load_run_config

# (train rows, train units, test rows, test units), from shared/data/README.md
COUNTS = {"FD001": (20631, 100, 13096, 100), "FD002": (53759, 260, 33991, 259),
          "FD003": (24720, 100, 16596, 100), "FD004": (61249, 249, 41214, 248)}


def reader(cache, name="FD001", **overrides) -> CMAPSS:
    args = dict(name=name, data_dir=None, cache_dir=str(cache), sensors=SENSORS, max_rul=125, window=30, stride=1,
                eval_stride=1, per_condition=name in ("FD002", "FD004"), condition_decimals=[0, 2, 0],
                health_thresholds=[30, 70], pad_mode="edge", select_metric="rmse_last", cap_test_rul=True)
    return CMAPSS(**{**args, **overrides})


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_row_and_unit_counts(data_cache, name):
    r = reader(data_cache, name)
    rows, units, test_rows, test_units = COUNTS[name]
    assert r.train_table.shape == (rows, 26) and len(r.train_units()) == units
    assert r.test_table.shape == (test_rows, 26) and len(r.test_rul) == test_units
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    # one window per row from row 30 of each training unit (stride 1); one last window per test unit
    assert len(splits.train) == rows - units * 29
    assert int(splits.test.is_last.sum()) == test_units


def test_test_targets_are_rul_file_capped(data_cache, cmapss_dir):
    r = reader(data_cache, "FD002")
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    truth = np.loadtxt(cmapss_dir / "RUL_FD002.txt")
    last = splits.test.is_last.numpy()
    np.testing.assert_array_equal(splits.test.rul.numpy()[last], np.minimum(truth, 125))
    np.testing.assert_array_equal(splits.test.unit.numpy()[last], np.arange(1, 260))


def test_train_rul_is_piecewise_linear(data_cache):
    r = reader(data_cache)
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    unit1 = splits.train.unit.numpy() == 1  # unit 1 of FD001 runs 192 cycles
    rul = splits.train.rul.numpy()[unit1]
    expected = np.minimum(192 - np.arange(30, 193), 125)  # windows end at cycles 30..192
    np.testing.assert_array_equal(rul, expected)


def test_normalisation_uses_fit_units_only(data_cache):
    r = reader(data_cache, "FD001")
    fit, held = np.arange(1, 81), np.arange(81, 101)
    splits = r.build(fit, held, seed=0)
    raw = r.train_table[np.isin(r.train_table[:, 0], fit)][:, [5 + int(s[1:]) - 1 for s in SENSORS]]
    mean, std = raw.mean(0), raw.std(0)
    std[std == 0] = 1
    series = splits.train.series.numpy()  # the fit units' rows, in order, unpadded
    np.testing.assert_allclose(series, (raw - mean) / std, atol=1e-4)
    assert set(splits.val.unit.unique().tolist()) == set(held.tolist())


def test_per_condition_standardisation_fd002(data_cache):
    r = reader(data_cache, "FD002")
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    keys = np.stack([np.round(r.train_table[:, 2]), np.round(r.train_table[:, 3], 2), np.round(r.train_table[:, 4])], 1)
    conditions = np.unique(keys, axis=0)
    assert len(conditions) == 6
    series = splits.train.series.numpy()
    for cond in conditions:
        rows = (keys == cond).all(1)
        np.testing.assert_allclose(series[rows].mean(0), 0, atol=1e-4)


def test_health_thresholds():
    np.testing.assert_array_equal(health_labels(np.array([0, 29, 30, 69, 70, 125]), [30, 70]), [2, 2, 1, 1, 0, 0])
    # the spec's demo batch y = (20, 80, 5, 100) under its stated rule (its table says 80 -> 1; see README)
    np.testing.assert_array_equal(health_labels(np.array([20, 80, 5, 100]), [30, 70]), [2, 0, 2, 0])


def test_short_units_are_front_padded():
    feats = np.arange(12, dtype=np.float32).reshape(4, 3)  # a 4-row unit, window 6
    ws = WindowSet([UnitSeries(7, feats, np.array([9, 8, 7, 6], dtype=np.float32))], window=6, stride=1,
                   pad_mode="edge", health_thresholds=[30, 70])
    x, rul, health, unit, last = ws.__getitems__([0])
    np.testing.assert_array_equal(x[0].numpy(), np.concatenate([np.repeat(feats[:1], 2, 0), feats]))
    assert rul.item() == 6 and unit.item() == 7 and bool(last.item())


def test_windows_never_cross_units():
    a = UnitSeries(1, np.zeros((10, 1), np.float32), np.arange(10, dtype=np.float32)[::-1].copy())
    b = UnitSeries(2, np.ones((8, 1), np.float32), np.arange(8, dtype=np.float32)[::-1].copy())
    ws = WindowSet([a, b], window=5, stride=2, pad_mode="edge", health_thresholds=[30, 70])
    x, rul, _, unit, last = ws.__getitems__(list(range(len(ws))))
    for window, u in zip(x, unit):
        assert (window == (u - 1)).all()  # unit 1 is all zeros, unit 2 all ones
    # anchored at each unit's last row: ends at rows 9, 7, 5 (unit 1) and 7, 5 (unit 2)
    assert rul.tolist() == [4, 2, 0, 2, 0] and last.tolist() == [False, False, True, False, True]


def test_window_longer_than_shortest_unit_is_rejected(data_cache):
    r = reader(data_cache, "FD001", window=200)  # FD001's shortest training unit has 128 cycles
    with pytest.raises(GraceError, match="shortest training unit.*128"):
        r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)


def test_holdout_split_is_seeded_and_disjoint(data_cache):
    dm = RULDataModule(reader(data_cache), "holdout", 0.2, batch_size=64, eval_batch_size=256, seed=3)
    dm.setup()
    train_units = set(dm.splits.train.unit.unique().tolist())
    val_units = set(dm.splits.val.unit.unique().tolist())
    assert len(val_units) == 20 and not train_units & val_units
    again = RULDataModule(reader(data_cache), "holdout", 0.2, batch_size=64, eval_batch_size=256, seed=3)
    again.setup()
    assert set(again.splits.val.unit.unique().tolist()) == val_units
    # held-out units are cut before failure, so their last-window RUL is not always 0
    assert (dm.splits.val.rul[dm.splits.val.is_last] > 0).any()


def test_loaders_shuffle_only_training(data_cache):
    dm = RULDataModule(reader(data_cache), "paper", 0.0, batch_size=64, eval_batch_size=256, seed=0)
    dm.setup()
    first = next(iter(dm.val_dataloader()))
    units = first[3]
    assert units[0] == 1 and bool((units[1:] >= units[:-1]).all())  # test windows in unit / time order
    a, b = next(iter(dm.train_dataloader())), next(iter(dm.train_dataloader()))
    assert not np.array_equal(a[1].numpy(), b[1].numpy())


# FD002's six operating conditions (altitude in kft, Mach, throttle resolver angle), as the NASA settings round to
# them at decimals [0, 2, 0], in order of altitude: the one-hot's columns
FD002_CONDITIONS = np.array([[0, 0, 100], [10, 0.25, 100], [20, 0.7, 100], [25, 0.62, 60], [35, 0.84, 100],
                             [42, 0.84, 100]])


def one_hot_of(table: np.ndarray) -> np.ndarray:
    rounded = np.stack([np.round(table[:, 2]), np.round(table[:, 3], 2), np.round(table[:, 4])], 1)
    match = (rounded[:, None, :] == FD002_CONDITIONS[None]).all(2)
    assert (match.sum(1) == 1).all()  # every row in exactly one of the six
    return match.astype(np.float32)


def test_condition_input_fd002_is_a_one_hot_of_the_rounded_settings(data_cache):
    """20 inputs: the 14 sensors exactly as without the option, then the row's condition, on the training rows
    (the windows' series) and on the test table as grace_lit.predict transforms it."""
    plain = reader(data_cache, "FD002").build(np.arange(1, 261), np.array([], dtype=np.int64), seed=0)
    r = reader(data_cache, "FD002", condition_input=True, condition_count=6)
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    series = splits.train.series.numpy()  # the training rows in order (no unit is shorter than the window)
    assert series.shape == (53759, 20) and splits.preprocessing.n_inputs == 20
    np.testing.assert_array_equal(series[:, :14], plain.train.series.numpy())
    np.testing.assert_array_equal(series[:, 14:], one_hot_of(r.train_table))
    test = splits.preprocessing.transform(r.test_table[:, [5 + int(s[1:]) - 1 for s in SENSORS]],
                                          r.test_table[:, 2:5])
    np.testing.assert_array_equal(test[:, 14:], one_hot_of(r.test_table))


def test_condition_input_is_checked_against_the_fitted_conditions(data_cache):
    r = reader(data_cache, "FD002", condition_input=True, condition_count=5)
    with pytest.raises(GraceError) as err:
        r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    assert str(err.value) == ("dataset.condition_count=5, but the fitted units of FD002 show 6 operating conditions "
                              "(columns ['setting1', 'setting2', 'setting3']); with dataset.condition_input=true the "
                              "model's input width is dataset.sensors plus condition_count. Fix: "
                              "dataset.condition_count=6.")
    with pytest.raises(GraceError, match="^dataset.condition_input=true appends a one-hot .* no condition map"):
        reader(data_cache, "FD001", condition_input=True)  # per_condition=false: one global scaler


def test_condition_input_trains_and_predicts_end_to_end(data_cache, cmapss_dir, tmp_path):
    """python -m grace_lit.train dataset=FD002 dataset.condition_input=true, one tiny epoch: the model takes 20
    inputs, grace_lit.predict on the run directory reproduces its test predictions, the ONNX contract states 20."""
    command = ["dataset=FD002", "dataset.condition_input=true", "model=small", "trainer.max_epochs=1",
               "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", f"hydra.run.dir={tmp_path}"]
    run = subprocess.run([sys.executable, "-m", "grace_lit.train", *command], cwd=REPO, env=cli_env(data_cache),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    cfg = load_run_config(tmp_path)
    assert instantiate(cfg.model).backbone.cnn[0].in_channels == 20
    prep = load_preprocessing(tmp_path)
    assert prep.condition_input and len(prep.keys) == 6
    predict_main([str(tmp_path), str(cmapss_dir / "test_FD002.txt"), "--out", str(tmp_path / "p.csv"),
                  "--device", "cpu"])
    mine, theirs = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "predictions.csv")
    assert len(mine) == 259 and mine["rul_pred"].tolist() == theirs["rul_pred"].tolist()
    if importlib.util.find_spec("onnx") is not None:  # the optional `export` extra
        predict_main([str(tmp_path), "--export", "onnx", "--out", str(tmp_path / "export")])
        contract = json.loads((tmp_path / "export" / "contract.json").read_text())
        assert contract["input"]["shape"] == ["batch", 30, 20] and contract["preprocessing"]["condition_input"]
