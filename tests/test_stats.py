"""Paired statistics: the pairing and the mean difference by hand, p-values against scipy and the exact Wilcoxon
floor 2 / 2^n, the seeded bootstrap, folds as pair keys, the reference arm of grid presets, the rank table by hand,
and the report's section from real metrics.json files. The Friedman statistic and Nemenyi's critical difference
against a table ranked by hand and Demšar's (2006) published values, the blocks every arm completed, the polite
refusal; GABA's floor from a controller log by hand; the test truth kept apart."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from grace_lit.report import md_table, report
from grace_lit.stats import (arm_frame, complete_design, floor_summary, floor_table, friedman, friedman_markdown,
                             friedman_tests, markdown, min_wilcoxon_p, nemenyi_cd, nemenyi_groups,
                             paired_comparisons, rank_table, truth_label)

M = "test/rmse_last"


def run(loss: str, seed: int, value: float, dataset: str = "FD001", rul_loss: str = "wmse", variant: str = "",
        status: str = "completed", **extra) -> dict:
    return {"run": f"{dataset}/{loss}/{seed}", "status": status, "protocol": "holdout", "dataset": dataset,
            "loss": loss, "rul_loss": rul_loss, "seed": seed, "variant": variant, M: value, **extra}


GABA = {1: 15.0, 2: 16.0, 3: 14.0, 4: 17.0, 5: 15.5, 6: 16.5}
AMNL = {1: 16.0, 2: 16.5, 3: 15.0, 4: 16.0, 5: 18.0, 7: 20.0}  # seed 7 has no gaba twin, gaba's 6 no amnl twin


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_pairs_on_shared_seeds_and_mean_difference_by_hand():
    runs = frame([*(run("gaba", s, v) for s, v in GABA.items()), *(run("amnl", s, v) for s, v in AMNL.items()),
                  run("amnl", 6, 99.0, status="failed"), run("amnl", 8, math.nan)])  # neither may pair
    [row] = paired_comparisons(runs, reference="gaba").to_dict("records")
    diffs = [1.0, 0.5, 1.0, -1.0, 2.5]  # seeds 1-5: amnl - gaba
    assert (row["arm"], row["reference"], row["n_pairs"], row["pairs"]) == ("amnl + wmse", "gaba + wmse", 5,
                                                                          "1 2 3 4 5")
    assert row["mean_diff"] == pytest.approx(4.0 / 5)
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert row["p_ttest"] == pytest.approx(sps.ttest_rel([16, 16.5, 15, 16, 18], [15, 16, 14, 17, 15.5]).pvalue)
    assert row["ci_low"] < row["mean_diff"] < row["ci_high"] and -1.0 <= row["ci_low"] and row["ci_high"] <= 2.5
    assert "5 pairs" in row["warning"] and "0.0625" in row["warning"]


def test_wilcoxon_floor_is_two_over_two_to_the_n():
    assert [min_wilcoxon_p(n) for n in (1, 4, 5, 6)] == [1.0, 0.125, 0.0625, 0.03125]
    for n in (5, 6):  # every difference of one sign reaches the floor exactly
        runs = frame([*(run("gaba", s, 10.0) for s in range(n)), *(run("amnl", s, 11.0 + s) for s in range(n))])
        row = paired_comparisons(runs, reference="gaba").iloc[0]
        assert row["p_wilcoxon"] == pytest.approx(2 / 2**n)
        assert isinstance(row["warning"], str) == (n == 5)  # 6 pairs can reach p < 0.05: no warning


def test_bootstrap_is_seeded_and_scipys():
    runs = frame([*(run("gaba", s, v) for s, v in GABA.items()), *(run("amnl", s, v) for s, v in AMNL.items())])
    first, again = (paired_comparisons(runs, reference="gaba", seed=3) for _ in range(2))
    assert first[["ci_low", "ci_high"]].equals(again[["ci_low", "ci_high"]])
    want = sps.bootstrap((np.array([1.0, 0.5, 1.0, -1.0, 2.5]),), np.mean, method="percentile",
                         rng=np.random.default_rng(3)).confidence_interval
    assert (first["ci_low"].iloc[0], first["ci_high"].iloc[0]) == pytest.approx((want.low, want.high))


def test_folds_are_pair_keys_and_not_variants():
    rows = [run("gaba", 1, 10.0, fold=0, variant="protocol.fold=0"), run("gaba", 1, 12.0, fold=1,
                                                                       variant="protocol.fold=1"),
            run("amnl", 1, 11.0, fold=0, variant="protocol.fold=0"), run("amnl", 1, 15.0, fold=1,
                                                                       variant="protocol.fold=1"),
            run("amnl", 2, 9.0, fold=1, variant="protocol.fold=1")]  # no gaba twin
    [row] = paired_comparisons(frame(rows), reference="gaba").to_dict("records")
    assert (row["n_pairs"], row["pairs"], row["arm"]) == (2, "1 1/f1", "amnl + wmse")
    assert row["mean_diff"] == pytest.approx((1.0 + 3.0) / 2)


def test_grid_presets_pair_with_the_reference_of_their_rul_loss():
    rows = []
    for s in (1, 2):
        rows += [run("gaba", s, 10.0, variant="experiment=grid_grace"),
                 run("gaba", s, 20.0, rul_loss="mse", variant="experiment=grid_gaba_mse"),
                 run("amnl", s, 10.0 + s, variant="experiment=grid_amnl"),
                 run("fixed", s, 22.0 + s, rul_loss="mse", variant="experiment=grid_baseline")]
    got = paired_comparisons(frame(rows), reference="gaba").set_index("arm")
    assert got.loc["amnl + wmse [experiment=grid_amnl]", "reference"] == "gaba + wmse [experiment=grid_grace]"
    assert got.loc["amnl + wmse [experiment=grid_amnl]", "mean_diff"] == pytest.approx(1.5)
    assert got.loc["fixed + mse [experiment=grid_baseline]", "mean_diff"] == pytest.approx(3.5)
    assert not math.isnan(got.loc["fixed + mse [experiment=grid_baseline]", "p_wilcoxon"])


def test_campaign_arms_pair_with_the_grace_arm_they_extend():
    """The CPU campaign's cells: every run has the profile's overrides; fixed at GABA's floor adds its weights, GABA
    on the cap's scale adds the loss scale. Fixed pairs with plain GRACE (not the scaled one), and the scaled GABA
    arm with plain GRACE too; plain GRACE itself is no comparison."""
    profile = "budget=cpu protocol.val_cuts=5"
    floor = f"budget=cpu loss.controller.weights=[0.05,0.95] {profile.split()[1]}"
    scaled = f"{profile} rul_loss.fn.scale=125"
    rows = []
    for s in (1, 2, 3):
        jitter = 0.1 * (s - 2)  # differences that vary (a constant one makes the t-test degenerate), mean 0
        rows += [run("gaba", s, 14.0 + s, variant=profile), run("gaba", s, 13.0 + s + jitter, variant=scaled),
                 run("fixed", s, 14.5 + s + jitter, variant=floor), run("amnl", s, 16.0 + s + jitter, variant=profile)]
    got = paired_comparisons(frame(rows), reference="gaba").set_index("arm")
    grace = f"gaba + wmse [{profile}]"
    assert sorted(got.index) == sorted([f"fixed + wmse [{floor}]", f"amnl + wmse [{profile}]",
                                        f"gaba + wmse [{scaled}]"])
    assert set(got["reference"]) == {grace}
    assert got["mean_diff"].to_dict() == pytest.approx({f"fixed + wmse [{floor}]": 0.5, f"amnl + wmse [{profile}]": 2.0,
                                                        f"gaba + wmse [{scaled}]": -1.0})


def test_rank_table_by_hand():
    rows = []
    means = {"FD001": {"gaba": 15.0, "amnl": 16.0, "gradnorm": 14.0}, "FD002": {"gaba": 20.0, "amnl": 22.0}}
    for dataset, by_loss in means.items():
        for loss, value in by_loss.items():
            for s, noise in ((1, -0.5), (2, 0.5)):  # mean over seeds = value
                rows.append(run(loss, s, value + noise, dataset=dataset,
                                variant=f"experiment=paper_{dataset}_{loss}"))
    ranks = rank_table(frame(rows)).set_index("arm")
    gaba, amnl, gradnorm = ("gaba + wmse [experiment=paper_*_gaba]", "amnl + wmse [experiment=paper_*_amnl]",
                            "gradnorm + wmse [experiment=paper_*_gradnorm]")
    assert ranks.loc[gradnorm, "FD001"] == 1 and ranks.loc[gaba, "FD001"] == 2 and ranks.loc[amnl, "FD001"] == 3
    assert ranks.loc[gaba, "FD002"] == 1 and ranks.loc[amnl, "FD002"] == 2 and math.isnan(ranks.loc[gradnorm, "FD002"])
    assert ranks.loc[gaba, "mean_rank"] == 1.5 and ranks.loc[amnl, "mean_rank"] == 2.5
    assert ranks.loc[gradnorm, "mean_rank"] == 1.0 and ranks.loc[gradnorm, "n_datasets"] == 1



def test_a_per_dataset_budget_profile_is_one_arm_across_datasets():
    """The CPU campaign: FD001 under budget=cpu, FD002 under budget=cpu_fd002; each controller is one arm across
    both. Within one dataset, arms that differ only by their budget stay two arms (the profile study)."""
    rows = []
    for dataset, budget in (("FD001", "budget=cpu"), ("FD002", "budget=cpu_fd002")):
        for loss, value in (("gaba", 14.0), ("amnl", 15.0)):
            rows += [run(loss, s, value + s, dataset=dataset, variant=f"{budget} protocol.val_cuts=5") for s in (1, 2)]
    ranks = rank_table(frame(rows)).set_index("arm")
    assert list(ranks.index) == ["gaba + wmse [protocol.val_cuts=5]", "amnl + wmse [protocol.val_cuts=5]"]
    assert ranks["n_datasets"].tolist() == [2, 2]
    study = [run("gaba", 1, 17.0, dataset="FD002", variant="budget=cpu protocol.val_cuts=5")]
    ranks = rank_table(frame(rows + study)).set_index("arm")
    assert {"gaba + wmse [budget=cpu protocol.val_cuts=5]", "gaba + wmse [budget=cpu_fd002 protocol.val_cuts=5]",
            "amnl + wmse [protocol.val_cuts=5]"} <= set(ranks.index)


def test_markdown_states_pairs_and_warning():
    runs = frame([*(run("gaba", s, v) for s, v in GABA.items()), *(run("amnl", s, v) for s, v in AMNL.items())])
    text = markdown(paired_comparisons(runs, reference="gaba"), rank_table(runs), "gaba", M, md_table)
    assert "## Paired comparisons against gaba" in text and "0.0625 at 5 pairs" in text
    assert "| holdout | FD001 | amnl + wmse | gaba + wmse | 5 | 1 2 3 4 5 | +0.800 |" in text
    assert "too few to conclude anything" in text and "## Ranks across datasets" in text


def test_report_writes_the_paired_section(tmp_path):
    for loss, values in (("gaba", GABA), ("uncertainty", AMNL)):
        for seed, value in values.items():
            path = tmp_path / f"{loss}_s{seed}"
            path.mkdir()
            (path / "metrics.json").write_text(json.dumps({
                "status": "completed", "protocol": "paper", "selection": "test set", "dataset": "FD002",
                "loss": loss, "rul_loss": "wmse", "seed": seed, M: value, "test/nasa": 100.0, "fold": 0,
                "command": "python -m grace_lit.train"}))
    text = report([tmp_path], tmp_path, trajectory_units=0, plots=False, reference="uncertainty")
    assert "## Paired comparisons against uncertainty" in text and "| paper | FD002 | gaba + wmse |" in text
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert paired["n_pairs"].tolist() == [5] and paired["mean_diff"].iloc[0] == pytest.approx(-0.8)
    assert np.isfinite(paired[["ci_low", "ci_high", "p_wilcoxon"]].to_numpy()).all()


# ------------------------------------------------------------------ Friedman and Nemenyi
def test_friedman_statistic_and_critical_difference_by_hand():
    """Four blocks, three arms, no ties. Ranks per block: (1, 2, 3), (1, 3, 2), (1, 2, 3), (2, 1, 3): rank sums 5,
    8, 11, mean ranks 1.25, 2, 2.75. chi2_F = 12 / (N k (k + 1)) * sum R_j^2 - 3 N (k + 1) = 12 / 48 * 210 - 48 = 4.5,
    p = exp(-4.5 / 2) (chi-square, 2 degrees of freedom). CD = q_0.05 * sqrt(k (k + 1) / (6 N)) with Demšar's
    q_0.05 = 2.343 for k = 3: 2.343 * sqrt(12 / 24) = 1.657."""
    values = pd.DataFrame({"a": [10.0, 11.0, 9.0, 12.5], "b": [12.0, 15.0, 9.5, 12.0], "c": [13.0, 14.0, 9.9, 13.0]})
    got = friedman(values)
    assert (got["k"], got["n_blocks"]) == (3, 4)
    assert got["mean_ranks"].to_dict() == {"a": 1.25, "b": 2.0, "c": 2.75}
    assert got["statistic"] == pytest.approx(4.5) and got["p"] == pytest.approx(math.exp(-2.25))
    assert got["cd"] == pytest.approx(2.343 * math.sqrt(0.5), abs=1e-3)
    assert got["groups"] == [["a", "b", "c"]]  # 2.75 - 1.25 = 1.5 < 1.657: no pair differs


def test_nemenyi_q_and_cd_match_demsar():
    """Demšar 2006, Table 5(a): q_0.05 for k = 2..10; his worked example (k = 4 classifiers, N = 14 data sets):
    CD = 2.569 * sqrt(4 * 5 / (6 * 14)) = 1.25."""
    table_5a = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, q in zip(range(2, 11), table_5a):
        assert nemenyi_cd(k, 6) / math.sqrt(k * (k + 1) / 36) == pytest.approx(q, abs=1e-3), k  # printed to 3 decimals
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=5e-3)


def test_nemenyi_groups_by_hand():
    ranks = pd.Series({"a": 1.0, "b": 1.5, "c": 2.8, "d": 3.0, "e": 4.2})
    # within 1.5 of a: b; of b: c (d is exactly 1.5 away: different); of c: d, e; d's group lies inside c's
    assert nemenyi_groups(ranks, 1.5) == [["a", "b"], ["b", "c"], ["c", "d", "e"]]
    assert nemenyi_groups(ranks, 0.1) == []


def friedman_runs() -> pd.DataFrame:
    """Arms gaba, amnl, dwa on FD001 and FD002 (seeds 1-3), amnl without FD002's seed 3; pcgrad on FD001 only."""
    rows = []
    for dataset, offset in (("FD001", 0.0), ("FD002", 10.0)):
        for seed in (1, 2, 3):
            for loss, value in (("gaba", 15.0), ("amnl", 16.0 + 0.1 * seed), ("dwa", 17.0 - 0.8 * seed)):
                if not (loss == "amnl" and dataset == "FD002" and seed == 3):
                    rows.append(run(loss, seed, value + offset, dataset=dataset))
    rows += [run("pcgrad", s, 14.0, dataset="FD001") for s in (1, 2, 3)]
    return frame(rows)


