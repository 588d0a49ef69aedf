"""How much selecting on the test set flatters a C-MAPSS number (issue 31), from the runs in this folder alone.

Runs: ``<dataset>_<controller>_paper/s<seed>/`` (``benchmarks/selection_paper.yaml``: the test set drives the
checkpoint, the plateau and the early stop) and ``<dataset>_<controller>_holdout/s<seed>/``
(``benchmarks/selection_holdout.yaml``: selected on held-out units, with ``test_trace.csv``, the test set scored
after every epoch and read by nothing in the run). Every score is the last-window test RMSE, truth capped at 125.

Per subset and controller, over the five seeds (mean ± sd; paired differences with 95% bootstrap intervals,
``grace_lit.stats.compare``; negative: the test-selected number is lower, i.e. flattered):

* ``checkpoint``: within one honest trajectory, the test RMSE at the test-best epoch minus the one at the
  held-out-selected epoch (the trace; pure checkpoint selection, nothing else differs);
* ``protocol``: the paper protocol's test-selected score minus the holdout protocol's honest score, split into
  ``paper_same_epoch`` (the paper run at the epoch the same seed's honest run selected, minus the honest score:
  every unit trained on, the same number of epochs, no epoch chosen on the test set) and ``paper_selection`` (the
  paper run's selected score minus that: choosing its epoch, and its learning-rate cuts, on the test set).
  ``paper_last`` (the paper run's last epoch minus the honest score) is reported too: it is no clean "all units"
  estimate, since the test-driven early stop ends a paper run ``patience`` epochs past its test-best epoch;
* ``best_seed``: the lowest of the five seeds minus their mean, under each protocol (no interval: a minimum over
  five seeds has no useful bootstrap);
* the ranking of the controllers under each protocol (Kendall's tau between the two orders; the "winner").

The holdout runs of GradNorm and Uncertainty come from ``results/cpu_campaign/`` (another environment: the same
commands, digits that may differ; ``check_environment`` says by how much for GRACE and AMNL, which were run in
both). Writes ``analysis.md``, ``analysis.csv`` and ``selection_inflation.png`` here.

    .venv/bin/python results/selection_inflation/analysis.py [RUNS [CAMPAIGN [WITHOUT_TRACE]]]

(defaults: this folder, ``results/cpu_campaign``, ``results/selection_inflation_without_trace``)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats as sps

from grace_lit.stats import compare

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend)

HERE = Path(__file__).resolve().parent
CAMPAIGN = HERE.parent / "cpu_campaign"
WITHOUT_TRACE = HERE.parent / "selection_inflation_without_trace"  # reruns of the traced runs, trace off
DATASETS = ("FD001", "FD002", "FD003", "FD004")
CONTROLLERS = {"grace": "GRACE", "amnl": "AMNL", "gradnorm": "GradNorm", "uncertainty": "Uncertainty"}
TRACED = ("grace", "amnl")  # the controllers whose honest runs were made here, with the trace
SCORE = "test/rmse_last"
# what must agree, digit for digit, between a traced run and the same run without the trace
SAME = ("test/rmse_last", "test/nasa", "test/rmse_all", "best_epoch", "epochs_run", "selection_score")
LADDER = {"honest": "honest (held-out selection)", "trace_best": "test-best epoch of the honest run",
          "paper_best": "paper protocol", "paper_best_seed": "paper protocol, best of five seeds"}


def run_row(run: Path) -> dict | None:
    """One completed run's scores: the final (selected) one, the paper run's last epoch, the trace's best."""
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        return None
    dataset, cell = run.parent.name.split("_", 1)  # <dataset>_<controller>_<protocol>, controller_with_underscores
    controller, protocol = cell.rsplit("_", 1)
    row = {"dataset": dataset, "controller": controller, "protocol": protocol, "seed": metrics["seed"],
           "score": metrics[SCORE], "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
           "environment": json.dumps(metrics.get("environment"), sort_keys=True)}
    if protocol == "paper":  # per-epoch test scores; the final trainer.test row carries epoch == epochs_run
        log = pd.read_csv(run / "metrics.csv").dropna(subset=[SCORE])
        row["curve"] = log.loc[log["epoch"] < metrics["epochs_run"], SCORE].tolist()  # one row per epoch
        row["last"] = row["curve"][-1]
    trace = run / "test_trace.csv"
    if trace.is_file():
        trace = pd.read_csv(trace, comment="#").set_index("epoch")[SCORE]
        row.update(trace_best=float(trace.min()), trace_best_epoch=int(trace.idxmin()),
                   trace_at_selected=float(trace.loc[metrics["best_epoch"]]))
    return row


