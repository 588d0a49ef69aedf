"""The plain yardstick's accuracy-against-CPU curve as a markdown table, from the committed ``<subset>_s<seed>.json``
files alone: per subset and budget, the test RMSE (last window, truth capped at 125) of the best held-out epoch
finished within the budget and of the last one, mean ± sample sd over the seeds, with the epochs run.

    .venv/bin/python results/plain_curve/table.py [results/plain_curve]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def curve(root: Path) -> pd.DataFrame:
    """One row per (file, budget): subset, seed and the budget's point of the curve."""
    rows = []
    for path in sorted(root.glob("FD00*_s*.json")):
        run = json.loads(path.read_text())
        rows += [{"subset": run["dataset"], "seed": run["seed"], **point} for point in run["curve"]]
    return pd.DataFrame(rows)


def spread(values: pd.Series) -> str:
    """Mean ± sd over the seeds with a score; how many, where some had no epoch finished within the budget."""
    scored = values.dropna()
    text = f"{scored.mean():.2f}" if len(scored) < 2 else f"{scored.mean():.2f} ± {scored.std():.2f}"
    return text if len(scored) == len(values) else f"{text} ({len(scored)} of {len(values)} seeds)"


def table(points: pd.DataFrame) -> str:
    lines = ["| subset | CPU-min | seeds | epochs | best held-out epoch: test RMSE | last epoch: test RMSE |",
             "|---|---|---|---|---|---|"]
    for (subset, budget), rows in points.sort_values("seed").groupby(["subset", "budget_min"]):
        lines.append(f"| {subset} | {budget:g} | {' '.join(str(s) for s in rows['seed'])} | "
                     f"{' / '.join(str(e) for e in rows['epochs'])} | {spread(rows['test_rmse_best'])} | "
                     f"{spread(rows['test_rmse_last'])} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent
    print(table(curve(root)))


if __name__ == "__main__":
    main(sys.argv[1:])