def test_friedman_blocks_are_the_dataset_seed_pairs_every_arm_completed():
    [test] = friedman_tests(friedman_runs())
    # FD001 + FD002 with gaba, amnl, dwa: 5 blocks (FD002 seed 3 lacks amnl), 15 observations, against FD001
    # alone with all four arms: 3 blocks, 12 observations
    assert (test["k"], test["n_blocks"], test["refused"]) == (3, 5, None)
    assert test["left_out"] == ["pcgrad + wmse"]
    assert list(test["values"].index) == [("FD001", 1, 0), ("FD001", 2, 0), ("FD001", 3, 0), ("FD002", 1, 0),
                                          ("FD002", 2, 0)]
    # per seed (the offset moves every arm alike): gaba 15, amnl 16.1 16.2 16.3, dwa 16.2 15.4 14.6, so ranks
    # (gaba, amnl, dwa) are (1, 2, 3), (1, 3, 2), (2, 3, 1): over FD001's three seeds and FD002's first two,
    # gaba (1 + 1 + 2 + 1 + 1) / 5, amnl (2 + 3 + 3 + 2 + 3) / 5, dwa (3 + 2 + 1 + 3 + 2) / 5
    assert test["mean_ranks"].to_dict() == pytest.approx({"gaba + wmse": 1.2, "amnl + wmse": 2.6,
                                                          "dwa + wmse": 2.2})
    values = test["values"]
    assert test["statistic"] == pytest.approx(sps.friedmanchisquare(*(values[c] for c in values)).statistic)
    text = friedman_markdown([test], M, md_table)
    assert "k = 3 arms, N = 5 blocks (FD001 × seeds 1 2 3; FD002 × seeds 1 2)" in text
    assert "Left out of the design" in text and "pcgrad + wmse" in text


