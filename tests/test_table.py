"""dataset=table: users' CSV / Parquet tables onto the one pipeline; C-MAPSS as a table gives C-MAPSS's windows."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SENSORS, composed
from grace_lit.config import validate
from grace_lit.data.cmapss import COLUMNS, read_nasa
from grace_lit.data.datamodule import RULDataModule
from grace_lit.data.preprocess import Preprocessing, default_decimals, truncation_lengths
from grace_lit.data.synthetic_table import LOADS, generate
from grace_lit.data.table import Table
from grace_lit.errors import GraceError
from test_data import reader

NONE = np.array([], dtype=np.int64)
RENAME = {"unit": "engine", "cycle": "t", "setting1": "alt", "setting2": "mach", "setting3": "tra",
          **{s: f"sensor_{s}" for s in SENSORS}}
PUMP_FEATURES = ["temperature", "pressure", "vibration"]


def table(train: Path, **overrides) -> Table:
    args = dict(name="table", train=str(train), test=None, test_rul=None, unit="pump", time="hours",
                features=PUMP_FEATURES, sensors=PUMP_FEATURES, conditions=[], condition_mode="round",
                condition_decimals=[], condition_clusters=3, condition_seed=0, condition_tolerance=2.0,
                test_fraction=0.25, test_seed=0, max_rul=125, window=20, stride=1, eval_stride=1,
                health_thresholds=[30, 70], pad_mode="edge", cap_test_rul=True, select_metric="rmse_last")
    return Table(**{**args, **overrides})


def nasa_as_csv(table: np.ndarray, path: Path, seed: int) -> Path:
    """A NASA table under other column names, string unit ids, the units' rows interleaved (each in time order)."""
    frame = pd.DataFrame(table, columns=COLUMNS).rename(columns=RENAME)
    frame["engine"] = [f"E{int(u):03d}" for u in frame["engine"]]
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].sort_values("t", kind="stable")
    frame.to_csv(path, index=False)
    return path


def cmapss_as_table(cmapss_dir: Path, out: Path, name: str, **overrides) -> Table:
    train = nasa_as_csv(read_nasa(cmapss_dir / f"train_{name}.txt"), out / "train.csv", seed=0)
    test = nasa_as_csv(read_nasa(cmapss_dir / f"test_{name}.txt"), out / "test.csv", seed=1)
    rul = np.loadtxt(cmapss_dir / f"RUL_{name}.txt")
    pd.DataFrame({"engine": [f"E{i:03d}" for i in range(1, len(rul) + 1)], "rul": rul}).to_csv(out / "rul.csv",
                                                                                              index=False)
    features = [f"sensor_{s}" for s in SENSORS]
    return table(train, test=str(test), test_rul=str(out / "rul.csv"), unit="engine", time="t", features=features,
                 sensors=features, window=30, **overrides)


@pytest.fixture(scope="module")
def pumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("pumps"), units=8, test_units=3, seed=0)


def test_cmapss_as_a_messy_csv_gives_the_same_windows_scaling_and_targets(data_cache, cmapss_dir, tmp_path):
    ref = reader(data_cache, "FD002")
    mine = cmapss_as_table(cmapss_dir, tmp_path, "FD002", conditions=["alt", "mach", "tra"],
                           condition_decimals=[0, 2, 0])
    a, b = (r.build(r.train_units(), NONE, seed=0) for r in (ref, mine))
    for part in ("train", "test"):
        for key in ("series", "starts", "rul", "health", "is_last"):
            assert getattr(getattr(a, part), key).equal(getattr(getattr(b, part), key)), (part, key)
        # string ids E001.. become 0.. in sorted order, named back by the runs
        np.testing.assert_array_equal(getattr(b, part).unit.numpy() + 1, getattr(a, part).unit.numpy())
    assert a.preprocessing.mean == b.preprocessing.mean and a.preprocessing.std == b.preprocessing.std
    assert a.preprocessing.keys == b.preprocessing.keys and len(b.preprocessing.keys) == 6
    assert mine.test.name(0) == "E001"


