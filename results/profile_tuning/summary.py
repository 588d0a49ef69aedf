"""A profile study's trials as a markdown table, from its committed ``trials.csv`` alone (grace_lit.tune writes
it): every finished trial, best first, with its held-out score (the mean of GRACE's and fixed 0.5/0.5's), each
run's score, CPU-minutes and epochs, and the drawn values; the incumbent (the budget= profile's own values) marked,
and in a check study (hparams_search=profile_check) the earlier trial each row scores again.

    .venv/bin/python results/profile_tuning/summary.py results/profile_tuning/FD001/trials.csv

Given a study and its check studies (each a ``trials.csv``), one table instead: the checked trials' held-out
scores on every study's split seed and their mean, best first (what chooses the profile that ships).

    .venv/bin/python results/profile_tuning/summary.py FD001/trials.csv FD001_check_s1002/trials.csv ...
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SHORT = {"optimizer.lr": "lr", "optimizer.weight_decay": "wd", "data.batch_size": "batch",
         "model.backbone.dropout": "dropout", "model.backbone.hidden_size": "width", "dataset.window": "window",
         "callbacks.early_stopping.patience": "stop", "callbacks.plateau.patience": "plateau",
         "callbacks.ema.decay": "ema", "dataset.condition_input": "condition"}


def shown(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def score(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}"


def recheck_of(row: pd.Series) -> int | None:
    """The earlier study's trial a check study's row scores again (None for the incumbent and in a study)."""
    value = row.get("user_attrs_recheck_of")
    return None if value is None or pd.isna(value) else int(value)


def table(trials: pd.DataFrame) -> str:
    done = trials[trials.state.isin(["COMPLETE", "PRUNED"])].copy()
    done["order"] = done.value.where(done.state == "COMPLETE")  # pruned trials last, in trial order
    done = done.sort_values(["order", "number"], na_position="last")
    params = [c for c in trials.columns if c.startswith("params_")]
    names = [SHORT.get(c.removeprefix("params_"), c.removeprefix("params_")) for c in params]
    lines = ["| trial | held-out | GRACE | fixed | CPU-min | epochs | " + " | ".join(names) + " |",
             "|---" * (6 + len(names)) + "|"]
    for _, row in done.iterrows():
        number = str(row["number"]) + (" (incumbent)" if row.get("user_attrs_incumbent") is True else "")
        if recheck_of(row) is not None:
            number += f" (trial {recheck_of(row)})"
        complete = row["state"] == "COMPLETE"
        runs = [[row.get(f"user_attrs_{key}_{variant}") for key in ("score", "cpu_s", "epochs")]
                for variant in ("grace", "fixed")]
        lines.append(" | ".join([
            f"| {number}{'' if complete else ' (pruned)'}", score(row["value"]) if complete else "—",
            *(score(run[0]) for run in runs),
            " / ".join("—" if pd.isna(run[1]) else f"{run[1] / 60:.1f}" for run in runs),
            " / ".join("—" if pd.isna(run[2]) else f"{int(run[2])}" for run in runs),
            *(shown(row[c]) for c in params)]) + " |")
    return "\n".join(lines)


def across(studies: dict[str, pd.DataFrame]) -> str:
    """The trials every check study scored again (by their number in the first study; the incumbent as such)."""
    scores: dict[str, dict[str, float]] = {}
    for name, trials in studies.items():
        for _, row in trials[trials.state == "COMPLETE"].iterrows():
            first = recheck_of(row)
            key = "incumbent" if row.get("user_attrs_incumbent") is True else str(
                row["number"] if first is None else first)
            scores.setdefault(key, {})[name] = row["value"]
    frame = pd.DataFrame(scores).T.dropna()  # scored in every study
    frame["mean"] = frame.mean(axis=1)
    lines = ["| trial | " + " | ".join(studies) + " | mean |", "|---" * (len(studies) + 2) + "|"]
    lines += [f"| {key} | " + " | ".join(score(v) for v in row) + " |"
              for key, row in frame.sort_values("mean").iterrows()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        print(across({Path(path).parent.name: pd.read_csv(path) for path in argv}))
    else:
        print(table(pd.read_csv(Path(argv[0]))))


if __name__ == "__main__":
    main(sys.argv[1:])
