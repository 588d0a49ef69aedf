"""Paired statistics: the pairing and the mean difference by hand, p-values against scipy and the exact Wilcoxon
floor 2 / 2^n, the seeded bootstrap, folds as pair keys, the reference arm of grid presets, the rank table by hand,
and the report's section from real metrics.json files."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from grace_lit.report import md_table, report
from grace_lit.stats import markdown, min_wilcoxon_p, paired_comparisons, rank_table

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