def test_complete_design_leaves_out_an_arm_missing_blocks():
    frame_ = friedman_runs()
    frame_ = frame_[frame_["dataset"] == "FD001"]
    frame_ = frame_[~((frame_["loss"] == "pcgrad") & (frame_["seed"] == 3))]  # pcgrad: seeds 1 and 2 only
    values, left_out = complete_design(arm_frame(frame_, M), M)
    # all four arms share 2 blocks (8 observations); without pcgrad, 3 arms share 3 (9)
    assert values.shape == (3, 3) and left_out == ["pcgrad + wmse"]


def test_friedman_refuses_politely_with_too_few_arms_or_blocks():
    two_arms = frame([run(loss, s, 10.0 + s + i, dataset=d) for i, loss in enumerate(("gaba", "amnl"))
                      for d in ("FD001", "FD002") for s in (1, 2, 3)])
    one_block = frame([run(loss, 1, 10.0 + i) for i, loss in enumerate(("gaba", "amnl", "dwa"))])
    for runs, k, n in ((two_arms, 2, 6), (one_block, 3, 1)):
        [test] = friedman_tests(runs)
        assert test["refused"] and (test["k"], test["n_blocks"]) == (k, n)
        assert f"k = {k} arm" in test["refused"] and f"N = {n} block" in test["refused"]
        text = friedman_markdown([test], M, md_table)
        assert "Friedman test not run: it needs at least 3 arms and 2 blocks" in text and "χ²" not in text


