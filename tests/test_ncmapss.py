"""N-CMAPSS DS02 reader on a generated file with the real schema, checked against plain h5py/numpy reads.

The reader streams in chunks that deliberately split flights (``chunk_rows=997``), so the per-flight
downsampling has to carry across chunk boundaries; every expectation below is computed here independently from
the whole file (pandas ``cumcount`` for the flight offsets, numpy statistics for the scaling).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO, cli_env, composed
from grace_lit.config import validate
from grace_lit.data.datamodule import RULDataModule
from grace_lit.data.ncmapss import NCMAPSS
from grace_lit.data.synthetic_ncmapss import generate
from grace_lit.errors import GraceError

FILENAME = "N-CMAPSS_DS02-006.h5"
PRESETS = {name: list(OmegaConf.load(REPO / "conf" / "dataset" / "features" / f"{name}.yaml").sensors)
           for name in ("ncmapss_20feat", "ncmapss_32feat")}
DEV_UNITS, TEST_UNITS = [2, 5, 10, 16, 18, 20], [11, 14, 15]
CYCLES, WINDOW, DOWNSAMPLE = 10, 20, 10


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("ncmapss") / FILENAME, cycles=CYCLES, flight_rows=150, seed=0)


@pytest.fixture(scope="module")
def raw(synthetic: Path) -> dict[str, dict[str, np.ndarray]]:
    """The whole file as numpy, plus the independently computed downsampling mask per split."""
    out = {}
    with h5py.File(synthetic, "r") as f:
        names = {g: [n.decode() for n in f[f"{g}_var"][()]] for g in ("W", "X_s", "X_v", "A")}
        for split in ("dev", "test"):
            a = f[f"A_{split}"][()]
            offset = pd.DataFrame({"u": a[:, 0], "c": a[:, 1]}).groupby(["u", "c"]).cumcount().to_numpy()
            columns = {n: f[f"{g}_{split}"][:, i] for g in ("W", "X_s", "X_v") for i, n in enumerate(names[g])}
            out[split] = {"names": names, "columns": columns, "unit": a[:, 0], "cycle": a[:, 1], "hs": a[:, 3],
                          "y": f[f"Y_{split}"][:, 0], "keep": offset % DOWNSAMPLE == 0}
    return out


def reader(path: Path | None, **overrides) -> NCMAPSS:
    args = dict(name="DS02", path=None if path is None else str(path), data_dir="/nonexistent", filename=FILENAME,
                sensors=PRESETS["ncmapss_20feat"], downsample=DOWNSAMPLE, chunk_rows=997, max_rul=88,
                window=WINDOW, stride=1, eval_stride=1, health_labels="rul", health_thresholds=[3, 6],
                pad_mode="edge", select_metric="rmse_all", cap_test_rul=True)
    return NCMAPSS(**{**args, **overrides})


def expected_features(raw: dict, split: str, sensors: list[str]) -> np.ndarray:
    cols = raw[split]["columns"]
    return np.stack([cols[s][raw[split]["keep"]] for s in sensors], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------------ the file
def test_generated_file_has_the_schema(synthetic, raw):
    with h5py.File(synthetic, "r") as f:
        assert len(f.keys()) == 17 and not any(f[k].attrs for k in f)
        for split in ("dev", "test"):
            n = f[f"A_{split}"].shape[0]
            for group, width in {"W": 4, "X_s": 14, "X_v": 14, "T": 10, "A": 4}.items():
                assert f[f"{group}_{split}"].shape == (n, width) and f[f"{group}_{split}"].dtype == np.float64
                assert f[f"{group}_{split}"].compression is None
            assert f[f"Y_{split}"].shape == (n, 1) and f[f"Y_{split}"].dtype == np.int64
        assert f["W_var"][()].dtype.kind == "S"
        assert [n.decode() for n in f["T_var"][()]][6] == "HPT_eff_mod"
    assert raw["dev"]["names"]["W"] == ["alt", "Mach", "TRA", "T2"]
    for split, units in (("dev", DEV_UNITS), ("test", TEST_UNITS)):
        r = raw[split]
        assert np.unique(r["unit"]).tolist() == units
        key = r["unit"] * 1000 + r["cycle"]
        assert (np.diff(key) >= 0).all()  # sorted by unit, then cycle
        remaining = pd.Series(r["cycle"]).groupby(r["unit"]).transform("max").to_numpy() - r["cycle"]
        np.testing.assert_array_equal(r["y"], remaining)  # Y counts down to 0 at each unit's last cycle
        for u in units:
            hs = r["hs"][r["unit"] == u]
            assert hs[0] == 1 and hs[-1] == 0 and (np.diff(hs) <= 0).all()  # healthy, then one switch to 0


def test_presets_are_the_spec_groups(raw):
    names = raw["dev"]["names"]
    assert PRESETS["ncmapss_20feat"] == names["W"] + names["X_s"] + ["T40", "P30"]
    assert PRESETS["ncmapss_32feat"] == names["W"] + names["X_s"] + names["X_v"]


# ------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_selected_columns_as_float32(synthetic, raw, preset):
    r = reader(synthetic, sensors=PRESETS[preset])
    for split, part in (("dev", r.dev), ("test", r.test)):
        assert part.features.dtype == np.float32
        np.testing.assert_array_equal(part.features, expected_features(raw, split, PRESETS[preset]))
        np.testing.assert_array_equal(part.unit, raw[split]["unit"][raw[split]["keep"]])
        np.testing.assert_array_equal(part.rul, raw[split]["y"][raw[split]["keep"]])
    assert r.n_features == len(PRESETS[preset])


def test_columns_in_configured_order(synthetic, raw):
    sensors = ["P30", "alt", "SmHPC", "Wf"]  # across three groups, not in file order
    r = reader(synthetic, sensors=sensors)
    np.testing.assert_array_equal(r.test.features, expected_features(raw, "test", sensors))


def test_downsampling_by_hand(synthetic, raw):
    r = reader(synthetic, sensors=["alt", "T24"])
    dev = raw["dev"]
    first_flight = int(((dev["unit"] == 2) & (dev["cycle"] == 1)).sum())  # seconds of unit 2's first flight
    kept_first = -(-first_flight // DOWNSAMPLE)  # its rows at seconds 0, 10, 20, ...
    for i, row in [(0, 0), (1, 10), (2, 20), (kept_first - 1, (kept_first - 1) * 10), (kept_first, first_flight),
                   (kept_first + 1, first_flight + 10)]:
        assert r.dev.features[i].tolist() == [np.float32(dev["columns"]["alt"][row]),
                                               np.float32(dev["columns"]["T24"][row])]
    assert r.dev.cycle[kept_first - 1] == 1 and r.dev.cycle[kept_first] == 2
    flights = pd.Series(1, index=pd.MultiIndex.from_arrays([dev["unit"], dev["cycle"]])).groupby(level=[0, 1]).size()
    assert len(r.dev.unit) == int((-(-flights // DOWNSAMPLE)).sum())


def test_chunk_size_does_not_change_the_result(synthetic):
    small, whole = reader(synthetic, chunk_rows=7), reader(synthetic, chunk_rows=10 ** 6)
    np.testing.assert_array_equal(small.dev.features, whole.dev.features)
    np.testing.assert_array_equal(small.test.cycle, whole.test.cycle)
    every = reader(synthetic, downsample=1, sensors=["Mach"])  # keeps every second
    with h5py.File(synthetic, "r") as f:
        np.testing.assert_array_equal(every.dev.features[:, 0], f["W_dev"][:, 1].astype(np.float32))


# ------------------------------------------------------------------------------------------------ windows
def test_unit_split_and_windows_within_units(synthetic, raw):
    r = reader(synthetic)
    assert r.train_units().tolist() == DEV_UNITS
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    assert splits.val is None
    assert splits.test.unit.unique().tolist() == TEST_UNITS
    for part, ws in (("dev", splits.train), ("test", splits.test)):
        unit = raw[part]["unit"][raw[part]["keep"]]
        y = raw[part]["y"][raw[part]["keep"]]
        starts, ends = ws.starts.numpy(), ws.starts.numpy() + WINDOW - 1
        assert (unit[starts] == ws.unit.numpy()).all() and (unit[ends] == ws.unit.numpy()).all()
        np.testing.assert_array_equal(ws.rul.numpy(), y[ends])  # target = Y at the window's last row
        per_unit = pd.Series(unit).value_counts().sort_index()
        assert len(ws) == int((per_unit - WINDOW + 1).sum())  # stride 1: every row from row WINDOW on
        assert int(ws.is_last.sum()) == len(per_unit) and (ws.rul[ws.is_last] == 0).all()


def test_scaling_is_fitted_on_the_fitted_dev_units_only(synthetic, raw):
    r = reader(synthetic)
    fit, held = np.array([2, 5, 10, 16, 18]), np.array([20])
    splits = r.build(fit, held, seed=0)
    dev = expected_features(raw, "dev", r.sensors).astype(np.float64)
    dev_units = raw["dev"]["unit"][raw["dev"]["keep"]]
    fitted = dev[np.isin(dev_units, fit)]
    mean, std = fitted.mean(axis=0), fitted.std(axis=0)
    np.testing.assert_allclose(splits.train.series.numpy(), (fitted - mean) / std, atol=2e-4)
    np.testing.assert_allclose(splits.val.series.numpy(), (dev[dev_units == 20] - mean) / std, atol=2e-4)
    test = expected_features(raw, "test", r.sensors).astype(np.float64)
    np.testing.assert_allclose(splits.test.series.numpy(), (test - mean) / std, atol=2e-4)
    everything = dev.mean(axis=0)  # a scaler fitted on all dev units would centre on this instead
    assert np.abs((everything - mean) / std).max() > 1e-2


def test_labels_rul_cap_thresholds_and_hs(synthetic, raw):
    r = reader(synthetic, max_rul=7)
    splits = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0)
    test = splits.test
    y = raw["test"]["y"][raw["test"]["keep"]][test.starts.numpy() + WINDOW - 1]
    np.testing.assert_array_equal(test.rul.numpy(), np.minimum(y, 7))
    last = test.is_last.numpy()  # the raw truth of each test unit's last window: the file's Y there, uncapped
    assert splits.test_rul_raw == dict(zip(test.unit.numpy()[last].tolist(), y[last].astype(float).tolist()))
    np.testing.assert_array_equal(test.health.numpy(), (y < 3).astype(int) + (y < 6).astype(int))
    hs = reader(synthetic, health_labels="hs").build(r.train_units(), np.array([], dtype=np.int64), seed=0).test
    flag = raw["test"]["hs"][raw["test"]["keep"]][hs.starts.numpy() + WINDOW - 1]
    np.testing.assert_array_equal(hs.health.numpy(), 1 - flag)
    assert set(hs.health.unique().tolist()) == {0, 1}


def test_holdout_takes_whole_units_run_to_failure(synthetic, raw):
    dm = RULDataModule(reader(synthetic), "holdout", 0.2, batch_size=64, eval_batch_size=256, seed=3)
    dm.setup()
    train, val = set(dm.splits.train.unit.unique().tolist()), dm.splits.val.unit.unique().tolist()
    assert len(val) == 1 and not train & set(val) and train | set(val) == set(DEV_UNITS)
    rows = int((raw["dev"]["unit"][raw["dev"]["keep"]] == val[0]).sum())
    assert len(dm.splits.val) == rows - WINDOW + 1  # every row of the held-out unit, none cut away
    assert dm.splits.val.rul[dm.splits.val.is_last].tolist() == [0.0]


# ------------------------------------------------------------------------------------------------ faults
def test_missing_file_says_where_to_get_and_put_it(tmp_path):
    """The CLI prints this as its one ERROR line and exits 1, as tests/test_faults.py shows for any data fault."""
    with pytest.raises(GraceError) as err:
        reader(None, data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / FILENAME) in message and "does not exist" in message
    for part in ("Turbofan Engine Degradation Simulation Data Set-2", "Prognostics Center of Excellence", "2.3 GiB",
                 "paths.data_dir", "dataset.path="):
        assert part in message
    assert message.count("Fix:") == 1


def _drop(f: h5py.File, key: str) -> None:
    del f[key]


def _retype(f: h5py.File, key: str) -> None:
    data = f[key][()]
    del f[key]
    f[key] = data.astype(np.float32)


def _narrow(f: h5py.File, key: str) -> None:
    data = f[key][()]
    del f[key]
    f[key] = data[:, :-1]


def _rename(f: h5py.File, key: str) -> None:
    names = f[key][()]
    names[0] = b"Xyz"
    f[key][...] = names


def _unsort(f: h5py.File, key: str) -> None:
    a = f[key][()]
    a[[100, 5000]] = a[[5000, 100]]
    f[key][...] = a


@pytest.mark.parametrize("damage, key, expected", [
    (_drop, "X_s_test", ["dataset 'X_s_test' is missing (expected (n, 14) float64)"]),
    (_drop, "T_dev", ["dataset 'T_dev' is missing (expected (n, 10) float64)"]),
    (_retype, "Y_dev", ["dataset 'Y_dev' is (", ", 1) float32, expected (n, 1) int64"]),
    (_narrow, "W_test", ["dataset 'W_test' is (", ", 3) float64, expected (n, 4) float64"]),
    (_rename, "X_v_var", ["name array 'X_v_var' holds ['Xyz', 'P30'", "expected the 14 names ['T40', 'P30'"]),
    (_drop, "A_var", ["name array 'A_var' is missing"]),
    (_unsort, "A_dev", ["dataset 'A_dev', row 101 (0-based): unit 2 cycle 1 breaks the order"]),
])
def test_damaged_file_names_file_dataset_and_fix(synthetic, tmp_path, damage, key, expected):
    copy = tmp_path / FILENAME
    shutil.copy(synthetic, copy)
    with h5py.File(copy, "r+") as f:
        damage(f, key)
    with pytest.raises(GraceError) as err:
        reader(copy)
    message = str(err.value)
    assert str(copy) in message and f"Fix: download {FILENAME} again" in message
    assert all(part in message for part in expected), message


def test_not_hdf5(tmp_path):
    copy = tmp_path / FILENAME
    copy.write_bytes(b"<html>404</html>")
    with pytest.raises(GraceError, match="cannot be read as HDF5"):
        reader(copy)


# ------------------------------------------------------------------------------------------------ config + CLI
def test_config_presets_models_and_validation():
    for overrides, n, states in ((["dataset=DS02"], 20, 3), (["dataset=DS02", "model=ncmapss_32feat"], 32, 3),
                                 (["dataset=DS02", "model=ncmapss_20feat"], 20, 3),
                                 (["dataset=DS02", "model=small", "dataset/features=ncmapss_32feat"], 32, 3),
                                 (["dataset=DS02", "model=small", "dataset.health_labels=hs"], 20, 2)):
        cfg = composed(overrides)
        validate(cfg)
        assert len(cfg.dataset.sensors) == cfg.model.backbone.input_size == n
        assert cfg.model.num_health_states == states and cfg.monitor == "test/rmse_all"
    assert composed(["dataset=DS02", "model=ncmapss_32feat"]).dataset.sensors == PRESETS["ncmapss_32feat"]
    with pytest.raises(GraceError) as err:
        validate(composed(["dataset=DS02", "dataset.sensors=[alt,T24,fan_eff_mod]", "dataset.health_labels=x"]))
    message = str(err.value)
    assert "unknown: ['fan_eff_mod']" in message and "dataset.health_labels='x': must be one of" in message


def train(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grace_lit.train", *args, f"hydra.run.dir={tmp_path}"], cwd=REPO,
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_cli_one_epoch_on_the_synthetic_file(synthetic, tmp_path):
    run = train(["dataset=DS02", f"dataset.path={synthetic}", "model=small", "trainer=cpu", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=3"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["status"], metrics["dataset"], metrics["epochs_run"]) == ("completed", "DS02", 1)
    assert metrics["selection_metric"] == "test/rmse_all"
    assert metrics["selection_score"] == pytest.approx(metrics["test/rmse_all"], rel=1e-6)  # paper: test selects
    for key in ("test/rmse_all", "test/nasa_all", "test/health_acc_all"):
        assert np.isfinite(metrics[key]) and metrics[key] >= 0
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["unit"].tolist() == TEST_UNITS and (predictions["rul_true"] == 0).all()
