"""Paired statistics for the report: each controller against a reference controller over the runs they share.

Within one protocol and dataset an *arm* is a controller, RUL loss and variant (the report's groups). Two runs
pair when they share the seed and, when the runs carry one, the fold: same split, same initialisation, so the
difference is the controller's. Each comparison gives the mean difference (arm minus reference; negative: a lower
error than the reference), a 95% bootstrap interval of that mean (``scipy.stats.bootstrap``, percentile method,
seeded) and two two-sided paired tests: the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for small
samples, no normality assumed; the one to quote) and the paired t-test (``scipy.stats.ttest_rel``).

With n pairs the Wilcoxon test cannot give p below 2 / 2^n (every difference of one sign): 0.0625 at n = 5, so
five seeds can never reach p < 0.05 however large the effect. Such comparisons carry a warning.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

ARM = ("loss", "rul_loss", "variant")
COMPARISON_COLUMNS = ["protocol", "dataset", "arm", "reference", "n_pairs", "pairs", "mean_diff", "ci_low",
                      "ci_high", "p_wilcoxon", "p_ttest", "min_p_wilcoxon", "warning"]


def min_wilcoxon_p(n_pairs: int) -> float:
    """The smallest two-sided exact Wilcoxon p-value n pairs can give: all differences of one sign."""
    return min(1.0, 2.0 / 2**n_pairs)


def arm_label(loss: str, rul_loss: str, variant: str) -> str:
    return f"{loss} + {rul_loss}" + (f" [{variant}]" if variant else "")


def pair_frame(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Completed runs with a finite metric, one row per (arm, seed, fold): repeated runs are averaged. The fold is
    a pair key, not a variant (a fold sweep's ``protocol.fold=k`` override is dropped from the variant)."""
    done = runs[(runs["status"] == "completed") & np.isfinite(pd.to_numeric(runs[metric], errors="coerce"))].copy()
    done["fold"] = pd.to_numeric(done["fold"], errors="coerce").fillna(0) if "fold" in done else 0
    done["variant"] = [" ".join(o for o in str(v or "").split() if not o.startswith("protocol.fold="))
                       for v in done["variant"]]
    done[metric] = done[metric].astype(float)
    keys = ["protocol", "dataset", *ARM, "seed", "fold"]
    return done.groupby(keys, as_index=False, dropna=False)[metric].mean()


def reference_arm(arm: tuple[str, str, str], references: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The reference arm an arm is compared with: the only one, else the one with its variant, else the one with
    its RUL loss; None when that leaves no single candidate."""
    for same in (lambda r: True, lambda r: r[2] == arm[2], lambda r: r[1] == arm[1]):
        candidates = [r for r in references if same(r)]
        if len(candidates) == 1:
            return candidates[0]
    return None


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
    (datasets without a reference run have none)."""
    frame = pair_frame(runs, metric)
    rows = []
    for (protocol, dataset), block in frame.groupby(["protocol", "dataset"], sort=True):
        arms = sorted({tuple(a) for a in block[list(ARM)].itertuples(index=False)})
        references = [a for a in arms if a[0] == reference]
        if not references:
            continue
        for arm in (a for a in arms if a[0] != reference):
            ref = reference_arm(arm, references)
            row = {"protocol": protocol, "dataset": dataset, "arm": arm_label(*arm),
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


def rank_table(runs: pd.DataFrame, metric: str = "test/rmse_last") -> pd.DataFrame:
    """Per protocol, every arm ranked within each dataset by its mean metric over seeds (1 = lowest error, ties
    averaged), then its mean rank over the datasets it ran on. An arm's variant has the dataset's name masked
    (``experiment=paper_FD002_grace`` -> ``experiment=paper_*_grace``) so a preset family is one row."""
    frame = pair_frame(runs, metric)
    frame["variant"] = [v.replace(d, "*") for v, d in zip(frame["variant"], frame["dataset"].astype(str))]
    frame["arm"] = [arm_label(*a) for a in frame[list(ARM)].itertuples(index=False)]
    means = frame.groupby(["protocol", "dataset", "arm"], as_index=False)[metric].mean()
    means["rank"] = means.groupby(["protocol", "dataset"])[metric].rank(method="average")
    table = means.pivot_table(index=["protocol", "arm"], columns="dataset", values="rank")
    table["mean_rank"] = table.mean(axis=1)
    table["n_datasets"] = table.drop(columns="mean_rank").notna().sum(axis=1)
    return table.reset_index().sort_values(["protocol", "mean_rank", "arm"]).reset_index(drop=True)


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
    parts += ["", table(["protocol", "dataset", "arm", "reference", "pairs", "seeds", "mean diff", "95% CI",
                         "Wilcoxon p", "t-test p", "warning"],
                        [[r.protocol, r.dataset, r.arm, r.reference or "—", r.n_pairs, r.pairs if isinstance(r.pairs, str) else "",
                          fmt(r.mean_diff, "+.3f"),
                          "—" if pd.isna(r.ci_low) else f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]",
                          fmt(r.p_wilcoxon, ".4f"), fmt(r.p_ttest, ".4f"), r.warning if isinstance(r.warning, str)
                          else ""] for r in comparisons.itertuples()])]
    if not ranks.empty:
        datasets = [c for c in ranks.columns if c not in ("protocol", "arm", "mean_rank", "n_datasets")]
        parts += ["", f"## Ranks across datasets ({metric}, mean over seeds; 1 = best)", "",
                  table(["protocol", "arm", *datasets, "mean rank", "datasets"],
                        [[r["protocol"], r["arm"], *(fmt(r[d], "g") for d in datasets),
                          fmt(r["mean_rank"], ".2f"), int(r["n_datasets"])] for _, r in ranks.iterrows()])]
    return "\n".join(parts) + "\n"
