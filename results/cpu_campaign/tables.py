"""The CPU campaign's tables, as markdown, from the committed files alone, as this folder's README shows them: two
across subsets (the controllers: mean ± sd of the last-window test RMSE per subset and the paired difference from
GRACE with its 95% bootstrap interval, from ``paired.csv``; GRACE against the plain 2x64 LSTM loop at matched CPU
time, ``plain_reference/``), then one per subset (with the NASA score, the Wilcoxon p and the median CPU seconds of
a run). Test truth capped at 125 throughout, as in ``runs.csv``.

    .venv/bin/python results/cpu_campaign/tables.py [results/cpu_campaign]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

from grace_lit.stats import arm_label

DATASETS = ("FD001", "FD002", "FD003", "FD004")
SEEDS = 5  # the campaign's seeds per cell: fewer are named in the cell
# (loss, what else tells the arm apart) -> the row's name, in the README's order
ROWS = {("gaba", ""): "GRACE", ("gaba", "rul_loss.fn.scale"): "GABA, RUL loss in units of 125",
        ("amnl", ""): "AMNL", ("gradnorm", ""): "GradNorm", ("uncertainty", ""): "Uncertainty",
        ("fixed", "loss.controller.weights=[0.05,0.95]"): "fixed 0.05 / 0.95 (GABA's floor)",
        ("fixed", ""): "fixed 0.5 / 0.5", ("single_task", ""): "single-task", ("upgrad", ""): "UPGrad",
        ("pcgrad", ""): "PCGrad", ("mgda", ""): "MGDA", ("dwa", ""): "DWA"}
DIFF = "{mean_diff:+.2f} [{ci_low:+.2f}, {ci_high:+.2f}]"  # a paired.csv row
PLAIN_LAST = re.compile(r"^plain_reference test_rmse_last=(\S+)")
PLAIN_EPOCH = re.compile(r"val_rmse_last\s+(\S+)")


def row_name(loss: str, variant: str) -> str:
    extra = next((key for (name, key) in ROWS if name == loss and key and key in variant), "")
    return ROWS[(loss, extra)]


def completed(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """runs.csv's completed runs, each named by its row and arm; paired.csv indexed by (dataset, arm)."""
    runs = pd.read_csv(root / "runs.csv").query("status == 'completed'")
    runs["row"] = [row_name(loss, variant) for loss, variant in zip(runs["loss"], runs["variant"])]
    runs["arm"] = [arm_label(*a) for a in zip(runs["loss"], runs["rul_loss"], runs["variant"])]
    return runs, pd.read_csv(root / "paired.csv").set_index(["dataset", "arm"])


def versus_grace(paired: pd.DataFrame, dataset: str, name: str, mine: pd.DataFrame) -> pd.Series | None:
    """The row's paired comparison with GRACE on ``dataset`` (None for GRACE itself, or without one)."""
    key = (dataset, mine["arm"].iloc[0])
    return None if name == "GRACE" or key not in paired.index else paired.loc[key]


def subset(runs: pd.DataFrame, paired: pd.DataFrame, dataset: str) -> str:
    lines = ["| controller | runs | test RMSE | NASA | vs GRACE: mean diff [95% CI] | Wilcoxon p | CPU s/run |",
             "|---|---|---|---|---|---|---|"]
    for name in ROWS.values():
        mine = runs[(runs["row"] == name) & (runs["dataset"] == dataset)]
        if mine.empty:
            continue
        pair = versus_grace(paired, dataset, name, mine)
        versus = "—" if pair is None else (DIFF + " ({n_pairs} pairs)").format(**pair)
        p = "—" if pair is None else f"{pair['p_wilcoxon']:.3f}"
        rmse, nasa = mine["test/rmse_last"], mine["test/nasa"]
        lines.append(f"| {'GRACE (GABA + WMSE + AWD)' if name == 'GRACE' else name} | {len(mine)} | "
                     f"{rmse.mean():.2f} ± {rmse.std():.2f} | {nasa.mean():.0f} ± {nasa.std():.0f} | {versus} | {p} | "
                     f"{mine['cpu_time_s'].median():.0f} |")
    return "\n".join(lines)


def controllers(runs: pd.DataFrame, paired: pd.DataFrame) -> str:
    head = "| controller | " + " | ".join(f"{d} | vs GRACE" for d in DATASETS) + " |"
    lines = [head, "|---" * (1 + 2 * len(DATASETS)) + "|"]
    for name in ROWS.values():
        cells = []
        for dataset in DATASETS:
            mine = runs[(runs["row"] == name) & (runs["dataset"] == dataset)]
            if mine.empty:
                cells += ["—", "—"]
                continue
            rmse = mine["test/rmse_last"]
            seeds = "" if len(rmse) == SEEDS else f" ({len(rmse)} seed{'s' * (len(rmse) > 1)})"
            spread = f"{rmse.mean():.2f} ± {rmse.std():.2f}" if len(rmse) > 1 else f"{rmse.iloc[0]:.2f}"
            pair = versus_grace(paired, dataset, name, mine)
            cells += [spread + seeds, "—" if pair is None else DIFF.format(**pair)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain(root: Path) -> str:
    lines = ["| subset | plain 2×64 LSTM | GRACE | ratio GRACE / plain | GRACE lower on | plain held-out score | "
             "GRACE held-out score |", "|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        rows = []
        for metrics in sorted((root / f"{dataset}_grace_holdout").glob("s*/metrics.json")):
            grace = json.loads(metrics.read_text())
            text = root / "plain_reference" / f"{dataset}_grace_holdout_{metrics.parent.name}.txt"
            text_lines = text.read_text().splitlines() if text.is_file() else [""]
            found = PLAIN_LAST.match(text_lines[-1])
            if found:
                held = PLAIN_EPOCH.findall("\n".join(text_lines))
                rows.append({"grace": grace["test/rmse_last"], "plain": float(found.group(1)),
                             "grace_val": grace["selection_score"], "plain_val": float(held[-1]) if held else None})
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        plain_val = "—" if frame["plain_val"].isna().any() else f"{frame['plain_val'].mean():.2f}"
        lines.append(f"| {dataset} | {frame.plain.mean():.2f} ± {frame.plain.std():.2f} | {frame.grace.mean():.2f} ± "
                     f"{frame.grace.std():.2f} | {frame.grace.mean() / frame.plain.mean():.2f} | "
                     f"{int((frame.grace < frame.plain).sum())} of {len(frame)} seeds | {plain_val} | "
                     f"{frame.grace_val.mean():.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent
    runs, paired = completed(root)
    print(controllers(runs, paired) + "\n\n" + plain(root))
    for dataset in DATASETS:
        print(f"\n{dataset}:\n\n{subset(runs, paired, dataset)}")


if __name__ == "__main__":
    main(sys.argv[1:])
