"""Unit splits: held-out cuts (protocol.val_cuts), the split seed, k-fold over units, the test-truth cap."""
from __future__ import annotations

import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, composed
from grace_lit.config import validate
from grace_lit.data.datamodule import RULDataModule
from grace_lit.data.pipeline import RunToFailure, Runs
from grace_lit.data.preprocess import fold_units, truncation_lengths
from grace_lit.errors import GraceError
from grace_lit.metrics import RMSE
from grace_lit.results import RAW_KEYS, score_raw_truth
from test_data import reader
from test_presets import TINY, tiny_run

LENGTHS = {1: 40, 2: 55, 3: 61, 4: 72, 5: 90}  # a small fleet: unit -> cycles to failure
WINDOW = 10


def fleet(**overrides) -> RunToFailure:
    """Five run-to-failure units of known length (time = 1..L); a one-unit test set 20 cycles before failure."""
    unit = np.concatenate([np.full(n, u) for u, n in LENGTHS.items()])
    time = np.concatenate([np.arange(1, n + 1) for n in LENGTHS.values()]).astype(float)
    features = np.random.default_rng(0).normal(size=(len(unit), 2))
    train = Runs("fleet.csv", unit, time, features, features[:, :0], np.arange(1, len(unit) + 1))
    test = Runs("test.csv", np.full(30, 9), np.arange(1.0, 31.0), features[:30], features[:30, :0],
                np.arange(1, 31))
    args = dict(name="fleet", train=train, test=test, test_rul={9: 20.0}, unit="unit", time="time",
                features=["a", "b"], conditions=[], condition_mode="round", condition_decimals=[],
                condition_clusters=0, condition_seed=0, condition_tolerance=0.0, max_rul=50, window=WINDOW,
                stride=1, eval_stride=1, health_thresholds=[10, 20], pad_mode="edge", cap_test_rul=True,
                select_metric="rmse_last")
    return RunToFailure(**{**args, **overrides})


def sequences(windows) -> list[tuple[int, int, float]]:
    """(unit, rows, last-window RUL) of every sequence, read back from the windows (stride 1: rows = windows +
    window - 1)."""
    ends = np.flatnonzero(windows.is_last.numpy())
    starts = np.r_[0, ends[:-1] + 1]
    return [(int(windows.unit[e]), int(e - s + WINDOW), float(windows.rul[e])) for s, e in zip(starts, ends)]


def test_each_held_out_unit_contributes_val_cuts_sequences():
    source = fleet()
    splits = source.build(np.array([1, 2, 4]), np.array([3, 5]), seed=7, val_cuts=3)
    seqs = sequences(splits.val)
    assert [u for u, _, _ in seqs] == [3, 3, 3, 5, 5, 5]  # unit order, cut order
    for unit, rows, rul in seqs:  # each cut is the unit's first rows; its last target is the life left, capped
        assert WINDOW <= rows <= LENGTHS[unit] and rul == min(LENGTHS[unit] - rows, 50)
    assert [rows for _, rows, _ in seqs] == truncation_lengths(np.array([61, 90]), WINDOW, 7, 3).ravel().tolist()
    assert len({rows for _, rows, _ in seqs}) > 2  # the cuts differ
    # training windows never come from a held-out unit
    assert set(splits.train.unit.unique().tolist()) == {1, 2, 4}


def test_calibration_cuts_are_cut_ends_of_a_draw_of_their_own():
    """interval.calibration_cuts: each held-out unit cut K more times at cycles from default_rng([split_seed, 1]),
    one window per cut (its last, the window selection sees at that row, truth = the life left, capped); the
    selection cuts stay what they are without them."""
    source = fleet()
    plain = source.build(np.array([1, 2, 4]), np.array([3, 5]), seed=7, val_cuts=3)
    splits = source.build(np.array([1, 2, 4]), np.array([3, 5]), seed=7, val_cuts=3, calibration_cuts=6)
    assert plain.calibration is None
    for name in ("series", "starts", "rul", "is_last"):
        assert torch.equal(getattr(splits.val, name), getattr(plain.val, name)), name
    cal, lengths = splits.calibration, np.array([61, 90])
    expected = np.random.default_rng([7, 1]).integers(WINDOW, lengths[:, None] + 1, size=(2, 6))
    assert len(cal) == 12 and bool(cal.is_last.all()) and cal.unit.tolist() == [3] * 6 + [5] * 6
    assert (cal.end_row + 1).tolist() == expected.ravel().tolist()
    assert cal.rul.tolist() == np.minimum(lengths[:, None] - expected, 50).ravel().tolist()
    val_rows = {(int(u), int(r)): i for i, (u, r) in enumerate(zip(splits.val.unit, splits.val.end_row))}
    shared = [(i, val_rows[key]) for i, key in enumerate(zip(cal.unit.tolist(), cal.end_row.tolist()))
              if key in val_rows]
    assert shared  # windows at rows selection also scores: the same inputs
    for i, j in shared:
        assert torch.equal(cal[i][0], splits.val[j][0])