def test_irregular_time_rul_is_the_time_to_the_last_row(pumps):
    t = table(pumps / "fleet.csv", test=str(pumps / "test.csv"), test_rul=str(pumps / "test_rul.csv"))
    splits = t.build(t.train_units(), NONE, seed=0)
    frame = pd.read_csv(pumps / "fleet.csv")
    hours = frame[frame["pump"] == "pump-003"]["hours"].to_numpy()
    assert len(np.unique(np.diff(hours))) > 1  # irregular steps
    code = {v: k for k, v in t.train.names.items()}["pump-003"]
    mask = splits.train.unit.numpy() == code
    np.testing.assert_allclose(splits.train.rul.numpy()[mask], np.minimum(hours[-1] - hours[19:], 125), rtol=1e-6)
    truth = pd.read_csv(pumps / "test_rul.csv")["rul"].to_numpy()
    np.testing.assert_allclose(splits.test.rul.numpy()[splits.test.is_last.numpy()], np.minimum(truth, 125),
                               rtol=1e-6)


def test_without_a_test_file_seeded_whole_units_are_cut(pumps):
    t = table(pumps / "fleet.csv", test_fraction=0.25, test_seed=5)
    full = pd.read_csv(pumps / "fleet.csv")
    test_names = sorted({t.test.name(int(u)) for u in t.test.unit})
    train_names = sorted({t.train.name(int(u)) for u in t.train.unit})
    assert len(test_names) == 2 and not set(test_names) & set(train_names)
    assert sorted(test_names + train_names) == sorted(full["pump"].unique())
    lengths = [int((full["pump"] == n).sum()) for n in test_names]
    cuts = truncation_lengths(np.array(lengths), 20, 5)[:, 0]
    for name, n, kept in zip(test_names, lengths, cuts):
        hours = full[full["pump"] == name]["hours"].to_numpy()
        code = {v: k for k, v in t.train.names.items()}[name]
        assert int((t.test.unit == code).sum()) == kept < n + 1
        assert t.test_rul[code] == hours[-1] - hours[kept - 1]  # life left after the cut
    again = table(pumps / "fleet.csv", test_fraction=0.25, test_seed=5)
    np.testing.assert_array_equal(again.test.unit, t.test.unit)


def test_test_rul_as_a_column(pumps, tmp_path):
    test = pd.read_csv(pumps / "test.csv")
    rul = pd.read_csv(pumps / "test_rul.csv").set_index("pump")["rul"]
    last = test.groupby("pump")["hours"].transform("max")
    test["life_left"] = test["pump"].map(rul) + last - test["hours"]  # per row; the last row's value counts
    test.to_csv(tmp_path / "test.csv", index=False)
    t = table(pumps / "fleet.csv", test=str(tmp_path / "test.csv"), test_rul="life_left")
    by_name = {t.test.name(u): r for u, r in t.test_rul.items()}
    assert by_name == pytest.approx(rul.to_dict())