def load(root: Path, pattern: str) -> pd.DataFrame:
    rows = [run_row(m.parent) for m in sorted(root.glob(f"{pattern}/s*/metrics.json"))]
    return pd.DataFrame([r for r in rows if r is not None])


def campaign_runs(campaign: Path) -> pd.DataFrame:
    """The CPU campaign's holdout runs of the four controllers (one environment, another than this folder's)."""
    runs = load(campaign, "FD00?_*_holdout").assign(source="cpu_campaign")
    return runs[runs["controller"].isin(CONTROLLERS)]


def honest_runs(here: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The holdout runs to compare with: this folder's where it has them, else the CPU campaign's (``source``)."""
    own = here[here["protocol"] == "holdout"].assign(source="here")
    have = set(zip(own["dataset"], own["controller"]))
    other = other[[(d, c) not in have for d, c in zip(other["dataset"], other["controller"])]]
    return pd.concat([own, other], ignore_index=True)


def at_honest_epoch(paper: pd.DataFrame, honest: pd.DataFrame) -> pd.Series:
    """The paper run's test score at the epoch held-out selection chose in the same seed's honest run (its last
    epoch if it stopped sooner); ``paper`` and ``honest`` share their index (seed, or dataset-controller-seed)."""
    epochs = honest["best_epoch"].reindex(paper.index)
    return pd.Series([np.nan if np.isnan(e) else curve[min(int(e), len(curve) - 1)]
                      for curve, e in zip(paper["curve"], epochs)], index=paper.index)


def decomposed(paper: pd.DataFrame, honest: pd.DataFrame, keys: dict) -> list[dict]:
    """The protocol's effect and its two parts (module docstring), paired by the shared index."""
    same = at_honest_epoch(paper, honest)
    return [paired(paper["score"], honest["score"], "protocol", **keys),
            paired(same, honest["score"], "paper_same_epoch", **keys),
            paired(paper["score"], same, "paper_selection", **keys),
            paired(paper["last"], honest["score"], "paper_last", **keys)]


def paired(a: pd.Series, b: pd.Series, what: str, **keys) -> dict:
    """``a - b`` over the seeds both have (Series indexed by seed)."""
    diffs = (a - b).dropna()
    return {**keys, "what": what, "n": len(diffs), "sd": float(diffs.std()) if len(diffs) > 1 else np.nan,
            **compare(diffs.to_numpy())}


def differences(runs: pd.DataFrame, honest: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (dataset, controller), paper in runs[runs["protocol"] == "paper"].groupby(["dataset", "controller"]):
        mine = honest[(honest["dataset"] == dataset) & (honest["controller"] == controller)].set_index("seed")
        paper = paper.set_index("seed")
        keys = {"dataset": dataset, "controller": controller,
                "honest_from": mine["source"].iloc[0] if len(mine) else None}
        out += decomposed(paper, mine, keys)
        if mine.get("trace_best", pd.Series(dtype=float)).notna().any():
            out.append(paired(mine["trace_best"], mine["score"], "checkpoint", **keys))
        for name, scores in (("best_seed_holdout", mine["score"]), ("best_seed_paper", paper["score"])):
            out.append({**keys, "what": name, "n": len(scores), "mean_diff": scores.min() - scores.mean()})
    return pd.DataFrame(out).dropna(subset=["mean_diff"])


def pooled(runs: pd.DataFrame, honest: pd.DataFrame) -> pd.DataFrame:
    """Per subset, the traced controllers' pairs together (GRACE and AMNL: 10 pairs, one environment)."""
    out = []
    mine = honest[honest["controller"].isin(TRACED) & (honest["source"] == "here")].set_index(
        ["dataset", "controller", "seed"])
    paper = runs[(runs["protocol"] == "paper") & runs["controller"].isin(TRACED)].set_index(
        ["dataset", "controller", "seed"])
    for dataset in DATASETS:
        if dataset not in mine.index.get_level_values(0) or dataset not in paper.index.get_level_values(0):
            continue
        m, p = mine.xs(dataset, drop_level=False), paper.xs(dataset, drop_level=False)
        keys = {"dataset": dataset, "controller": "+".join(TRACED), "honest_from": "here"}
        out += [paired(m["trace_best"], m["score"], "checkpoint", **keys), *decomposed(p, m, keys)]
    return pd.DataFrame(out)


def rankings(runs: pd.DataFrame, honest: pd.DataFrame) -> pd.DataFrame:
    """Per subset with every controller under both protocols: Kendall's tau between the two orders of the means.
    ``honest``: the CPU campaign's runs, so that each protocol's four cells share one environment."""
    out = []
    for dataset in DATASETS:
        paper = runs[(runs["protocol"] == "paper") & (runs["dataset"] == dataset)].groupby("controller")["score"]
        mine = honest[honest["dataset"] == dataset].groupby("controller")["score"]
        both = pd.DataFrame({"paper": paper.mean(), "holdout": mine.mean()}).dropna()
        if len(both) < len(CONTROLLERS):
            continue
        tau = sps.kendalltau(both["paper"], both["holdout"])
        out.append({"dataset": dataset, "tau": tau.statistic, "p": tau.pvalue,
                    "winner_holdout": CONTROLLERS[both["holdout"].idxmin()],
                    "winner_paper": CONTROLLERS[both["paper"].idxmin()],
                    "order_holdout": " < ".join(CONTROLLERS[c] for c in both["holdout"].sort_values().index),
                    "order_paper": " < ".join(CONTROLLERS[c] for c in both["paper"].sort_values().index)})
    return pd.DataFrame(out)


def ladder(runs: pd.DataFrame, honest: pd.DataFrame) -> pd.DataFrame:
    """Per subset, the traced controllers' mean score at each step of selection on the test set."""
    out = []
    for dataset in DATASETS:
        mine = honest[(honest["dataset"] == dataset) & honest["controller"].isin(TRACED) & (honest["source"] == "here")]
        paper = runs[(runs["protocol"] == "paper") & (runs["dataset"] == dataset)
                     & runs["controller"].isin(mine["controller"].unique())]  # the controllers on both rungs
        if mine.empty or paper.empty:
            continue
        out.append({"dataset": dataset, "honest": mine["score"].mean(), "trace_best": mine["trace_best"].mean(),
                    "paper_best": paper["score"].mean(),
                    "paper_best_seed": paper.groupby("controller")["score"].min().mean()})
    return pd.DataFrame(out)


def check_environment(root: Path, here: pd.DataFrame, campaign: Path, without_trace: Path) -> pd.DataFrame:
    """Each traced run against the same command's committed CPU-campaign run and, where present, its rerun without
    the trace in this environment (``without_trace``): whether ``SAME`` agree digit for digit."""
    out = []
    for _, row in here[here["protocol"] == "holdout"].iterrows():
        cell = f"{row['dataset']}_{row['controller']}_holdout/s{row['seed']}/metrics.json"
        traced = json.loads((root / cell).read_text())
        entry = {"dataset": row["dataset"], "controller": row["controller"], "seed": row["seed"]}
        for name, base in (("campaign", campaign), ("without_trace", without_trace)):
            other = base / cell
            if other.is_file():
                other = json.loads(other.read_text())
                entry[f"same_as_{name}"] = all(traced.get(k) == other.get(k) for k in SAME)
                entry[f"{name}_score"] = other[SCORE]
        out.append({**entry, "traced_score": traced[SCORE]})
    return pd.DataFrame(out)


def fmt_diff(row: pd.Series) -> str:
    if np.isnan(row.get("ci_low", np.nan)):
        return f"{row['mean_diff']:+.2f}"
    return f"{row['mean_diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def readme_table(steps: pd.DataFrame, pools: pd.DataFrame) -> str:
    """The README's table: the ladder's means and what the paper protocol takes off, per subset."""
    lines = ["| subset | honest | test-best epoch, same runs | paper protocol | paper, best of 5 seeds "
             "| paper − honest [95% CI] |", "|---|---|---|---|---|---|"]
    for _, s in steps.iterrows():
        p = pools[pools["dataset"] == s["dataset"]].set_index("what")
        lines.append(f"| {s['dataset']} | " + " | ".join(f"{s[k]:.2f}" for k in LADDER) +
                     f" | {fmt_diff(p.loc['protocol'])} |")
    return "\n".join(lines)


def markdown(diffs: pd.DataFrame, pools: pd.DataFrame, ranks: pd.DataFrame, steps: pd.DataFrame,
             env: pd.DataFrame) -> str:
    lines = ["# Selection inflation: the analysis", "",
             "Generated by `analysis.py` from the runs in this folder; last-window test RMSE, **test truth capped at "
             "125**, budget=cpu (FD002/FD004 budget=cpu_fd002), five seeds. Differences are paired by seed: mean "
             "[95% bootstrap interval]; negative = the test-selected number is lower (flattered).", "",
             "## What test-set selection is worth, per subset (GRACE and AMNL together, one environment)", "",
             "| subset | pairs | honest | test-best epoch − selected epoch | paper protocol − honest "
             "| of which: all units, same epoch | of which: epoch chosen on test |",
             "|---|---|---|---|---|---|---|"]
    for _, s in steps.iterrows():
        p = pools[pools["dataset"] == s["dataset"]].set_index("what")
        lines.append(f"| {s['dataset']} | {p.loc['protocol', 'n']} | {s['honest']:.2f} | "
                     f"{fmt_diff(p.loc['checkpoint'])} | {fmt_diff(p.loc['protocol'])} | "
                     f"{fmt_diff(p.loc['paper_same_epoch'])} | {fmt_diff(p.loc['paper_selection'])} |")
    lines += ["", "## The ladder (means of GRACE and AMNL; the README's table)", "", readme_table(steps, pools)]
    lines += ["", "## Per controller", "",
              "`honest from`: `here` = the traced holdout runs of this folder; `cpu_campaign` = the committed CPU "
              "campaign's holdout runs (another environment).", "",
              "| subset | controller | honest from | checkpoint | protocol | all units, same epoch "
              "| epoch chosen on test | paper last epoch − honest | best seed, holdout | best seed, paper |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, controller), group in diffs.groupby(["dataset", "controller"], sort=True):
        g = group.set_index("what")
        cell = (lambda k: fmt_diff(g.loc[k]) if k in g.index else "—")
        lines.append(f"| {dataset} | {CONTROLLERS[controller]} | {g['honest_from'].iloc[0]} | {cell('checkpoint')} | "
                     f"{cell('protocol')} | {cell('paper_same_epoch')} | {cell('paper_selection')} | "
                     f"{cell('paper_last')} | "
                     f"{cell('best_seed_holdout')} | {cell('best_seed_paper')} |")
    lines += ["", "## The ranking of the four controllers under each protocol", "",
              "Means over the five seeds; holdout: the CPU campaign's runs, paper: this folder's (each protocol's "
              "four cells from one environment).", "",
              "| subset | Kendall's tau (p) | winner, holdout | winner, paper | order, holdout | order, paper |",
              "|---|---|---|---|---|---|"]
    for _, r in ranks.iterrows():
        lines.append(f"| {r['dataset']} | {r['tau']:+.2f} ({r['p']:.2f}) | {r['winner_holdout']} | "
                     f"{r['winner_paper']} | {r['order_holdout']} | {r['order_paper']} |")
    if not env.empty:
        lines += ["", "## The traced runs against the same runs without the trace", ""]
        for name in ("campaign", "without_trace"):
            col = f"same_as_{name}"
            if col in env:
                known = env[col].dropna()
                lines.append(f"* {name}: {int(known.sum())} of {len(known)} traced runs equal digit for digit "
                             f"({', '.join(SAME)}).")
    return "\n".join(lines) + "\n"


def figure(steps: pd.DataFrame, path: Path) -> None:
    """One line per subset down the ladder: each step selects a little more on the test set."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for _, row in steps.iterrows():
        ax.plot(range(len(LADDER)), [row[k] for k in LADDER], "o-", label=row["dataset"])
    ax.set_xticks(range(len(LADDER)), [label.replace(", ", ",\n").replace(" (", "\n(").replace(" of the", "\nof the")
                                       for label in LADDER.values()], fontsize=7)
    ax.set_ylabel("test RMSE, last window\n(truth capped at 125)")
    ax.set_title("Selecting on the test set, step by step (GRACE and AMNL, 5 seeds, CPU budget)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(root: Path = HERE, campaign: Path = CAMPAIGN, without_trace: Path = WITHOUT_TRACE) -> str:
    runs = load(root, "FD00?_*_*")
    other = campaign_runs(campaign)
    honest = honest_runs(runs, other)
    diffs = pd.concat([differences(runs, honest), pooled(runs, honest)], ignore_index=True)
    steps = ladder(runs, honest)
    env = check_environment(root, runs, campaign, without_trace)
    text = markdown(diffs[diffs["controller"] != "+".join(TRACED)], diffs[diffs["controller"] == "+".join(TRACED)],
                    rankings(runs, other), steps, env)
    (root / "analysis.md").write_text(text)
    diffs.to_csv(root / "analysis.csv", index=False)
    if not steps.empty:
        figure(steps, root / "selection_inflation.png")
    return text


if __name__ == "__main__":
    print(main(*map(Path, sys.argv[1:])))