def test_one_cut_is_todays_draw():
    """val_cuts=1 draws exactly the cut points the single-cut holdout always drew: rng.integers(low, L + 1)."""
    lengths = np.array([61, 90, 40])
    expected = np.random.default_rng(11).integers(np.minimum(WINDOW, lengths), lengths + 1)
    np.testing.assert_array_equal(truncation_lengths(lengths, WINDOW, 11)[:, 0], expected)


def test_last_window_metrics_count_every_cut():
    splits = fleet().build(np.array([1, 2]), np.array([3, 4, 5]), seed=1, val_cuts=4)
    val = splits.val
    last_targets = np.array([rul for _, _, rul in sequences(val)])
    assert len(last_targets) == 12 and int(val.is_last.sum()) == 12
    metric = RMSE(last_only=True)
    metric.update(torch.full_like(val.rul, 25.0), val.rul, val.is_last)
    assert float(metric.compute()) == pytest.approx(np.sqrt(np.mean((25.0 - last_targets) ** 2)), rel=1e-6)


def test_split_seed_draws_the_split_and_seed_does_not(data_cache):
    def held(seed: int, split_seed: int) -> list[int]:
        dm = RULDataModule(reader(data_cache), "holdout", 0.2, 64, 256, seed=seed, split_seed=split_seed)
        dm.setup()
        return sorted(dm.splits.val.unit.unique().tolist())

    assert held(1, 3) == held(2, 3) == held(3, 3)  # the training seed does not move the held-out units
    assert held(1, 3) != held(1, 4)
    default = RULDataModule(reader(data_cache), "holdout", 0.2, 64, 256, seed=3)  # split_seed defaults to seed
    default.setup()
    assert sorted(default.splits.val.unit.unique().tolist()) == held(1, 3)


def test_folds_by_hand():
    units = np.arange(1, 11)
    held = [fold_units(units, 3, k, seed=5)[1].tolist() for k in range(3)]
    perm = np.random.default_rng(5).permutation(units)  # the seeded order, cut into 4 + 3 + 3
    assert held == [sorted(perm[:4].tolist()), sorted(perm[4:7].tolist()), sorted(perm[7:].tolist())]
    for k in range(3):
        fit, out = fold_units(units, 3, k, seed=5)
        assert not set(fit) & set(out) and sorted([*fit, *out]) == units.tolist()


@pytest.mark.parametrize("folds", [2, 5, 7])
def test_every_unit_held_out_exactly_once(folds):
    units = np.arange(1, 101)
    held = np.concatenate([fold_units(units, folds, k, seed=42)[1] for k in range(folds)])
    assert sorted(held.tolist()) == units.tolist()
    sizes = [len(fold_units(units, folds, k, seed=42)[1]) for k in range(folds)]
    assert max(sizes) - min(sizes) <= 1
    assert fold_units(units, folds, 1, seed=42)[1].tolist() == fold_units(units, folds, 1, seed=42)[1].tolist()
    assert fold_units(units, folds, 1, seed=42)[1].tolist() != fold_units(units, folds, 1, seed=43)[1].tolist()


@pytest.mark.parametrize("folds, fold", [(1, 0), (3, 3), (3, -1), (101, 0)])
def test_bad_folds_are_refused(folds, fold):
    with pytest.raises(GraceError, match="protocol.folds"):
        fold_units(np.arange(1, 101), folds, fold, seed=0)


def test_folds_in_the_datamodule(data_cache):
    held = []
    for k in range(5):
        dm = RULDataModule(reader(data_cache), "holdout", 0.2, 64, 256, seed=0, split_seed=9, folds=5, fold=k,
                           val_cuts=2)
        dm.setup()
        val = set(dm.splits.val.unit.unique().tolist())
        assert len(val) == 20 and not val & set(dm.splits.train.unit.unique().tolist())
        assert int(dm.splits.val.is_last.sum()) == 40  # two cuts per held-out unit
        held.extend(val)
    assert sorted(held) == list(range(1, 101))
    with pytest.raises(GraceError, match="protocol=holdout"):
        RULDataModule(reader(data_cache), "paper", 0.0, 64, 256, seed=0, folds=5, fold=0)


def test_cap_test_rul(data_cache, cmapss_dir):
    truth = np.loadtxt(cmapss_dir / "RUL_FD002.txt")
    r = reader(data_cache, "FD002", cap_test_rul=False)
    test = r.build(r.train_units(), np.array([], dtype=np.int64), seed=0).test
    last = test.is_last.numpy()
    np.testing.assert_array_equal(test.rul.numpy()[last], truth)
    assert int((truth > 125).sum()) == 57  # the test units the cap changes (of 259)
    # a model predicting exactly the capped truth, scored against the uncapped truth (docs/choices.md: 18.3)
    capped = reader(data_cache, "FD002").build(r.train_units(), np.array([], dtype=np.int64), seed=0).test
    gap = np.sqrt(np.mean((capped.rul.numpy()[last] - truth) ** 2))
    assert gap == pytest.approx(18.32, abs=0.005)
    assert float(test.rul.max()) > 125 and int(test.unit.unique().numel()) == 259


