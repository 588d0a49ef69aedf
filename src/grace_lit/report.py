"""``python -m grace_lit.report <sweep or run dirs...>`` (``grace-report``): results tables and plots.

Every run directory under the given paths (one holding ``metrics.json``, or a ``.hydra`` folder of a training
job) becomes one row of ``runs.csv``: completed, failed (with its error) or unfinished (no ``metrics.json``:
still running, killed or crashed). Completed runs are grouped by (protocol, dataset, controller, RUL loss,
variant) and summarised over seeds as mean and *sample* standard deviation (ddof=1; empty for a single seed).
The variant is the run's remaining command-line overrides (``model=small trainer.max_epochs=2``,
``experiment=ablation_no_ema``), so runs with different settings are never averaged together.

Written to ``--out`` (default: the directory given, or the common parent of several): ``report.csv``,
``report.md`` (one table per protocol and dataset, each naming its protocol and selection rule, then the
failed and unfinished runs, then the paired comparisons of ``grace_lit.stats``), ``paired.csv``, ``runs.csv``,
``report_<protocol>.png``; and each run's figures in ``<run>/plots/``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from grace_lit.errors import GraceError
from grace_lit.io import atomic_write_csv, atomic_write_text
from grace_lit.stats import markdown as paired_markdown
from grace_lit.stats import paired_comparisons, rank_table

GROUP = ("protocol", "dataset", "loss", "rul_loss", "variant")
# metrics.json key -> (column stem, Markdown heading, number format)
METRICS = {
    "test/rmse_last": ("rmse_last", "test RMSE (last window)", ".3f"),
    "test/rmse_all": ("rmse_all", "test RMSE (all windows)", ".3f"),  # DS02's headline (three test units)
    "test/nasa": ("nasa", "test NASA score", ".1f"),
    "test/health_acc": ("health_acc", "test health acc.", ".3f"),
    "best_epoch": ("best_epoch", "best epoch", ".1f"),
    "wall_time_s": ("wall_time_s", "wall time (s)", ".1f"),
}
# Overrides that name a group or leave the result unchanged; every other override makes a separate variant
# (loss.controller.beta=0.9 is a variant; loss=amnl names the group).
NOT_VARIANT = ("seed", "dataset", "loss", "rul_loss", "protocol", "resume", "logger")
NOT_VARIANT_PREFIXES = ("paths.", "logger.", "hydra.")
TRAIN_JOB = "train"  # hydra.job.name of grace_lit.train (diagnose runs are not training runs)


# ------------------------------------------------------------------ collecting runs
def is_training_run(path: Path) -> bool:
    if (path / "metrics.json").is_file():
        return True
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    return hydra_yaml.is_file() and OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.name") == TRAIN_JOB


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run directories under ``paths`` (each path may itself be a run), sorted, each once."""
    found: set[Path] = set()
    for root in paths:
        if not root.is_dir():
            raise GraceError(f"{root} is not a directory. Fix: pass sweep directories (multirun/<date>/<time>) or "
                             f"run directories (outputs/<date>/<time>_...).")
        candidates = [root, *(p.parent for p in root.rglob("metrics.json")),
                      *(p.parent.parent for p in root.rglob(".hydra/hydra.yaml"))]
        found.update(p.resolve() for p in candidates if is_training_run(p))
    return sorted(found)


def run_overrides(path: Path, metrics: dict[str, Any]) -> list[str]:
    saved = path / ".hydra" / "overrides.yaml"
    if saved.is_file():
        return [str(o) for o in OmegaConf.load(saved)]
    command = str(metrics.get("command") or "").split()
    return command[3:]  # after "python -m grace_lit.train"


