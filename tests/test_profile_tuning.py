"""results/profile_tuning/: the trials table from a study's trials.csv, and the committed README's tables
regenerate from the committed trials.csv files."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO, composed

sys.path.insert(0, str(REPO / "results" / "profile_tuning"))
import summary  # noqa: E402


def test_finished_trials_best_first_pruned_last_the_incumbent_marked(tmp_path: Path) -> None:
    rows = [  # number, state, value, incumbent, GRACE (score, CPU-s, epochs), fixed, lr
        (0, "COMPLETE", 13.0, None, (12.0, 60.0, 10), (14.0, 120.0, 12), 0.002),
        (1, "PRUNED", None, None, (20.0, 30.0, 3), (None, None, None), 0.0001),
        (2, "COMPLETE", 12.5, True, (12.4, 90.0, 11), (12.6, 30.0, 9), 0.001),
        (3, "FAIL", None, None, (None, None, None), (None, None, None), 0.003),
    ]
    frame = pd.DataFrame([{
        "number": n, "state": state, "value": value, "user_attrs_incumbent": incumbent,
        **{f"user_attrs_{key}_{variant}": v for variant, run in (("grace", grace), ("fixed", fixed))
           for key, v in zip(("score", "cpu_s", "epochs"), run)}, "params_optimizer.lr": lr}
        for n, state, value, incumbent, grace, fixed, lr in rows])
    lines = summary.table(frame).splitlines()
    assert lines[0] == "| trial | held-out | GRACE | fixed | CPU-min | epochs | lr |"
    assert lines[2:] == [
        "| 2 (incumbent) | 12.500 | 12.400 | 12.600 | 1.5 / 0.5 | 11 / 9 | 0.001 |",
        "| 0 | 13.000 | 12.000 | 14.000 | 1.0 / 2.0 | 10 / 12 | 0.002 |",
        "| 1 (pruned) | — | 20.000 | — | 0.5 / — | 3 / — | 0.0001 |",
    ]  # the failed trial (a killed process; its parameters ran again) is left out


def test_the_readme_tables_regenerate_from_the_committed_trials() -> None:
    """Each ``<!-- summary.py <trials.csv> ... -->`` marker is followed by what summary.py prints for those files,
    and every committed study has its own table."""
    folder = REPO / "results" / "profile_tuning"
    readme = (folder / "README.md").read_text()
    markers = re.findall(r"<!-- summary\.py (.+?) -->", readme)
    studies = sorted(p.relative_to(folder).as_posix() for p in folder.glob("FD00*/trials.csv"))
    assert studies and set(studies) <= set(markers)
    for marker in markers:
        paths = marker.split()
        out = subprocess.run([sys.executable, "summary.py", *paths], cwd=folder, capture_output=True, text=True,
                             check=True).stdout
        assert f"<!-- summary.py {marker} -->\n\n{out}\n" in readme, marker


def test_a_checked_trial_is_matched_across_studies_and_ranked_by_its_mean() -> None:
    first = pd.DataFrame([{"number": n, "state": "COMPLETE", "value": v, "user_attrs_incumbent": n == 2}
                          for n, v in [(0, 12.0), (1, 11.0), (2, 13.0)]])
    check = pd.DataFrame([{"number": n, "state": "COMPLETE", "value": v, "user_attrs_recheck_of": of,
                           "user_attrs_incumbent": of is None} for n, v, of in [(0, 16.0, 1), (1, 12.0, 0),
                                                                               (2, 15.0, None)]])
    assert summary.across({"A": first, "B": check}).splitlines() == [
        "| trial | A | B | mean |", "|---|---|---|---|", "| 0 | 12.000 | 12.000 | 12.000 |",
        "| 1 | 11.000 | 16.000 | 13.500 |", "| incumbent | 13.000 | 15.000 | 14.000 |"]


def test_a_check_studys_rows_name_the_trial_they_score_again() -> None:
    frame = pd.DataFrame([
        {"number": 0, "state": "COMPLETE", "value": 12.0, "user_attrs_recheck_of": 23.0, "params_optimizer.lr": 0.003},
        {"number": 1, "state": "COMPLETE", "value": 11.0, "user_attrs_recheck_of": None,
         "user_attrs_incumbent": True, "params_optimizer.lr": 0.002}])
    assert [line.split(" | ")[0] for line in summary.table(frame).splitlines()[2:]] == [
        "| 1 (incumbent)", "| 0 (trial 23)"]


@pytest.mark.parametrize(("preset", "dataset", "space", "number"), [
    ("cpu_tuned_fd001", "FD001", "profile", 23), ("cpu_tuned_fd002", "FD002", "profile_conditions", 13)])
def test_a_shipped_profile_is_its_chosen_trial(preset: str, dataset: str, space: str, number: int) -> None:
    """budget=cpu_tuned_<subset> composes the searched keys to the values of the trial its study chose (read from
    the committed trials.csv), rounded to three significant digits, with the study's cap and epochs."""
    searched = composed([f"hparams_search={space}", f"dataset={dataset}"], config_name="tune").hparams_search.params
    cfg = composed([f"budget={preset}", f"dataset={dataset}"])  # as the campaign trains it, no study around it
    trials = pd.read_csv(REPO / "results" / "profile_tuning" / dataset / "trials.csv").set_index("number")
    for key in searched:
        chosen, shipped = trials.loc[number, f"params_{key}"], OmegaConf.select(cfg, key)
        if isinstance(shipped, float):
            assert shipped == pytest.approx(chosen, rel=5e-3), key
        else:
            assert shipped == chosen, key
    assert (cfg.callbacks.cpu_budget.minutes, cfg.trainer.max_epochs) == (5, 60)
