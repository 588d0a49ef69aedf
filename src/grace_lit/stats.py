"""Paired statistics for the report: each controller against a reference controller over the runs they share.

Within one protocol and dataset an *arm* is a controller, RUL loss and variant (the report's groups). Two runs
pair when they share the seed and, when the runs carry one, the fold: same split, same initialisation, so the
difference is the controller's. Each comparison gives the mean difference (arm minus reference; negative: a lower
error than the reference), a 95% bootstrap interval of that mean (``scipy.stats.bootstrap``, percentile method,
9,999 resamples by default, seeded) and two two-sided paired tests: the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, exact for small samples, no normality assumed; the one to quote) and the paired t-test
(``scipy.stats.ttest_rel``).

With n pairs the Wilcoxon test cannot give p below 2 / 2^n (every difference of one sign): 0.0625 at n = 5, so
five seeds can never reach p < 0.05 however large the effect. Such comparisons carry a warning.

Runs are compared only with runs scored against the same test truth: ``test_truth`` (``capped at 125`` or ``not
capped``, from ``dataset.cap_test_rul`` and ``dataset.max_rul``; runs older than that option always capped) is a
key of every table beside the protocol.

Across datasets: a Friedman test over the arms with the Nemenyi critical difference (Demšar 2006), blocked by
(dataset, seed, fold), see ``friedman_tests``. And GABA's task weights over training: how much of the run its RUL
weight spends at the ``min_weight`` floor, see ``floor_summary``.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

ARM = ("loss", "rul_loss", "variant")
COMPARISON_COLUMNS = ["protocol", "test_truth", "dataset", "arm", "reference", "n_pairs", "pairs", "mean_diff",
                      "ci_low", "ci_high", "p_wilcoxon", "p_ttest", "min_p_wilcoxon", "warning"]


def min_wilcoxon_p(n_pairs: int) -> float:
    """The smallest two-sided exact Wilcoxon p-value n pairs can give: all differences of one sign."""
    return min(1.0, 2.0 / 2**n_pairs)


def arm_label(loss: str, rul_loss: str, variant: str) -> str:
    return f"{loss} + {rul_loss}" + (f" [{variant}]" if variant else "")


def truth_label(cap: Any, max_rul: Any) -> str:
    """What a run's test metrics were scored against: ``not capped``, ``capped at 125``, or ``capped at max_rul``
    where the cap was not recorded. An unrecorded ``cap_test_rul`` counts as capped: runs older than the option
    (commit 87718c6) capped the test truth unconditionally."""
    if cap is not None and not pd.isna(cap) and not cap:
        return "not capped"
    return "capped at max_rul" if max_rul is None or pd.isna(max_rul) else f"capped at {float(max_rul):g}"


def with_truth(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with its ``test_truth`` column (from ``cap_test_rul`` and ``max_rul`` where runs.csv has them;
    kept where ``runs`` already has one)."""
    out = runs.copy()
    if "test_truth" in out:
        return out
    caps = out["cap_test_rul"] if "cap_test_rul" in out else [None] * len(out)
    maxes = out["max_rul"] if "max_rul" in out else [None] * len(out)
    out["test_truth"] = [truth_label(c, m) for c, m in zip(caps, maxes)]
    return out


def truth_note(runs: pd.DataFrame, what: str = "run") -> str:
    """One sentence on the test truth of ``runs`` (with_truth's columns): the label(s) and how many runs record
    ``dataset.cap_test_rul`` rather than predating it."""
    runs = with_truth(runs)
    labels = runs["test_truth"].value_counts().sort_index()
    n = len(runs)
    if len(labels) == 1:
        text = f"Test truth: {labels.index[0]} in every {what} ({n} run{'s' if n != 1 else ''})"
    else:
        text = "Test truth differs (see the test truth column): " + ", ".join(f"{k} in {v} runs"
                                                                             for k, v in labels.items())
    caps = runs["cap_test_rul"] if "cap_test_rul" in runs else pd.Series([None] * n, dtype=object)
    missing = int(pd.isna(caps).sum()) if n else 0
    if missing:
        text += (f"; {'all' if missing == n else missing} of them record no dataset.cap_test_rul (runs older than "
                 f"that option, whose code always capped)")
    return text + "."