def variant(overrides: Sequence[str]) -> str:
    """The overrides that change a run beyond its group keys, sorted: '' for the defaults."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    kept = [o for o, k in zip(overrides, keys) if k not in NOT_VARIANT and not k.startswith(NOT_VARIANT_PREFIXES)]
    return " ".join(sorted(kept))


def config_identity(path: Path) -> dict[str, Any]:
    """What an unfinished run was meant to be, from the config Hydra saved at its start."""
    saved = path / ".hydra" / "config.yaml"
    if not saved.is_file():
        return {}
    cfg = OmegaConf.load(saved)
    keys = {"protocol": "protocol.name", "selection": "protocol.selection", "dataset": "dataset.name",
            "loss": "loss.name", "rul_loss": "rul_loss.name", "seed": "seed"}
    return {k: OmegaConf.select(cfg, v, throw_on_resolution_failure=False) for k, v in keys.items()}


def load_run(path: Path) -> dict[str, Any]:
    """One row of runs.csv. Status: completed | failed | unfinished | unreadable."""
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        last = path / "checkpoints" / "last.ckpt"
        hint = f"; resume: resume=true hydra.run.dir={path}" if last.is_file() else ""
        metrics = {"status": "unfinished", **config_identity(path),
                   "error": f"no metrics.json (still running, killed, or crashed outside the run){hint}"}
    else:
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as err:
            metrics = {"status": "unreadable", "error": f"{metrics_path}: {err}"}
    row = {"run": str(path), "status": metrics.get("status", "unreadable"),
           **{k: metrics.get(k) for k in ("protocol", "selection", "dataset", "loss", "rul_loss", "seed", "fold")},
           "variant": variant(run_overrides(path, metrics)),
           **{k: metrics.get(k) for k in METRICS}, "error": metrics.get("error")}
    return row


def collect(paths: Iterable[Path], out: Path) -> pd.DataFrame:
    """Every run under ``paths``, named relative to ``out`` (the report's folder), so that a report moves with
    its runs and any clone regenerates it byte for byte."""
    runs = find_runs(paths)
    if not runs:
        raise GraceError(f"No runs (metrics.json or Hydra training-job folders) under {', '.join(map(str, paths))}. "
                         f"Fix: pass the sweep directory a --multirun printed, e.g. multirun/<date>/<time>.")
    frame = pd.DataFrame([load_run(p) for p in runs])
    frame["run"] = [Path(os.path.relpath(run, out.resolve())).as_posix() for run in frame["run"]]
    frame[list(METRICS)] = frame[list(METRICS)].apply(pd.to_numeric, errors="coerce")
    return frame


# ------------------------------------------------------------------ aggregating
def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group of completed runs: n runs, n distinct seeds, mean and sample std (ddof=1) per metric."""
    done = runs[runs["status"] == "completed"].copy()
    done[list(GROUP)] = done[list(GROUP)].fillna("?").astype(str)
    rows = []
    for key, group in done.groupby(list(GROUP), sort=True):
        row: dict[str, Any] = dict(zip(GROUP, key))
        seeds = sorted(int(s) for s in group["seed"])
        row.update(selection=group["selection"].iloc[0], n_runs=len(group), n_seeds=len(set(seeds)),
                   seeds=" ".join(map(str, seeds)))
        for key_, (stem, _, _) in METRICS.items():
            row[f"{stem}_mean"] = group[key_].mean()
            row[f"{stem}_std"] = group[key_].std(ddof=1)
        rows.append(row)
    columns = [*GROUP, "selection", "n_runs", "n_seeds", "seeds",
               *(f"{stem}_{s}" for stem, _, _ in METRICS.values() for s in ("mean", "std"))]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------ Markdown
def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(mean: float, std: float, fmt: str) -> str:
    if pd.isna(mean):
        return "—"
    return f"{mean:{fmt}}" if pd.isna(std) else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    parts = ["# Results", "",
             "Mean ± sample standard deviation (ddof=1) over seeds; one seed shows the mean alone, — marks a "
             "metric the controller does not produce. Test metrics are those of the selected checkpoint; "
             "NASA score is summed over test units."]
    for protocol, by_protocol in table.groupby("protocol", sort=True):
        parts += ["", f"## protocol={protocol}", "", f"Selection: {by_protocol['selection'].iloc[0]}."]
        show_variant = (by_protocol["variant"] != "").any()
        for dataset, rows in by_protocol.groupby("dataset", sort=True):
            header = ["controller", "RUL loss", *(["variant"] if show_variant else []), "runs", "seeds",
                      *(h for _, h, _ in METRICS.values())]
            body = [[r.loss, r.rul_loss, *([r.variant or "(defaults)"] if show_variant else []), r.n_runs, r.seeds,
                     *(mean_std(r[f"{s}_mean"], r[f"{s}_std"], f) for s, _, f in METRICS.values())]
                    for _, r in rows.iterrows()]
            parts += ["", f"### {dataset} (protocol={protocol})", "", md_table(header, body)]
            repeated = rows[rows["n_runs"] > rows["n_seeds"]]
            if len(repeated):
                parts += ["", f"Note: {', '.join(repeated['loss'])} include repeated seeds (n runs > n seeds)."]
    if table.empty:
        parts += ["", "No completed runs."]
    bad = runs[runs["status"] != "completed"]
    if len(bad):
        parts += ["", "## Failed or unfinished runs", "",
                  md_table(["run", "status", "protocol", "dataset", "controller", "seed", "error"],
                           [[r.run, r.status, r.protocol, r.dataset, r.loss, r.seed, r.error]
                            for r in bad.itertuples()])]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ CLI
def default_out(paths: Sequence[Path]) -> Path:
    return paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))


def report(paths: Sequence[Path], out: Path, trajectory_units: int, plots: bool, reference: str = "gaba") -> str:
    runs = collect(paths, out)
    table = summarize(runs)
    paired = paired_comparisons(runs, reference)  # grace_lit.stats: each controller against the reference
    text = markdown(table, runs) + paired_markdown(paired, rank_table(runs), reference, "test/rmse_last", md_table)
    atomic_write_csv(out / "runs.csv", runs)
    atomic_write_csv(out / "report.csv", table)
    atomic_write_csv(out / "paired.csv", paired)
    atomic_write_text(out / "report.md", text)
    if plots:
        from grace_lit.plots import plot_run, sweep_bars  # matplotlib only when plotting

        for protocol, rows in table.groupby("protocol"):
            sweep_bars(rows, protocol, out / f"report_{protocol}.png")
        for run in runs["run"]:
            try:
                plot_run(out / run, trajectory_units)
            except Exception as err:  # one broken run must not stop the report of the others
                print(f"warning: plots of {run} failed: {type(err).__name__}: {err}", file=sys.stderr)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grace-report", description="Results tables (CSV, Markdown) and plots of "
                                     "grace-lit runs: failed and unfinished runs are listed, never dropped.")
    parser.add_argument("paths", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--out", type=Path, help="where report.{csv,md}, runs.csv and the bar charts go")
    parser.add_argument("--trajectory-units", type=int, default=4,
                        help="test units whose full RUL trajectory is re-scored and plotted per run (0: none)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--reference", default="gaba", help="controller the paired comparisons are made against")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.paths)
    try:
        print(report(args.paths, out, args.trajectory_units, plots=not args.no_plots, reference=args.reference))
    except GraceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"-> {out / 'report.md'}, {out / 'report.csv'}, {out / 'runs.csv'}")


if __name__ == "__main__":
    main()