# ------------------------------------------------------------------ GABA's floor and the test truth
def test_floor_summary_by_hand():
    """A floored weight reads min_weight / (min_weight + w_health) = 0.05 / 1.05 = 0.0476 after renormalising:
    at the floor, though 0.0024 below min_weight. Warmup 100 steps: the first epoch (steps 0-50) and the second
    (50-100) began inside it."""
    log = pd.DataFrame({"epoch": range(7), "step": [50, 100, 150, 200, 250, 300, 350],
                        "weight_rul": [0.5, 0.49, 0.3, 0.05 / 1.05, 0.05 + 5e-7, 0.0476, 0.05 / 1.05]})
    got = floor_summary(log, min_weight=0.05, warmup_steps=100)
    assert (got["epochs"], got["at_floor"], got["first_floor_epoch"]) == (7, 4, 3)
    assert (got["min_after_warmup"], got["max_after_warmup"]) == (pytest.approx(0.0476), 0.3)
    assert got["left_floor"] is False
    log.loc[5, "weight_rul"] = 0.08  # up again after reaching the floor
    left = floor_summary(log, 0.05, 100)
    assert left["left_floor"] is True and left["max_after_floor"] == 0.08 and left["at_floor"] == 3
    never = floor_summary(log.assign(weight_rul=0.5), 0.05, 100)
    assert never["at_floor"] == 0 and math.isnan(never["first_floor_epoch"]) and never["left_floor"] is False
    per_run = pd.DataFrame([{"protocol": "holdout", "test_truth": "capped at 125", "dataset": "FD001",
                             "arm": "gaba + wmse", "min_weight": 0.05, "seed": s, "fold": 0, **summary}
                            for s, summary in ((1, got), (2, left))])
    [row] = floor_table(per_run).to_dict("records")
    assert (row["runs"], row["epochs"], row["at_floor"], row["left_floor"], row["reached_floor"]) == (2, 14, 7, 1, 2)


def test_test_truth_keeps_capped_and_uncapped_runs_apart():
    assert [truth_label(c, m) for c, m in ((True, 125), (None, 125.0), (False, 125), (None, None))] == \
        ["capped at 125", "capped at 125", "not capped", "capped at max_rul"]
    rows = [run(loss, s, v * s, cap_test_rul=cap, max_rul=125) for loss, v in (("gaba", 10.0), ("amnl", 11.0))
            for s in (1, 2) for cap in (True, False)]
    got = paired_comparisons(frame(rows), reference="gaba")
    assert sorted(got["test_truth"]) == ["capped at 125", "not capped"] and (got["n_pairs"] == 2).all()
    text = markdown(got, rank_table(frame(rows)), "gaba", M, md_table)
    assert "Test truth differs between rows: see the test truth column." in text
    assert "| holdout | not capped | FD001 | amnl + wmse |" in text