def pair_frame(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Completed runs with a finite metric, one row per (arm, seed, fold): repeated runs are averaged. The fold is
    a pair key, not a variant (a fold sweep's ``protocol.fold=k`` override is dropped from the variant)."""
    done = runs[(runs["status"] == "completed") & np.isfinite(pd.to_numeric(runs[metric], errors="coerce"))].copy()
    done["fold"] = pd.to_numeric(done["fold"], errors="coerce").fillna(0) if "fold" in done else 0
    done["variant"] = [" ".join(o for o in str(v or "").split() if not o.startswith("protocol.fold="))
                       for v in done["variant"]]
    done[metric] = done[metric].astype(float)
    done = with_truth(done)
    keys = ["protocol", "test_truth", "dataset", *ARM, "seed", "fold"]
    return done.groupby(keys, as_index=False, dropna=False)[metric].mean()


def extended(arm: tuple[str, str, str], references: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The reference arm that ``arm`` is plus overrides of its own (its RUL loss, its variant's overrides a strict
    subset of the arm's), the one with the most overrides; None if there is no single one. A campaign's
    ``fixed`` at GABA's floor is GRACE's arm plus ``loss.controller.weights=...``: GRACE's twin."""
    mine = set(arm[2].split())
    subsets = [r for r in references if r[1] == arm[1] and set(r[2].split()) < mine]
    most = max((len(r[2].split()) for r in subsets), default=-1)
    best = [r for r in subsets if len(r[2].split()) == most]
    return best[0] if len(best) == 1 else None


def reference_arm(arm: tuple[str, str, str], references: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The reference arm an arm is compared with: the only one, else the one with its variant, else the one it
    extends (``extended``), else the one with its RUL loss; None when that leaves no single candidate."""
    for same in (lambda r: True, lambda r: r[2] == arm[2]):
        candidates = [r for r in references if same(r)]
        if len(candidates) == 1:
            return candidates[0]
    twin = extended(arm, references)
    if twin is not None:
        return twin
    candidates = [r for r in references if r[1] == arm[1]]
    return candidates[0] if len(candidates) == 1 else None


def compare(diffs: np.ndarray, confidence: float = 0.95, n_resamples: int = 9999,
            seed: int = 0) -> dict[str, float]:
    """Mean of the paired differences, its bootstrap interval and the two paired tests' p-values (NaN where a
    statistic is undefined: fewer than two pairs, or all differences zero)."""
    out = {"mean_diff": float(np.mean(diffs)), "ci_low": math.nan, "ci_high": math.nan, "p_wilcoxon": math.nan,
           "p_ttest": math.nan}
    if len(diffs) < 2 or not np.any(diffs != 0):
        return out
    interval = sps.bootstrap((diffs,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    out.update(ci_low=float(interval.low), ci_high=float(interval.high),
               p_wilcoxon=float(sps.wilcoxon(diffs).pvalue),
               p_ttest=float(sps.ttest_1samp(diffs, 0.0).pvalue))  # = ttest_rel(arm, reference)
    return out


def paired_comparisons(runs: pd.DataFrame, reference: str, metric: str = "test/rmse_last", alpha: float = 0.05,
                       **bootstrap: Any) -> pd.DataFrame:
    """One row per (protocol, dataset, arm) whose controller is not ``reference``, against its reference arm
    (datasets without a reference run have none); and one per arm of the reference controller that extends
    another of its arms (GABA with the RUL loss on another scale against GABA)."""
    frame = pair_frame(runs, metric)
    rows = []
    for (protocol, truth, dataset), block in frame.groupby(["protocol", "test_truth", "dataset"], sort=True):
        arms = sorted({tuple(a) for a in block[list(ARM)].itertuples(index=False)})
        references = [a for a in arms if a[0] == reference]
        if not references:
            continue
        variants = [(a, extended(a, references)) for a in references]
        for arm, ref in [(a, reference_arm(a, references)) for a in arms if a[0] != reference] + \
                [(a, r) for a, r in variants if r is not None]:
            row = {"protocol": protocol, "test_truth": truth, "dataset": dataset, "arm": arm_label(*arm),
                   "reference": arm_label(*ref) if ref else None}
            if ref is None:
                rows.append({**row, "n_pairs": 0, "warning": f"several {reference} arms: none is its twin"})
                continue
            mine, theirs = (block[(block[list(ARM)] == pd.Series(a, index=list(ARM))).all(axis=1)] for a in (arm, ref))
            paired = mine.merge(theirs, on=["seed", "fold"], suffixes=("", "_ref")).sort_values(["seed", "fold"])
            n = len(paired)
            row.update(n_pairs=n, min_p_wilcoxon=min_wilcoxon_p(n) if n else math.nan,
                       pairs=" ".join(f"{int(s)}" if f == 0 else f"{int(s)}/f{int(f)}"
                                      for s, f in zip(paired["seed"], paired["fold"])))
            if n:
                row.update(compare((paired[metric] - paired[f"{metric}_ref"]).to_numpy(), **bootstrap))
            if min_wilcoxon_p(n) >= alpha:
                row["warning"] = (f"{n} pairs: the Wilcoxon test cannot reach p < {alpha:g} (its smallest p is "
                                  f"{min_wilcoxon_p(n):.4g}); too few to conclude anything")
            rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def arm_frame(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``pair_frame`` with an ``arm`` label whose variant has the dataset's name masked
    (``experiment=paper_FD002_grace`` -> ``experiment=paper_*_grace``), so a preset family is one arm across
    datasets; and without its ``budget=`` profile, a per-dataset setting (``budget=cpu`` on FD001,
    ``budget=cpu_fd002`` on FD002), unless two arms of one dataset differ by nothing else."""
    frame = pair_frame(runs, metric)
    frame["variant"] = [v.replace(d, "*") for v, d in zip(frame["variant"], frame["dataset"].astype(str))]
    unbudgeted = pd.Series([" ".join(o for o in v.split() if not o.startswith("budget=")) for v in frame["variant"]],
                           index=frame.index)
    keys = [frame["protocol"], frame["dataset"], frame["loss"], frame["rul_loss"], unbudgeted]
    alone = frame.groupby(keys)["variant"].transform("nunique") == 1
    frame["variant"] = unbudgeted.where(alone, frame["variant"])
    frame["arm"] = [arm_label(*a) for a in frame[list(ARM)].itertuples(index=False)]
    return frame


def rank_table(runs: pd.DataFrame, metric: str = "test/rmse_last") -> pd.DataFrame:
    """Per protocol (and test truth), every arm ranked within each dataset by its mean metric over seeds (1 =
    lowest error, ties averaged), then its mean rank over the datasets it ran on (arms as in ``arm_frame``)."""
    frame = arm_frame(runs, metric)
    means = frame.groupby(["protocol", "test_truth", "dataset", "arm"], as_index=False)[metric].mean()
    means["rank"] = means.groupby(["protocol", "test_truth", "dataset"])[metric].rank(method="average")
    table = means.pivot_table(index=["protocol", "test_truth", "arm"], columns="dataset", values="rank")
    table["mean_rank"] = table.mean(axis=1)
    table["n_datasets"] = table.drop(columns="mean_rank").notna().sum(axis=1)
    return table.reset_index().sort_values(["protocol", "test_truth", "mean_rank", "arm"]).reset_index(drop=True)


# ------------------------------------------------------------------ Friedman test and Nemenyi critical difference
BLOCK = ["dataset", "seed", "fold"]
MAX_DESIGN_DATASETS = 10  # every subset of up to this many datasets is a candidate design (2^10 at most)


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks (Demšar 2006, eq. 5): q_alpha * sqrt(k (k + 1) / (6 N)), with
    q_alpha the studentized range quantile at infinite degrees of freedom over sqrt(2) (Demšar's Table 5a: 2.343
    for k = 3, 2.569 for k = 4)."""
    q_alpha = float(sps.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def nemenyi_groups(mean_ranks: pd.Series, cd: float) -> list[list[str]]:
    """The maximal runs of arms (sorted by mean rank) whose mean ranks differ by less than ``cd``: the bars of a
    critical-difference diagram. Arms in no group of two or more differ from every other arm."""
    ranks = mean_ranks.sort_values()
    values, names = ranks.to_numpy(float), list(ranks.index)
    groups, reach = [], -1
    for i in range(len(values)):
        j = int(np.searchsorted(values, values[i] + cd, side="left")) - 1  # the last arm less than cd above i
        if j > i and j > reach:  # not inside the previous group
            groups.append(names[i:j + 1])
            reach = j
    return groups


def friedman(values: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """Friedman test on a complete design: one row per block, one column per arm, lower is better. Ranks within
    each block (1 = lowest, ties averaged), the tie-corrected statistic and p of ``scipy.stats.friedmanchisquare``
    (chi-square with k - 1 degrees of freedom), and Nemenyi's critical difference at ``alpha``."""
    n, k = values.shape
    ranks = values.rank(axis=1, method="average")
    test = sps.friedmanchisquare(*(values[c].to_numpy(float) for c in values.columns))
    mean_ranks = ranks.mean().sort_values()
    cd = nemenyi_cd(k, n, alpha)
    return {"k": k, "n_blocks": n, "statistic": float(test.statistic), "p": float(test.pvalue), "alpha": alpha,
            "cd": cd, "mean_ranks": mean_ranks, "groups": nemenyi_groups(mean_ranks, cd)}


def complete_design(frame: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """The largest complete block design in one protocol's ``arm_frame``: a set of datasets, arms that ran on each
    of them, and the (dataset, seed, fold) blocks that every one of those arms completed.

    For each set of datasets: the arms that ran on all of them; then, one at a time, the arm whose removal leaves
    the most complete blocks is left out (ties: the arm with the fewest blocks of its own, then the first by
    name), down to three arms. Of every design on that path, the one with the most observations k x N wins among
    those with k >= 3 arms and N >= 2 blocks (ties: more datasets, then more arms); without any, the largest of
    all. Returns the block x arm values and the arms left out."""
    datasets = sorted(frame["dataset"].astype(str).unique())
    if len(datasets) <= MAX_DESIGN_DATASETS:
        subsets = [c for r in range(len(datasets), 0, -1) for c in itertools.combinations(datasets, r)]
    else:
        subsets = [tuple(datasets), *((d,) for d in datasets)]
    covered = frame.groupby("arm")["dataset"].agg(lambda d: set(d.astype(str)))

    def key(present: np.ndarray, n_datasets: int) -> tuple:
        n, k = int(present.all(axis=1).sum()) if present.shape[1] else 0, present.shape[1]
        return (n >= 2 and k >= 3, n * k, n_datasets, k)

    best_key, best = None, pd.DataFrame()
    for subset in subsets:
        arms = sorted(a for a, on in covered.items() if set(subset) <= on)
        if not arms:
            continue
        rows = frame[frame["dataset"].astype(str).isin(subset) & frame["arm"].isin(arms)]
        values = rows.pivot_table(index=BLOCK, columns="arm", values=metric).reindex(columns=arms)
        present = values.notna().to_numpy()
        kept = list(range(len(arms)))
        while True:
            current = key(present[:, kept], len(subset))
            if best_key is None or current > best_key:
                best_key, best = current, values.iloc[:, kept].dropna()
            if len(kept) <= 3:
                break
            own = present.sum(axis=0)
            _, _, drop = max((int(present[:, [c for c in kept if c != d]].all(axis=1).sum()), -int(own[d]), -d)
                             for d in kept)
            kept.remove(-drop)
    left_out = sorted(set(frame["arm"]) - set(best.columns))
    return best, left_out


def friedman_tests(runs: pd.DataFrame, metric: str = "test/rmse_last", alpha: float = 0.05) -> list[dict[str, Any]]:
    """One Friedman test per protocol and test truth over the arms of ``arm_frame``.

    Blocks are the (dataset, seed, fold) combinations that every compared arm completed, not the datasets: with
    one or two subsets so far, datasets alone are too few blocks, and a seed's split (held-out units, folds,
    initialisation) is a problem of its own. The compared arms and datasets are ``complete_design``'s. Where
    fewer than 2 blocks or 3 arms remain, the entry has ``refused`` (a sentence) and no test."""
    frame = arm_frame(runs, metric)
    out = []
    for (protocol, truth), block in frame.groupby(["protocol", "test_truth"], sort=True):
        values, left_out = complete_design(block, metric)
        n, k = values.shape
        entry: dict[str, Any] = {"protocol": protocol, "test_truth": truth, "k": k, "n_blocks": n,
                                 "values": values, "left_out": left_out, "refused": None}
        if n < 2 or k < 3:
            entry["refused"] = (f"Friedman test not run: it needs at least 3 arms and 2 blocks that every arm "
                                f"completed; the largest complete design here has k = {k} arm{'s' * (k != 1)} "
                                f"over N = {n} block{'s' * (n != 1)}.")
        else:
            entry.update(friedman(values, alpha))
        out.append(entry)
    return out


def design_blocks(values: pd.DataFrame) -> str:
    """The blocks of a design in words: ``FD001 × seeds 42 123; FD002 × seeds 42 42/f1`` (fold 1 as ``/f1``)."""
    parts = []
    for dataset, rows in values.reset_index().groupby("dataset", sort=True):
        seeds = " ".join(f"{int(s)}" if f == 0 else f"{int(s)}/f{int(f)}" for s, f in zip(rows["seed"], rows["fold"]))
        parts.append(f"{dataset} × seeds {seeds}")
    return "; ".join(parts)


def friedman_markdown(tests: list[dict[str, Any]], metric: str, table: Any, figures: dict[str, str] | None = None) \
        -> str:
    """The report's Friedman section; ``figures`` maps a protocol/truth key (``figure_key``) to a figure file."""
    figures = figures or {}
    parts = ["", f"## Friedman test and Nemenyi critical difference ({metric})", "",
             "Blocks are the (dataset, seed) pairs (and folds) that every compared arm completed, not the datasets: "
             "with one or two subsets so far the datasets alone are too few blocks, and each seed's split "
             "(held-out units, initialisation) is a problem of its own. Within each block the arms are ranked "
             "(1 = lowest error, ties averaged); the Friedman test (scipy.stats.friedmanchisquare, "
             "tie-corrected, chi-square with k − 1 degrees of freedom) asks whether the mean ranks differ at all, "
             "and two arms differ by Nemenyi's test when their mean ranks are at least the critical difference "
             "CD = q_α/√2 · √(k(k+1)/(6N)) apart (q_α: studentized range at α = 0.05, infinite degrees of "
             "freedom; Demšar 2006). The test needs a complete design, every arm in every block: the datasets "
             "and the arms (each ran on all of the design's datasets) are chosen for the most observations "
             "k × N, and arms left out are named. Blocks of one seed on several datasets count as independent. "
             "With few blocks the chi-square approximation is rough (Demšar: fine for N > 10 and k > 5), and "
             "with k = 3 and N = 2 no ranking reaches p < 0.05."]
    if not tests:
        return "\n".join([*parts, "", "No completed runs."]) + "\n"
    for test in tests:
        parts += ["", f"### protocol={test['protocol']}, test truth {test['test_truth']}", ""]
        if test["refused"]:
            parts.append(test["refused"])
        else:
            parts += [f"k = {test['k']} arms, N = {test['n_blocks']} blocks ({design_blocks(test['values'])}). "
                      f"Friedman χ² = {test['statistic']:.3f}, p = {test['p']:.4g}; "
                      f"CD (α = {test['alpha']:g}) = {test['cd']:.3f}.", "",
                      table(["arm", "mean rank"], [[arm, f"{r:.3f}"] for arm, r in test["mean_ranks"].items()])]
            groups = test["groups"]
            parts += ["", "Not significantly different (mean ranks less than CD apart): "
                      + ("; ".join("{" + ", ".join(g) + "}" for g in groups) if groups else
                         "none: every pair of arms differs.")]
            figure = figures.get(figure_key(test))
            if figure:
                parts += ["", f"Critical-difference diagram: `{figure}`."]
        if test["left_out"]:
            parts += ["", "Left out of the design (not run on each of its datasets, or missing blocks the others "
                      "completed): "
                      + ", ".join(test["left_out"]) + "."]
    return "\n".join(parts) + "\n"


def figure_key(test: dict[str, Any]) -> str:
    return f"{test['protocol']}|{test['test_truth']}"


# ------------------------------------------------------------------ GABA's RUL weight and its floor
FLOOR_TOLERANCE = 1e-6


def floor_summary(log: pd.DataFrame, min_weight: float, warmup_steps: int | None) -> dict[str, Any]:
    """How one run's RUL weight sits against GABA's floor, from its controller_log.csv (one row per epoch: the
    epoch's mean weights and the global step at its end).

    GABA clamps its EMA weights at ``min_weight`` and then renormalises, so a floored RUL weight is
    ``min_weight / (min_weight + w_health)``: 0.0476 for a floor of 0.05, just below the floor itself. An epoch is
    *at the floor* when its mean ``weight_rul`` is at most ``min_weight`` + 1e-6 (for two tasks a step's weight is
    only that low while the clamp holds, so the clamp held for all or nearly all of the epoch). The share counts
    every logged epoch (the warmup's included); the range counts the epochs that began after the warmup's
    ``warmup_steps`` steps; the run *left the floor* when an epoch after its first one at the floor is above it
    again."""
    rows = log.dropna(subset=["weight_rul"]).drop_duplicates("epoch", keep="last").sort_values("epoch")
    weight = rows["weight_rul"].to_numpy(float)
    epochs = rows["epoch"].to_numpy(int)
    at = weight <= min_weight + FLOOR_TOLERANCE
    started = np.r_[0, rows["step"].to_numpy(float)[:-1]] if "step" in rows else np.zeros(len(rows))
    after = weight[started >= (warmup_steps or 0)]
    first = int(np.argmax(at)) if at.any() else None
    later = weight[first + 1:] if first is not None else np.array([])
    return {"epochs": len(weight), "at_floor": int(at.sum()),
            "first_floor_epoch": int(epochs[first]) if first is not None else math.nan,
            "min_after_warmup": float(after.min()) if len(after) else math.nan,
            "max_after_warmup": float(after.max()) if len(after) else math.nan,
            "left_floor": bool((later > min_weight + FLOOR_TOLERANCE).any()),
            "max_after_floor": float(later.max()) if len(later) else math.nan}


FLOOR_KEYS = ["protocol", "test_truth", "dataset", "arm", "min_weight"]


def floor_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """``floor_summary`` rows (with FLOOR_KEYS, seed and fold) pooled per arm: runs, seeds, epochs at the floor
    over epochs logged, the first epoch at the floor (range over runs), the RUL weight's range after the warmup,
    and how many runs left the floor after reaching it (with the highest weight they reached)."""
    rows = []
    for key, group in per_run.groupby(FLOOR_KEYS, sort=True):
        rows.append({**dict(zip(FLOOR_KEYS, key)), "runs": len(group),
                     "seeds": " ".join(str(int(s)) for s in sorted(group["seed"])),
                     "epochs": int(group["epochs"].sum()), "at_floor": int(group["at_floor"].sum()),
                     "first_floor_min": group["first_floor_epoch"].min(),
                     "first_floor_max": group["first_floor_epoch"].max(),
                     "reached_floor": int(group["first_floor_epoch"].notna().sum()),
                     "min_after_warmup": group["min_after_warmup"].min(),
                     "max_after_warmup": group["max_after_warmup"].max(),
                     "left_floor": int(group["left_floor"].sum()), "max_after_floor": group["max_after_floor"].max()})
    return pd.DataFrame(rows)


def floor_markdown(table_rows: pd.DataFrame, truth: str, table: Any, figures: list[str] | None = None) -> str:
    parts = ["", "## GABA's RUL weight over training: does it leave its floor?", "",
             "From each GABA run's controller_log.csv (per epoch, the mean task weights). GABA clamps its "
             "smoothed weights at `loss.controller.min_weight` (the run's .hydra/config.yaml) and renormalises, so "
             "a floored RUL weight reads min_weight / (min_weight + w_health), about 0.0476 for a floor of 0.05: "
             "an epoch counts as at the floor when its weight_rul is at most min_weight + 1e-6. *At the floor*: "
             "epochs at the floor over all logged epochs, pooled over runs; *after warmup*: the range of "
             "weight_rul over the epochs that began after the warmup steps; *left the floor*: runs whose weight "
             "rose above the floor again after first reaching it."]
    if table_rows.empty:
        return "\n".join([*parts, "", "No completed GABA run with a controller_log.csv."]) + "\n"
    parts += ["", truth]
    parts += ["", table(["protocol", "dataset", "arm", "floor", "runs", "seeds", "at the floor", "first at the floor "
                         "(epoch)", "weight_rul after warmup", "left the floor"],
                        [[r.protocol, r.dataset, r.arm, f"{r.min_weight:g}", r.runs, r.seeds,
                          f"{r.at_floor}/{r.epochs} epochs ({r.at_floor / r.epochs:.0%})" if r.epochs else "—",
                          ("never" if r.reached_floor == 0 else
                           (f"{r.first_floor_min:g}" if r.first_floor_min == r.first_floor_max
                            else f"{r.first_floor_min:g}–{r.first_floor_max:g}")
                           + ("" if r.reached_floor == r.runs else f" ({r.reached_floor} of {r.runs} runs)")),
                          "—" if pd.isna(r.min_after_warmup)
                          else f"{r.min_after_warmup:.4f}–{r.max_after_warmup:.4f}",
                          ("never reached it" if r.reached_floor == 0 else
                           f"no (0 of {r.reached_floor} runs)" if r.left_floor == 0 else
                           f"yes ({r.left_floor} of {r.reached_floor} runs; up to {r.max_after_floor:.4f})")]
                         for r in table_rows.itertuples()])]
    if figures:
        parts += ["", "RUL weight per epoch, one line per seed: " + ", ".join(f"`{f}`" for f in figures) + "."]
    return "\n".join(parts) + "\n"


def fmt(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else f"{value:{spec}}"


def markdown(comparisons: pd.DataFrame, ranks: pd.DataFrame, reference: str, metric: str,
             table: Any) -> str:
    """The report's section: the comparisons, each with its number of pairs and warning, then the ranks.
    ``table`` renders rows as Markdown (the report's own table writer)."""
    parts = ["", f"## Paired comparisons against {reference} ({metric})", "",
             f"Each arm minus its {reference} arm over the runs both completed with the same seed (and fold): mean "
             f"difference (negative: lower error than {reference}), 95% bootstrap interval (percentile, seeded), "
             f"two-sided Wilcoxon signed-rank p (exact; the test to quote) and paired t-test p. With n pairs the "
             f"smallest possible Wilcoxon p is 2/2^n: 0.0625 at 5 pairs, so at least 6 are needed to reach "
             f"p < 0.05."]
    if comparisons.empty:
        return "\n".join([*parts, "", f"No arm to compare with {reference}."]) + "\n"
    mixed = comparisons["test_truth"].nunique() > 1
    parts += ["", truth_sentence(comparisons["test_truth"], "row"),
              "", table(["protocol", *(["test truth"] if mixed else []), "dataset", "arm", "reference", "pairs",
                         "seeds", "mean diff", "95% CI", "Wilcoxon p", "t-test p", "warning"],
                        [[r.protocol, *([r.test_truth] if mixed else []), r.dataset, r.arm, r.reference or "—",
                          r.n_pairs, r.pairs if isinstance(r.pairs, str) else "",
                          fmt(r.mean_diff, "+.3f"),
                          "—" if pd.isna(r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]",
                          fmt(r.p_wilcoxon, ".4f"), fmt(r.p_ttest, ".4f"), r.warning if isinstance(r.warning, str)
                          else ""] for r in comparisons.itertuples()])]
    if not ranks.empty:
        datasets = [c for c in ranks.columns if c not in ("protocol", "test_truth", "arm", "mean_rank", "n_datasets")]
        mixed = ranks["test_truth"].nunique() > 1
        parts += ["", f"## Ranks across datasets ({metric}, mean over seeds; 1 = best)", "",
                  truth_sentence(ranks["test_truth"], "row"), "",
                  table(["protocol", *(["test truth"] if mixed else []), "arm", *datasets, "mean rank", "datasets"],
                        [[r["protocol"], *([r["test_truth"]] if mixed else []), r["arm"],
                          *(fmt(r[d], "g") for d in datasets), fmt(r["mean_rank"], ".2f"), int(r["n_datasets"])]
                         for _, r in ranks.iterrows()])]
    return "\n".join(parts) + "\n"


def truth_sentence(labels: pd.Series, what: str) -> str:
    """The test truth of a table's rows in one sentence (a column instead where they differ)."""
    unique = sorted(set(labels))
    if len(unique) == 1:
        return f"Test truth: {unique[0]} in every {what}."
    return "Test truth differs between rows: see the test truth column."