def test_kmeans_conditions_find_the_load_regimes(pumps):
    t = table(pumps / "fleet.csv", conditions=["load"], condition_mode="kmeans", condition_clusters=3)
    splits = t.build(t.train_units(), NONE, seed=0)
    prep = splits.preprocessing
    centres = np.asarray(prep.keys)[:, 0] * prep.setting_scale[0]
    np.testing.assert_allclose(centres, LOADS, atol=0.01)  # sorted centres: the three regimes
    regime = np.abs(t.train.conditions[:, :1] - np.asarray(LOADS)[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(prep.groups(t.train.conditions), regime)
    series = splits.train.series.numpy()
    for g in range(3):  # each condition standardised on its own (the training rows, unpadded, in order)
        np.testing.assert_allclose(series[regime == g].mean(axis=0), 0, atol=1e-4)
    with pytest.raises(GraceError, match="condition_tolerance"):
        prep.transform(t.train.features[:2], np.array([[0.45], [0.3]]))


def test_preprocessing_json_round_trips_exactly(pumps):
    t = table(pumps / "fleet.csv", conditions=["load"], condition_mode="kmeans", condition_clusters=3)
    prep = t.build(t.train_units(), NONE, seed=0).preprocessing
    text = prep.to_json()
    again = Preprocessing.from_json(text)
    assert again == prep and json.loads(text)["features"] == PUMP_FEATURES
    np.testing.assert_array_equal(again.transform(t.test.features, t.test.conditions),
                                  prep.transform(t.test.features, t.test.conditions))


def test_parquet_reads_like_csv(pumps, tmp_path):
    pytest.importorskip("pyarrow")
    pd.read_csv(pumps / "fleet.csv").to_parquet(tmp_path / "fleet.parquet")
    a, b = table(pumps / "fleet.csv"), table(tmp_path / "fleet.parquet")
    np.testing.assert_array_equal(a.train.features, b.train.features)
    np.testing.assert_array_equal(a.test.unit, b.test.unit)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "fleet.parquet").write_bytes(b"PAR1")

    def missing(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", missing)
    with pytest.raises(GraceError, match=r"needs pyarrow.*pip install 'grace-lit\[table\]'"):
        table(tmp_path / "fleet.parquet")


# ------------------------------------------------------------------------------ malformed tables
def edited(pumps: Path, tmp_path: Path, edit) -> Path:
    frame = pd.read_csv(pumps / "fleet.csv", dtype=str, keep_default_na=False)
    path = tmp_path / "fleet.csv"
    edit(frame).to_csv(path, index=False)
    return path


def setting(row: int, column: str, value: str):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame
    return edit


def rows_of(frame: pd.DataFrame, name: str) -> np.ndarray:
    return np.flatnonzero(frame["pump"] == name)


def duplicate_time(frame: pd.DataFrame) -> pd.DataFrame:
    i, j = rows_of(frame, "pump-002")[4:6]
    frame.loc[j, "hours"] = frame.loc[i, "hours"]
    return frame


def second_row_of(pumps: Path, name: str, k: int) -> int:
    return int(rows_of(pd.read_csv(pumps / "fleet.csv"), name)[k]) + 1  # 1-based data row


@pytest.mark.parametrize("edit, expected", [
    (lambda f: f.drop(columns=["pressure"]), "header: column 'pressure' (dataset.features) is missing"),
    (lambda f: f.drop(columns=["hours"]), "header: column 'hours' (dataset.time) is missing"),
    (setting(6, "temperature", "abc"), "row 7 (line 8), column 'temperature' (dataset.features) holds 'abc', "
                                       "not a number"),
    (setting(9, "vibration", "inf"), "row 10 (line 11), column 'vibration' (dataset.features) holds 'inf', "
                                     "not finite"),
    (setting(3, "pressure", "nan"), "row 4 (line 5), column 'pressure' (dataset.features) holds 'nan', not finite"),
    (setting(11, "hours", ""), "row 12 (line 13), column 'hours' (dataset.time) is empty"),
    (setting(2, "pump", ""), "row 3 (line 4), column 'pump' (dataset.unit) is empty"),
])
def test_malformed_table_names_file_row_column_and_fix(pumps, tmp_path, edit, expected):
    path = edited(pumps, tmp_path, edit)
    with pytest.raises(GraceError) as err:
        table(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "Fix:" in message


def test_rows_in_any_order_are_sorted_by_time_within_each_unit(pumps, tmp_path):
    shuffled = edited(pumps, tmp_path, lambda f: f.sample(frac=1.0, random_state=3))  # as a database exports them
    a, b = table(pumps / "fleet.csv"), table(shuffled)
    for part in ("train", "test"):
        for key in ("unit", "time", "features"):
            np.testing.assert_array_equal(getattr(getattr(a, part), key), getattr(getattr(b, part), key))
    assert a.test_rul == b.test_rul


def test_a_time_repeated_within_a_unit_names_both_rows(pumps, tmp_path):
    path = edited(pumps, tmp_path, duplicate_time)
    with pytest.raises(GraceError) as err:
        table(path)
    first, second = second_row_of(pumps, "pump-002", 4), second_row_of(pumps, "pump-002", 5)
    assert (f"{path}, row {second} (line {second + 1}), column 'hours' (dataset.time): unit pump-002 has time "
            f"{pd.read_csv(pumps / 'fleet.csv')['hours'][first - 1]:g} twice, on row {first} (line {first + 1}) and "
            f"row {second} (line {second + 1}). Fix:") in str(err.value)


def test_a_table_with_only_a_header_says_so(pumps, tmp_path):
    path = edited(pumps, tmp_path, lambda f: f.iloc[:0])
    with pytest.raises(GraceError, match=r"fleet.csv has no rows \(only a header\)\. Fix:"):
        table(path)  # not a test_fraction problem
    with pytest.raises(GraceError, match=r"dataset.features='temperature' is one string, not a list"):
        table(pumps / "fleet.csv", features="temperature")  # not "column 't' is missing"


def test_conditions_without_decimals_get_them_from_the_data_and_say_so(pumps, cmapss_dir, caplog):
    settings = read_nasa(cmapss_dir / "train_FD002.txt")[:, 2:5]
    assert default_decimals(settings) == [0, 2, 0]  # the config's own choice for C-MAPSS
    with caplog.at_level(logging.INFO, logger="grace_lit"):
        t = table(pumps / "fleet.csv", conditions=["load"], condition_mode="round", condition_decimals=[])
    prep = t.build(t.train_units(), NONE, seed=0).preprocessing
    assert prep.decimals == [1] and prep.keys == [[0.3], [0.6], [0.9]]  # the three load regimes
    assert ("dataset.condition_decimals not set: conditions ['load'] rounded to [1] decimals, chosen from the "
            "training table") in caplog.text and "3 conditions" in caplog.text


def test_too_short_unit_names_the_unit_row_and_window(pumps, tmp_path):
    def shorten(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(index=rows_of(frame, "pump-004")[15:])

    path = edited(pumps, tmp_path, shorten)
    t = table(path, test_fraction=0.25, test_seed=0)  # pump-004 stays a training unit with seed 0
    assert "pump-004" in {t.train.name(int(u)) for u in t.train.unit}
    with pytest.raises(GraceError) as err:
        t.build(t.train_units(), NONE, seed=0)
    row = second_row_of(pumps, "pump-004", 0)
    assert (f"dataset.window=20 is longer than the shortest training unit of table (15 rows: unit pump-004, {path} "
            f"row {row}, column 'pump'). Fix: choose dataset.window <= 15") in str(err.value)


@pytest.mark.parametrize("name, expected", [("fleet.xlsx", "unknown format '.xlsx'"), ("none.csv", "does not exist")])
def test_unreadable_files(tmp_path, name, expected):
    if name.endswith(".xlsx"):
        (tmp_path / name).write_text("x")
    with pytest.raises(GraceError, match=expected):
        table(tmp_path / name)


def test_test_file_needs_its_rul(pumps, tmp_path):
    with pytest.raises(GraceError, match="needs dataset.test_rul"):
        table(pumps / "fleet.csv", test=str(pumps / "test.csv"))
    pd.read_csv(pumps / "test_rul.csv").iloc[1:].to_csv(tmp_path / "rul.csv", index=False)
    with pytest.raises(GraceError, match="test unit pump-008 has no remaining life"):
        table(pumps / "fleet.csv", test=str(pumps / "test.csv"), test_rul=str(tmp_path / "rul.csv"))


def test_unset_table_keys_fail_validation_with_one_message():
    with pytest.raises(GraceError) as err:
        validate(composed(["dataset=table", "model=small", "dataset.train=fleet.csv"]))
    message = str(err.value)
    assert message.split("\n")[1].startswith("  dataset.features: not set") and "dataset.train:" not in message
    validate(composed(["dataset=table", "model=small", "dataset.train=fleet.csv", "dataset.features=[a,b]"]))


def test_kmeans_without_scikit_learn_says_what_to_install(pumps, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # import fails as if not installed
    t = table(pumps / "fleet.csv", conditions=["load"], condition_mode="kmeans")
    with pytest.raises(GraceError, match=r"needs scikit-learn.*pip install 'grace-lit\[table\]'"):
        t.build(t.train_units(), NONE, seed=0)


def test_holdout_protocol_on_a_table(pumps):
    dm = RULDataModule(table(pumps / "fleet.csv"), "holdout", 0.2, 64, 256, seed=0, val_cuts=3)
    dm.setup()
    held = set(dm.splits.val.unit.unique().tolist())
    assert len(held) == 1 and not held & set(dm.splits.train.unit.unique().tolist())  # 6 training units: 20%
    assert int(dm.splits.val.is_last.sum()) == 3 and len(dm.splits.test.unit.unique()) == 2
