"""The plain yardstick's accuracy-against-CPU curve as a markdown table, from the committed ``<subset>_s<seed>.json``
files alone: per subset and budget, the test RMSE (last window, truth capped at 125) of the best held-out epoch
finished within the budget and of the last one, mean ± sample sd over the seeds, with the epochs run.

``--against FOLDER...``: framework runs (``<cell>/s<seed>/metrics.json``, protocol=holdout) set beside the curve,
per subset and cell: their mean test RMSE and CPU time, and the plain loop at the first budget not below that CPU
time (the plain loop gets at least as much CPU), over the seeds both have; ``--plot``: the curve and those runs as
one figure.

    .venv/bin/python results/plain_curve/table.py [results/plain_curve] [--against results/selection_inflation]
        [--plot results/plain_curve/curve.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from grace_lit.report import collect


def curve(root: Path) -> pd.DataFrame:
    """One row per (file, budget): subset, seed and the budget's point of the curve."""
    rows = []
    for path in sorted(root.glob("FD00*_s*.json")):
        run = json.loads(path.read_text())
        rows += [{"subset": run["dataset"], "seed": run["seed"], **point} for point in run["curve"]]
    return pd.DataFrame(rows)


def framework(folders: list[Path]) -> pd.DataFrame:
    """One row per completed holdout run (grace_lit.report's reader): subset, cell (``<folder>/<cell folder>``),
    its label in the figure (the cell without its subset), seed, CPU minutes, test RMSE."""
    if not folders:
        return pd.DataFrame()
    runs = collect(folders, Path.cwd())
    runs = runs[(runs.status == "completed") & (runs.protocol == "holdout")]
    cells = [Path(run).parent for run in runs.run]
    return pd.DataFrame({
        "subset": runs.dataset, "cell": [f"{c.parent.name}/{c.name}" for c in cells],
        "label": [f"{c.parent.name}/{c.name.removeprefix(f'{subset}_')}" for c, subset in zip(cells, runs.dataset)],
        "seed": runs.seed, "cpu_min": runs.cpu_time_s / 60.0, "test_rmse": runs["test/rmse_last"]})


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


def matched(points: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per subset and cell, on the seeds both have: the runs' mean CPU minutes and test RMSE, the plain loop's at
    the first budget not below that CPU time, and their ratio (None where every budget lies below it)."""
    rows = []
    for (subset, cell), group in runs.groupby(["subset", "cell"]):
        plain = points[points.subset == subset]
        seeds = sorted(set(group.seed) & set(plain.seed))
        if not seeds:
            continue
        mine = group[group.seed.isin(seeds)]
        cpu = mine.cpu_min.mean()
        budgets = sorted(b for b in plain.budget_min.unique() if b >= cpu)
        at = plain[(plain.budget_min == budgets[0]) & plain.seed.isin(seeds)] if budgets else None
        plain_rmse = at.test_rmse_best.mean() if at is not None else None
        rows.append({"subset": subset, "cell": cell, "seeds": len(seeds), "cpu_min": cpu,
                     "test_rmse": mine.test_rmse.mean(), "plain_budget_min": budgets[0] if budgets else None,
                     "plain_rmse": plain_rmse, "ratio": mine.test_rmse.mean() / plain_rmse if plain_rmse else None})
    return pd.DataFrame(rows)


def matched_table(rows: pd.DataFrame) -> str:
    lines = ["| subset | runs | seeds | CPU-min | test RMSE | plain loop at | plain test RMSE | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows.itertuples():
        plain = ("—", "—", "—") if pd.isna(row.plain_rmse) else (
            f"{row.plain_budget_min:g} CPU-min", f"{row.plain_rmse:.2f}", f"{row.ratio:.2f}")
        lines.append(f"| {row.subset} | {row.cell} | {row.seeds} | {row.cpu_min:.2f} | {row.test_rmse:.2f} | "
                     f"{' | '.join(plain)} |")
    return "\n".join(lines)


def plot(points: pd.DataFrame, runs: pd.DataFrame, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets, budgets = sorted(points.subset.unique()), sorted(points.budget_min.unique())
    labels = sorted(set(runs.get("label", [])))
    fig, axes = plt.subplots(1, len(subsets), figsize=(3.2 * len(subsets), 3.0), squeeze=False)
    for ax, subset in zip(axes[0], subsets):
        mean = points[points.subset == subset].groupby("budget_min").test_rmse_best.agg(["mean", "std"])
        ax.errorbar(mean.index, mean["mean"], yerr=mean["std"], marker="o", capsize=3, color="k", label="plain loop")
        for i, label in enumerate(labels):
            group = runs[(runs.subset == subset) & (runs.label == label)]
            if len(group):
                ax.errorbar(group.cpu_min.mean(), group.test_rmse.mean(), xerr=group.cpu_min.std(),
                            yerr=group.test_rmse.std(), marker="s", capsize=3, linestyle="none", color=f"C{i}",
                            label=label)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.minorticks_off()
        ax.set_title(subset)
        ax.set_xlabel("CPU-minutes (one thread)")
    axes[0][0].set_ylabel("test RMSE, last window (capped)")
    legend = {}  # every cell once, whichever subsets it ran on
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    axes[0][-1].legend(legend.values(), legend.keys(), fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--against", nargs="+", type=Path, default=[], help="folders of framework runs")
    parser.add_argument("--plot", type=Path, help="write the figure here")
    args = parser.parse_args(argv)
    points = curve(args.root)
    print(table(points))
    runs = framework(args.against)
    if not runs.empty:
        print()
        print(matched_table(matched(points, runs)))
    if args.plot:
        plot(points, runs, args.plot)


if __name__ == "__main__":
    main()
