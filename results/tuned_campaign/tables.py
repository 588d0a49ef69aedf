"""The tuned campaign's tables, as markdown, from the committed files alone, as this folder's README shows them:
per subset, the controllers under its tuned profile (the CPU campaign's rows, reader and columns:
``results/cpu_campaign/tables.py``), then every controller beside the first campaign (``budget=cpu``, FD002 and
FD004 ``budget=cpu_fd002``; ``results/cpu_campaign/``) on the same seeds and splits: the paired change, tuned
minus first, with its 95% bootstrap interval. Last-window test RMSE, test truth capped at 125 throughout.
``--readme`` prints the project README's summary instead: every controller on every subset, in one table.

    .venv/bin/python results/tuned_campaign/tables.py [results/tuned_campaign] [--first results/cpu_campaign] [--readme]
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd

from grace_lit.stats import compare

HERE = Path(__file__).resolve().parent
_SPEC = importlib.util.spec_from_file_location("cpu_campaign_tables", HERE.parent / "cpu_campaign" / "tables.py")
first = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(first)


def beside(tuned: pd.DataFrame, earlier: pd.DataFrame) -> str:
    lines = ["| controller | subset | first campaign (`budget=cpu`, `cpu_fd002`) | tuned profile | change [95% CI] | "
             "lower on | CPU s/run: first / tuned |", "|---|---|---|---|---|---|---|"]
    for name in first.ROWS.values():
        for dataset in first.DATASETS:
            mine = tuned[(tuned["row"] == name) & (tuned["dataset"] == dataset)].set_index("seed")
            theirs = earlier[(earlier["row"] == name) & (earlier["dataset"] == dataset)].set_index("seed")
            seeds = mine.index.intersection(theirs.index)
            if seeds.empty:
                continue
            new, old = mine.loc[seeds, "test/rmse_last"], theirs.loc[seeds, "test/rmse_last"]
            change = compare((new - old).to_numpy())
            lines.append(f"| {name} | {dataset} | {old.mean():.2f} ± {old.std():.2f} | {new.mean():.2f} ± "
                         f"{new.std():.2f} | {first.DIFF.format(**change)} | {int((new < old).sum())} of "
                         f"{len(seeds)} seeds | {theirs.loc[seeds, 'cpu_time_s'].median():.0f} / "
                         f"{mine.loc[seeds, 'cpu_time_s'].median():.0f} |")
    return "\n".join(lines)


def overview(tuned: pd.DataFrame, earlier: pd.DataFrame) -> str:
    """The tuned campaign's controllers; a subset without tuned runs keeps its first campaign's, marked, so the
    table still covers every subset."""
    columns = {d: (tuned, d) if (tuned["dataset"] == d).any() else (earlier, f"{d}: first campaign")
               for d in first.DATASETS}
    lines = ["| controller | " + " | ".join(head for _, head in columns.values()) + " |",
             "|---" * (1 + len(columns)) + "|"]
    for name in first.ROWS.values():
        if not (tuned["row"] == name).any():
            continue
        cells = []
        for dataset, (runs, _) in columns.items():
            rmse = runs[(runs["row"] == name) & (runs["dataset"] == dataset)]["test/rmse_last"]
            cells.append(f"{rmse.mean():.2f} ± {rmse.std():.2f}" if len(rmse) > 1 else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=HERE)
    parser.add_argument("--first", type=Path, default=HERE.parent / "cpu_campaign")
    parser.add_argument("--readme", action="store_true", help="the project README's one-table summary")
    args = parser.parse_args(argv)
    runs, paired = first.completed(args.root)
    if args.readme:
        print(overview(runs, first.completed(args.first)[0]))
        return
    for dataset in first.DATASETS:
        if (runs["dataset"] == dataset).any():
            print(f"{dataset}:\n\n{first.subset(runs, paired, dataset)}\n")
    print(beside(runs, first.completed(args.first)[0]))


if __name__ == "__main__":
    main()