# issue 23: a model predicting exactly the capped truth, scored against the raw NASA files (RMSE, one decimal)
RAW_GAP = {"FD002": 18.3, "FD004": 19.5}


def nasa_rul_file(name: str) -> np.ndarray:
    """RUL_<name>.txt read straight from the bundled archive (not through grace_lit's reader or its cache)."""
    with tarfile.open(REPO / "src" / "grace_lit" / "resources" / "cmapss.tar.xz") as tar:
        for member in tar:  # the RUL files come first: stop there rather than decompress the whole archive
            if member.name.rsplit("/", 1)[-1] == f"RUL_{name}.txt":
                return np.loadtxt(tar.extractfile(member))
    raise AssertionError(f"RUL_{name}.txt is not in the archive")


@pytest.mark.parametrize("name", sorted(RAW_GAP))
def test_a_perfect_predictor_of_the_capped_truth_scored_against_the_raw_files(data_cache, name):
    raw = nasa_rul_file(name)
    reference = float(np.sqrt(np.mean((np.minimum(raw, 125) - raw) ** 2)))  # independent of the pipeline
    assert round(reference, 1) == RAW_GAP[name]
    splits = reader(data_cache, name).build(np.arange(1, 3), np.array([], dtype=np.int64), seed=0)
    assert splits.test_rul_raw == {u + 1: float(r) for u, r in enumerate(raw)}
    last = splits.test.is_last.numpy()
    capped = splits.test.rul.numpy()[last]
    predictions = pd.DataFrame({"unit": splits.test.unit.numpy()[last], "rul_true": capped, "rul_pred": capped})
    summary = {}
    scored = score_raw_truth(summary, predictions, splits.test_rul_raw)
    np.testing.assert_array_equal(scored["rul_true_raw"], raw)  # one row per unit, in unit order
    assert summary["test/rmse_last_raw"] == pytest.approx(reference, rel=1e-12)
    # every prediction at or below the truth (d <= 0): NASA's early term exp(-d/13) - 1
    assert summary["test/nasa_raw"] == pytest.approx(np.sum(np.exp((raw - capped) / 13.0) - 1.0), rel=1e-12)


def test_raw_truth_of_any_run_to_failure_table():
    """A table's test truth (dataset.test_rul, or the cut units' remaining life) is kept uncapped beside the capped
    targets; without a raw truth the raw scores are null and predictions.csv has no raw column."""
    splits = fleet(test_rul={9: 80.0}).build(np.array([1, 2, 3]), np.array([], dtype=np.int64), seed=0)
    assert splits.test_rul_raw == {9: 80.0} and float(splits.test.rul[-1]) == 50.0  # max_rul=50 caps the target
    summary = {}
    scored = score_raw_truth(summary, pd.DataFrame({"unit": [9], "rul_true": [50.0], "rul_pred": [60.0]}),
                             splits.test_rul_raw)
    assert scored["rul_true_raw"].tolist() == [80.0] and summary["test/rmse_last_raw"] == pytest.approx(20.0)
    assert summary["test/nasa_raw"] == pytest.approx(np.exp(20.0 / 13.0) - 1.0)
    uncapped = fleet(test_rul={9: 80.0}, cap_test_rul=False).build(np.array([1, 2, 3]), np.array([], np.int64), 0)
    assert float(uncapped.test.rul[-1]) == 80.0 == uncapped.test_rul_raw[9]  # raw and scored truth agree
    summary = {}
    frame = pd.DataFrame({"unit": [9], "rul_true": [50.0], "rul_pred": [60.0]})
    assert score_raw_truth(summary, frame, {}) is frame and summary == dict.fromkeys(RAW_KEYS)


def test_metrics_json_records_the_split(data_cache, tmp_path):
    metrics = tiny_run(["dataset=FD001", "protocol=holdout", "protocol.folds=4", "protocol.fold=1",
                        "protocol.val_cuts=3", "data.split_seed=7", *TINY], tmp_path, data_cache)
    assert (metrics["folds"], metrics["fold"], metrics["val_cuts"], metrics["split_seed"], metrics["seed"]) == (
        4, 1, 3, 7, 42)
    assert (metrics["cap_test_rul"], metrics["max_rul"]) == (True, 125)  # what test/* were scored against
    assert metrics["test/rmse_last_raw"] >= 0 and metrics["test/nasa_raw"] >= 0


@pytest.mark.parametrize("override, key", [
    (["protocol.val_cuts=0"], "protocol.val_cuts=0"),
    (["protocol.folds=4", "protocol.fold=4"], "protocol.fold=4"),
    (["data.split_seed=1.5"], "data.split_seed=1.5"),
    (["dataset.cap_test_rul=1"], "dataset.cap_test_rul=1"),
])
def test_bad_split_keys_fail_validation(override, key):
    with pytest.raises(GraceError, match=key):
        validate(composed(["protocol=holdout", *override]))
