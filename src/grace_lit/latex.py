"""A report's tables as booktabs LaTeX, for a paper (``grace_lit.report --latex`` writes ``report.tex``).

One table per protocol, test truth and metric: a row per arm (controller + RUL loss + its own settings), a column
per dataset with the mean ± sample standard deviation over seeds, the lowest mean of each column in bold, and
beside it the paired difference from the reference arm with its 95% bootstrap interval (from ``grace_lit.stats``,
for the metric the report compares). The caption names the protocol, its selection rule, the test truth (capped
or raw) and the settings every row of a dataset shares, so a table read alone says what its numbers are.
Presentation only: it formats the report's own frames and computes nothing new.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

from grace_lit.stats import arm_label

PREAMBLE = "% booktabs tables written by grace_lit.report --latex; they need \\usepackage{booktabs}"
SPECIAL = re.compile(r"([\\&%$#_{}~^])")
REPLACE = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
NONE = "--"


def escape(text: Any) -> str:
    """``text`` as LaTeX prints it literally."""
    return SPECIAL.sub(lambda m: REPLACE.get(m.group(1), "\\" + m.group(1)), str(text))


def split_settings(variants: pd.Series) -> tuple[str, dict[str, str]]:
    """The overrides every arm of one dataset shares (said once, in the caption), and each variant's rest (which
    tells its row apart): the same arm on two datasets whose profiles differ then shares one row."""
    tokens = {v: v.split() for v in variants.unique()}
    shared = [t for t in next(iter(tokens.values()), []) if all(t in rest for rest in tokens.values())]
    return " ".join(shared), {v: " ".join(t for t in rest if t not in shared) for v, rest in tokens.items()}


def number(mean: float, std: float, spec: str, bold: bool) -> str:
    if pd.isna(mean):
        return NONE
    text = f"{mean:{spec}}" if pd.isna(std) else f"{mean:{spec}} \\pm {std:{spec}}"
    return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"


def difference(row: pd.Series | None, spec: str) -> str:
    """The paired mean difference and its interval (the interval absent below two pairs)."""
    if row is None or pd.isna(row["mean_diff"]):
        return NONE
    mean = f"${row['mean_diff']:+{spec}}$"
    return mean if pd.isna(row["ci_low"]) else \
        f"{mean} {{\\scriptsize $[{row['ci_low']:+{spec}}, {row['ci_high']:+{spec}}]$}}"


def truth_words(truth: str) -> str:
    return "raw (not capped)" if truth == "not capped" else truth


def table(block: pd.DataFrame, paired: pd.DataFrame | None, reference: str, stem: str, heading: str,
          spec: str) -> str:
    """One tabular of ``block`` (the report's summary rows of one protocol and test truth) for one metric;
    ``paired``: the comparisons of that metric in the same protocol and truth (None: no difference columns)."""
    datasets = sorted(block["dataset"].unique())
    rows: dict[tuple[str, str, str], dict[str, pd.Series]] = {}
    shared = {}
    for dataset in datasets:
        cells = block[block["dataset"] == dataset]
        shared[dataset], rest = split_settings(cells["variant"])
        for _, cell in cells.iterrows():
            rows.setdefault((cell["loss"], cell["rul_loss"], rest[cell["variant"]]), {})[dataset] = cell
    order = sorted(rows, key=lambda arm: (arm[0] != reference, arm))
    shown = {d: [float(f"{m:{spec}}") for m in block.loc[block["dataset"] == d, f"{stem}_mean"].dropna()]
             for d in datasets}  # as printed: means equal to the shown digits tie
    best = {d: min(values, default=None) for d, values in shown.items()}
    columns = "l" + ("cc" if paired is not None else "c") * len(datasets)
    head = ["arm", *(c for d in datasets for c in ([escape(d), "$\\Delta$ " + escape(d)] if paired is not None
                                                   else [escape(d)]))]
    body = []
    for arm in order:
        line = [escape(arm_label(*arm))]
        for dataset in datasets:
            cell = rows[arm].get(dataset)
            mean, std = (cell[f"{stem}_mean"], cell[f"{stem}_std"]) if cell is not None else (float("nan"),) * 2
            line.append(number(mean, std, spec, pd.notna(mean) and float(f"{mean:{spec}}") == best[dataset]))
            if paired is not None:
                found = None if cell is None else paired[
                    (paired["dataset"] == dataset)
                    & (paired["arm"] == arm_label(cell["loss"], cell["rul_loss"], cell["variant"]))]
                line.append(difference(None if found is None or found.empty else found.iloc[0], spec))
        body.append(line)
    protocol, truth = block["protocol"].iloc[0], block["test_truth"].iloc[0]
    runs = sorted({int(n) for n in block["n_runs"]})
    per_cell = str(runs[0]) if len(runs) == 1 else f"{runs[0]}--{runs[-1]}"
    settings = "; ".join(f"{', '.join(escape(d) for d in ds)}: \\texttt{{{escape(s)}}}"
                         for s, ds in group_by_value(shared).items() if s)
    caption = (f"{escape(heading[:1].upper() + heading[1:])}, mean $\\pm$ sample standard deviation over seeds "
               f"({per_cell} runs per cell). "
               f"Protocol \\texttt{{{escape(protocol)}}}: selection on {escape(block['selection'].iloc[0])}; "
               f"test truth {escape(truth_words(truth))}. Bold: the lowest mean of each dataset."
               + (f" $\\Delta$: the arm minus its {escape(reference)} arm on the same seeds, mean and 95\\% "
                  f"bootstrap interval (percentile)." if paired is not None else "")
               + (f" Settings every row of a dataset shares: {settings}." if settings else ""))
    label = "tab:" + re.sub(r"[^A-Za-z0-9_]+", "-", f"{protocol} {stem} {truth}")
    return "\n".join([
        "\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{columns}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule",
        *(" & ".join(line) + " \\\\" for line in body), "\\bottomrule", "\\end{tabular}", "\\end{table}"])


def group_by_value(mapping: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in mapping.items():
        out.setdefault(value, []).append(key)
    return out


def document(summary: pd.DataFrame, paired: pd.DataFrame, reference: str, paired_metric: str,
             metrics: dict[str, tuple[str, str, str]]) -> str:
    """Every table: per (protocol, test truth), one per metric of ``metrics`` (the report's key -> (column stem,
    heading, number format)); the difference columns beside ``paired_metric``'s."""
    parts = [PREAMBLE]
    for (protocol, truth), block in summary.groupby(["protocol", "test_truth"], sort=True):
        compared = paired[(paired["protocol"] == protocol) & (paired["test_truth"] == truth)]
        for key, (stem, heading, spec) in metrics.items():
            if block[f"{stem}_mean"].notna().any():
                differences = compared if key == paired_metric and len(compared) else None
                parts.append(table(block, differences, reference, stem, heading, spec))
    return "\n\n".join(parts) + "\n"
