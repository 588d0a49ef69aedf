"""Preprocessing's edges, by hand: the condition key at the configured decimals, the row a refused condition is
named by, the windows' float32, the condition's one-hot as an input, and the bounds of the unit splits (what a
user reads when a split is impossible)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from grace_lit.data.preprocess import Preprocessing, fold_units, split_units
from grace_lit.errors import GraceError


def rounded(decimals: int) -> Preprocessing:
    return Preprocessing(unit="unit", time="cycle", features=["s"], conditions=["mach"], condition_mode="round",
                         decimals=[decimals], window=3, eval_stride=1, pad_mode="edge", max_rul=125.0,
                         cap_test_rul=True, health_thresholds=[30.0, 70.0])


SETTINGS = np.array([[0.21], [0.24], [0.21], [0.24]])  # two conditions at 2 decimals, one at 1
FEATURES = np.array([[1.0], [10.0], [3.0], [20.0]])


def test_the_condition_key_is_the_setting_at_the_configured_decimals():
    two = rounded(2).fit(FEATURES, SETTINGS)
    assert two.keys == [[0.21], [0.24]] and two.mean == [[2.0], [15.0]] and two.std == [[1.0], [5.0]]
    one = rounded(1).fit(FEATURES, SETTINGS)
    assert one.keys == [[0.2]] and one.mean == [[8.5]]


def test_standardised_features_are_float32_per_condition():
    prep = rounded(2).fit(FEATURES, SETTINGS)
    out = prep.transform(np.array([[4.0], [25.0]]), np.array([[0.21], [0.24]]))
    assert out.dtype == np.float32 and out[:, 0].tolist() == [2.0, 2.0]  # (4 - 2) / 1, (25 - 15) / 5


@pytest.mark.parametrize("path, rows, where", [("", None, "row 3"), ("test.csv", np.array([7, 8, 12]),
                                                                    "test.csv, row 12")])
def test_an_unseen_condition_is_refused_naming_its_row(path, rows, where):
    prep = rounded(2).fit(FEATURES, SETTINGS)
    with pytest.raises(GraceError) as err:
        prep.transform(np.ones((3, 1)), np.array([[0.21], [0.24], [0.31]]), path, rows)
    assert str(err.value) == (f"{where}: operating condition [0.31] (columns ['mach']) does not occur in the "
                              f"training units. Fix: check dataset.condition_decimals (now [2]), or train on units "
                              f"that cover this condition.")


def test_split_bounds():
    units = np.arange(1, 11)
    assert split_units(units, 0.0, seed=0)[1].size == 0  # protocol=paper: nothing held out
    fit, held = split_units(units, 0.1, seed=0)
    assert held.size == 1 and sorted([*fit, *held]) == units.tolist()
    with pytest.raises(GraceError) as err:
        split_units(units, 0.96, seed=0)  # rounds to all 10 units
    assert str(err.value) == ("protocol.holdout_fraction=0.96 leaves 10 of 10 units held out. Fix: choose a "
                              "fraction in (0, 1) that holds out at least one unit.")
    held = [fold_units(np.arange(4), 4, k, seed=0)[1].tolist() for k in range(4)]  # leave one out: folds = units
    assert sorted(sum(held, [])) == [0, 1, 2, 3] and all(len(h) == 1 for h in held)


def test_a_feature_constant_within_a_condition_scales_by_one():
    prep = rounded(2).fit(np.array([[5.0], [1.0], [5.0], [3.0]]), SETTINGS)  # constant at 0.21
    assert prep.std == [[1.0], [1.0]] and prep.transform(np.array([[6.0]]), np.array([[0.21]])).tolist() == [[1.0]]
    assert prep.rul(np.array([200.0, 50.0]), test=False).dtype == np.float32


def test_inconsistent_condition_settings_are_refused():
    with pytest.raises(GraceError) as err:
        Preprocessing(**{**vars(rounded(2)), "decimals": [2, 0]})
    assert str(err.value) == ("dataset.condition_decimals=[2, 0] needs one entry per condition column ['mach']. Fix: "
                              "give as many decimals as conditions.")
    with pytest.raises(GraceError, match=r"^dataset.condition_mode='median' is not one of \('round', 'kmeans'\)"):
        Preprocessing(**{**vars(rounded(2)), "condition_mode": "median"})


def test_kmeans_on_two_settings_of_different_scales():
    """Each setting divided by its training std (a constant one by 1), centres sorted by the first setting, each
    cluster's radius its largest member distance; beyond ``tolerance`` times that radius a row is refused."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    centres = np.array([[30000.0, 0.2, 100.0], [0.0, 0.8, 100.0], [10000.0, 0.5, 100.0]])  # altitude and Mach,
    settings = np.repeat(centres, 20, axis=0) + rng.normal(size=(60, 3)) * [50.0, 0.002, 0.0]  # scales 1e4 apart
    prep = Preprocessing(**{**vars(rounded(2)), "conditions": ["altitude", "mach", "tra"], "condition_mode": "kmeans",
                            "decimals": [], "clusters": 3, "seed": 0, "tolerance": 1.5})
    prep.fit(rng.normal(size=(60, 1)), settings)
    scale = np.r_[settings[:, :2].std(axis=0), 1.0]
    np.testing.assert_allclose(prep.setting_scale, scale, rtol=1e-12)
    keys = np.asarray(prep.keys) * scale
    member = np.repeat(np.argsort(centres[:, 0]).argsort(), 20)  # every row's cluster, in sorted-centre order
    assert prep.groups(settings).tolist() == member.tolist()
    np.testing.assert_allclose(keys, [settings[member == g].mean(axis=0) for g in range(3)], rtol=1e-9)
    radius = [np.sqrt((((settings[member == g] - keys[g]) / scale) ** 2).sum(axis=1)).max() for g in range(3)]
    np.testing.assert_allclose(prep.radius, radius, rtol=1e-9)
    inside = keys[0] + [1.4 * radius[0] * scale[0], 0.0, 0.0]
    outside = keys[0] + [1.6 * radius[0] * scale[0], 0.0, 0.0]
    assert prep.groups(inside[None]).tolist() == [0]
    with pytest.raises(GraceError, match="condition_tolerance=1.5"):
        prep.groups(outside[None])


