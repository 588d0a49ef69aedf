"""Backfill the raw-truth scores of the CPU campaign runs that predate them (issue 30).

Fifteen FD001 runs (``grace``, ``amnl``, ``gradnorm``, five seeds each) were made before a run scored its test
predictions against the raw NASA truth too, so their ``metrics.json`` lacks ``test/rmse_last_raw`` and
``test/nasa_raw`` and their ``predictions.csv`` the ``rul_true_raw`` column. This script adds them from the run's
own ``predictions.csv`` (one row per test unit: its last window's prediction) and NASA's ``RUL_<subset>.txt`` from
the bundled archive (each test unit's true RUL after its last cycle, the file's row for that unit, never capped),
through the function a run itself uses (``grace_lit.results.score_raw_truth``), and marks each backfilled
``metrics.json`` with ``"raw_scores_backfilled": true``: those two scores were computed afterwards, not by the run.

First it checks itself: every run here that has its own raw scores is recomputed the same way and must match to
``TOLERANCE``; nothing is written otherwise. Idempotent: a run with raw scores is left as it is.

    .venv/bin/python results/cpu_campaign/backfill_raw.py [results/cpu_campaign]
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd

from grace_lit.data.archive import ensure_extracted
from grace_lit.data.cmapss import read_subset
from grace_lit.io import atomic_write_csv, atomic_write_json
from grace_lit.results import RAW_KEYS, score_raw_truth

TOLERANCE = 1e-9  # recomputed against the runs' own raw scores: the same arithmetic, so only rounding may differ
MARK = "raw_scores_backfilled"


def raw_truth(nasa_dir: Path, subset: str) -> dict[int, float]:
    """Test unit (1-based, the file's row) -> its true RUL after the unit's last cycle, as the NASA file gives it."""
    _, _, rul = read_subset(nasa_dir, subset)
    return {unit: float(r) for unit, r in enumerate(rul, start=1)}


def rescored(run: Path, truth: dict[int, float]) -> tuple[dict, pd.DataFrame]:
    """The run's metrics.json with RAW_KEYS computed from its predictions.csv, and the predictions with
    ``rul_true_raw``."""
    summary = json.loads((run / "metrics.json").read_text())
    # float32 as the model gave them: the file's shortest decimals read back as float32 are the run's own values
    predictions = pd.read_csv(run / "predictions.csv", dtype={"rul_pred": "float32"})
    predictions = predictions.drop(columns="rul_true_raw", errors="ignore")
    return summary, score_raw_truth(summary, predictions, truth)


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent
    runs = sorted(p.parent for p in root.glob("FD00*_holdout/s*/metrics.json"))
    with tempfile.TemporaryDirectory(prefix="nasa-") as cache:
        nasa_dir = ensure_extracted(cache)
        truths: dict[str, dict[int, float]] = {}
        todo, checked = [], 0
        for run in runs:
            own = json.loads((run / "metrics.json").read_text())
            if own["dataset"] not in truths:
                truths[own["dataset"]] = raw_truth(nasa_dir, own["dataset"])
            truth = truths[own["dataset"]]
            if own.get(RAW_KEYS[0]) is None:
                todo.append((run, truth))
                continue
            summary, predictions = rescored(run, truth)
            for key in RAW_KEYS:
                if not math.isclose(summary[key], own[key], rel_tol=0, abs_tol=TOLERANCE):
                    raise SystemExit(f"{run}: {key} recomputed {summary[key]!r}, the run gave {own[key]!r}")
            if not predictions["rul_true_raw"].equals(pd.read_csv(run / "predictions.csv")["rul_true_raw"]):
                raise SystemExit(f"{run}: rul_true_raw recomputed differs from the run's")
            checked += 1
    print(f"{checked} runs with their own raw scores recomputed to within {TOLERANCE:g}")
    for run, truth in todo:
        summary, predictions = rescored(run, truth)
        summary[MARK] = True
        atomic_write_csv(run / "predictions.csv", predictions)
        atomic_write_json(run / "metrics.json", summary)
        print(f"{run.relative_to(root)}: backfilled rmse_last_raw {summary[RAW_KEYS[0]]:.4f} "
              f"nasa_raw {summary[RAW_KEYS[1]]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
