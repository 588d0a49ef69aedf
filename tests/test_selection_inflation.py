"""results/selection_inflation/analysis.py on run directories made by hand, its numbers computed by hand."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

SCRIPT = REPO / "results" / "selection_inflation" / "analysis.py"
SEEDS = (1, 2, 3)
# per (controller, seed): the honest score, its trace (epoch -> test RMSE) and its selected epoch
HONEST = {("grace", 1): (14.0, [16.0, 13.0, 14.0], 2), ("grace", 2): (15.0, [15.0, 14.5, 15.5], 0),
          ("grace", 3): (16.0, [17.0, 16.0, 15.0], 1),
          ("amnl", 1): (14.5, [14.5, 14.0], 0), ("amnl", 2): (15.5, [15.5, 15.5], 1),
          ("amnl", 3): (16.5, [16.5, 16.0], 0)}
# per (controller, seed): the paper run's per-epoch test scores (its selected score is their minimum)
PAPER = {("grace", 1): [15.0, 12.0, 13.0], ("grace", 2): [14.0, 13.0, 13.5], ("grace", 3): [13.0, 14.0, 12.5],
         ("amnl", 1): [12.0, 12.5], ("amnl", 2): [14.0, 13.0], ("amnl", 3): [13.0, 13.5],
         ("gradnorm", 1): [11.0], ("gradnorm", 2): [11.0], ("gradnorm", 3): [11.0],
         ("uncertainty", 1): [10.0], ("uncertainty", 2): [10.0], ("uncertainty", 3): [10.0]}
# "the campaign's" honest runs: score + seed (GradNorm's and Uncertainty's only honest runs)
CAMPAIGN = {"grace": 14.0, "amnl": 13.0, "gradnorm": 20.0, "uncertainty": 21.0}


def write_run(run: Path, seed: int, score: float, best_epoch: int, epochs: int, **extra) -> None:
    run.mkdir(parents=True)
    run.joinpath("metrics.json").write_text(json.dumps({
        "status": "completed", "seed": seed, "test/rmse_last": score, "test/nasa": 1.0, "test/rmse_all": 1.0,
        "best_epoch": best_epoch, "epochs_run": epochs, "selection_score": 1.0, **extra}))


def paper_run(run: Path, seed: int, scores: list[float]) -> None:
    write_run(run, seed, min(scores), scores.index(min(scores)), len(scores))
    rows = [{"epoch": e, "test/rmse_last": s} for e, s in enumerate(scores)]
    rows += [{"epoch": e, "test/rmse_last": None} for e in range(len(scores))]  # training rows
    rows.append({"epoch": len(scores), "test/rmse_last": min(scores)})  # the final trainer.test row
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


def load_script():
    spec = importlib.util.spec_from_file_location("selection_analysis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def analysed(tmp_path):
    root, campaign = tmp_path / "audit", tmp_path / "campaign"
    for (controller, seed), (score, trace, best) in HONEST.items():
        run = root / f"FD001_{controller}_holdout" / f"s{seed}"
        write_run(run, seed, score, best, len(trace))
        pd.DataFrame({"epoch": range(len(trace)), "test/rmse_last": trace, "test/nasa": 0.0}).to_csv(
            run / "test_trace.csv", index=False)
        (run / "test_trace.csv").write_text("# note\n" + (run / "test_trace.csv").read_text())
        other = tmp_path / "without_trace" / f"FD001_{controller}_holdout" / f"s{seed}"
        write_run(other, seed, score + (0.1 if (controller, seed) == ("amnl", 3) else 0.0), best, len(trace))
    for (controller, seed), scores in PAPER.items():
        paper_run(root / f"FD001_{controller}_paper" / f"s{seed}", seed, scores)
    for controller, score in CAMPAIGN.items():
        for seed in SEEDS:
            write_run(campaign / f"FD001_{controller}_holdout" / f"s{seed}", seed, score + seed, 0, 1)
    text = load_script().main(root, campaign, tmp_path / "without_trace")
    return text, pd.read_csv(root / "analysis.csv"), root


def value(diffs: pd.DataFrame, controller: str, what: str) -> float:
    row = diffs[(diffs["controller"] == controller) & (diffs["what"] == what)]
    assert len(row) == 1
    return float(row["mean_diff"].iloc[0])


def test_each_difference_by_hand(analysed):
    _, diffs, _ = analysed
    # checkpoint: trace minimum minus the trace at the selected epoch (= the honest score here)
    assert value(diffs, "grace", "checkpoint") == pytest.approx(((13 - 14) + (14.5 - 15) + (15 - 16)) / 3)
    # protocol: the paper run's selected score minus the honest one, paired by seed
    assert value(diffs, "grace", "protocol") == pytest.approx(((12 - 14) + (13 - 15) + (12.5 - 16)) / 3)
    # the paper run at the honest run's selected epoch (2, 0, 1) minus the honest score; its selected score minus
    # that; its last epoch minus the honest score
    assert value(diffs, "grace", "paper_same_epoch") == pytest.approx(((13 - 14) + (14 - 15) + (14 - 16)) / 3)
    assert value(diffs, "grace", "paper_selection") == pytest.approx(((12 - 13) + (13 - 14) + (12.5 - 14)) / 3)
    assert value(diffs, "grace", "paper_last") == pytest.approx(((13 - 14) + (13.5 - 15) + (12.5 - 16)) / 3)
    # AMNL: honest epochs 0, 1, 0 -> paper scores 12, 13, 13
    assert value(diffs, "amnl", "paper_same_epoch") == pytest.approx(((12 - 14.5) + (13 - 15.5) + (13 - 16.5)) / 3)
    # best of the seeds minus their mean
    assert value(diffs, "amnl", "best_seed_holdout") == pytest.approx(14.5 - 15.5)
    assert value(diffs, "amnl", "best_seed_paper") == pytest.approx(12.0 - (12 + 13 + 13) / 3)
    # GradNorm's honest runs come from the campaign: 21, 22, 23
    assert value(diffs, "gradnorm", "protocol") == pytest.approx(11 - 22)
    # the pooled row: GRACE's and AMNL's six pairs together
    assert value(diffs, "grace+amnl", "checkpoint") == pytest.approx((-2.5 + (-0.5 + 0 - 0.5)) / 6)


def test_the_ranking_and_the_environment_check(analysed):
    text, _, _ = analysed
    # the campaign's means: GRACE 16, AMNL 15, GradNorm 22, Uncertainty 23; paper: 12.5, 12.67, 11, 10 -> all six
    # pairs of controllers in the opposite order: tau -1
    assert "| FD001 | -1.00" in text
    assert ("| AMNL | Uncertainty | AMNL < GRACE < GradNorm < Uncertainty | Uncertainty < GradNorm < GRACE < AMNL |"
            in text)
    assert "* without_trace: 5 of 6 traced runs equal digit for digit" in text


def test_the_figure_is_written(analysed):
    assert (analysed[2] / "selection_inflation.png").stat().st_size > 0


def test_the_committed_analysis_and_the_readme_table_come_from_the_committed_runs(tmp_path):
    """analysis.py on a copy of the committed runs rewrites analysis.md byte for byte; the README's table is its
    own."""
    root = tmp_path / "selection_inflation"
    shutil.copytree(SCRIPT.parent, root)
    module = load_script()
    text = module.main(root, REPO / "results" / "cpu_campaign", REPO / "results" / "selection_inflation_without_trace")
    assert text == (SCRIPT.parent / "analysis.md").read_text()
    table = text.split("## The ladder (means of GRACE and AMNL; the README's table)\n\n")[1].split("\n\n")[0]
    assert table in (REPO / "README.md").read_text()