def test_condition_input_appends_a_one_hot_of_the_condition():
    """Features standardised as without the option, then one column per condition: 1 in the row's own."""
    prep = Preprocessing(**{**vars(rounded(2)), "condition_input": True}).fit(FEATURES, SETTINGS)
    out = prep.transform(np.array([[4.0], [25.0], [7.0]]), np.array([[0.21], [0.24], [0.24]]))
    # (4 - 2) / 1 at 0.21; (25 - 15) / 5 and (7 - 15) / 5 at 0.24
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [-1.6, 0.0, 1.0]], np.float32))
    assert prep.n_inputs == 3 and rounded(2).fit(FEATURES, SETTINGS).n_inputs == 1


def test_condition_input_round_trips_and_older_files_load_without_it():
    prep = Preprocessing(**{**vars(rounded(2)), "condition_input": True}).fit(FEATURES, SETTINGS)
    again = Preprocessing.from_json(prep.to_json())
    assert again == prep and again.condition_input is True
    older = json.loads(rounded(2).fit(FEATURES, SETTINGS).to_json())
    del older["condition_input"]  # a preprocessing.json written before the option
    assert Preprocessing.from_json(json.dumps(older)).condition_input is False


def test_condition_input_without_conditions_is_refused():
    with pytest.raises(GraceError) as err:
        Preprocessing(**{**vars(rounded(2)), "conditions": [], "decimals": [], "condition_input": True})
    assert str(err.value) == ("dataset.condition_input=true appends a one-hot of each row's operating condition, but "
                              "this run has no condition map (one global scaler: one condition, a constant input; "
                              "FD001 and FD003 run at one). Fix: dataset.condition_input=false, or give it "
                              "conditions: dataset.per_condition=true (C-MAPSS; FD002 and FD004 have 6) or "
                              "dataset.conditions=[...] (a table).")
