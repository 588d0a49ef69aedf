"""``python -m grace_lit.report <sweep or run dirs...>`` (``grace-report``): results tables and plots.

Every run directory under the given paths (one holding ``metrics.json``, or a ``.hydra`` folder of a training
job) becomes one row of ``runs.csv``: completed, failed (with its error) or unfinished (no ``metrics.json``:
still running, killed or crashed). Completed runs are grouped by (protocol, dataset, controller, RUL loss,
variant, test truth) and summarised over seeds as mean and *sample* standard deviation (ddof=1; empty for a single
seed). The test truth says whether the test RUL was capped at ``max_rul`` like the training targets
(``cap_test_rul`` from metrics.json, else ``dataset.cap_test_rul`` from the run's saved config; runs older than
that option always capped): every table states it beside its protocol.
The variant is the run's remaining command-line overrides (``model=small trainer.max_epochs=2``,
``experiment=ablation_no_ema``), so runs with different settings are never averaged together.

Written to ``--out`` (default: the directory given, or the common parent of several): ``report.csv``,
``report.md`` (one table per protocol and dataset, each naming its protocol and selection rule, then the
failed and unfinished runs, then the paired comparisons of ``grace_lit.stats``, its Friedman test over the arms and
GABA's RUL weight against its floor), ``paired.csv``, ``runs.csv``, ``report_<protocol>.png``,
``report_cd_<protocol>.png`` (critical-difference diagram), ``report_gaba_weights_<protocol>.png``; and each run's
figures in ``<run>/plots/``. ``--latex`` adds ``report.tex``: the tables as booktabs LaTeX (``grace_lit.latex``).

The same seed gives the same digits only in the same environment (package versions, CPU kernels or GPU;
docs/reliability.md), so ``report.md`` says whether the runs it pools record one environment, and warns, naming
what differs, where the runs of one table cell or of the whole report come from several.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from grace_lit.errors import GraceError
from grace_lit.io import atomic_write_csv, atomic_write_text
from grace_lit.latex import document as latex_document
from grace_lit.stats import (FLOOR_KEYS, arm_label, figure_key, floor_markdown, floor_summary, floor_table,
                             friedman_markdown, friedman_tests, paired_comparisons, rank_table, truth_note,
                             with_truth)
from grace_lit.stats import markdown as paired_markdown

GROUP = ("protocol", "dataset", "loss", "rul_loss", "variant", "test_truth")
# metrics.json key -> (column stem, Markdown heading, number format)
METRICS = {
    "test/rmse_last": ("rmse_last", "test RMSE (last window)", ".3f"),
    "test/rmse_all": ("rmse_all", "test RMSE (all windows)", ".3f"),  # DS02's headline (three test units)
    "test/nasa": ("nasa", "test NASA score", ".1f"),
    "test/health_acc": ("health_acc", "test health acc.", ".3f"),
    # the same last windows against the raw truth (the RUL_FD00x files, never capped; equal under cap_test_rul=false)
    "test/rmse_last_raw": ("rmse_last_raw", "test RMSE vs raw truth (last window)", ".3f"),
    "test/nasa_raw": ("nasa_raw", "test NASA score vs raw truth", ".1f"),
    "best_epoch": ("best_epoch", "best epoch", ".1f"),
    "wall_time_s": ("wall_time_s", "wall time (s)", ".1f"),
    "cpu_time_s": ("cpu_time_s", "CPU time (s)", ".1f"),  # what a run cost a loaded machine: its process's CPU
}
# Overrides that name a group or leave the result unchanged; every other override makes a separate variant
# (loss.controller.beta=0.9 is a variant; loss=amnl names the group).
NOT_VARIANT = ("seed", "dataset", "loss", "rul_loss", "protocol", "resume", "logger")
NOT_VARIANT_PREFIXES = ("paths.", "logger.", "hydra.")
TRAIN_JOB = "train"  # hydra.job.name of grace_lit.train (diagnose runs are not training runs)
LATEX_METRICS = ("test/rmse_last", "test/nasa")  # report.tex's tables (test/rmse_last with the paired differences)


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


@functools.lru_cache(maxsize=4096)
def _load_config(path: str, mtime_ns: int) -> Any:
    return OmegaConf.load(path)


def saved_config(path: Path) -> Any:
    """The config Hydra saved for a run (None without one); loaded once per file version and shared: read only."""
    saved = path / ".hydra" / "config.yaml"
    return _load_config(str(saved.resolve()), saved.stat().st_mtime_ns) if saved.is_file() else None


def config_value(cfg: Any, key: str) -> Any:
    return None if cfg is None else OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def test_truth_fields(metrics: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """``cap_test_rul`` and ``max_rul`` of a run: metrics.json's, else its saved config's (None: not recorded)."""
    return {k: metrics[k] if metrics.get(k) is not None else config_value(cfg, f"dataset.{k}")
            for k in ("cap_test_rul", "max_rul")}


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
           **test_truth_fields(metrics, saved_config(path)),
           "variant": variant(run_overrides(path, metrics)),
           **{k: metrics.get(k) for k in METRICS}, "error": metrics.get("error"),
           "environment": json.dumps(metrics["environment"]) if metrics.get("environment") else None}
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
    done = with_truth(runs[runs["status"] == "completed"])
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


# ------------------------------------------------------------------ environments
def differences(runs: pd.DataFrame) -> dict[str, Counter]:
    """Among ``runs`` that record their environment: each field with more than one value, and its values'
    counts (a field a run lacks counts as 'none')."""
    records = [json.loads(e) for e in runs["environment"].dropna()]
    fields = sorted({k for r in records for k in r})
    counts = {k: Counter(str(r.get(k) or "none") for r in records) for k in fields}
    return {k: c for k, c in counts.items() if len(c) > 1}


def describe(differ: dict[str, Counter]) -> str:
    """``torch 2.13.0+cpu (3 runs), 2.6.0 (2 runs); kernels ...``."""
    return "; ".join(f"{field} " + ", ".join(f"{value} ({n} run{'s' * (n != 1)})" for value, n in sorted(c.items()))
                     for field, c in differ.items())


def environment_note(done: pd.DataFrame) -> str:
    """One paragraph on the environments of every completed run the report pools."""
    recorded = done["environment"].dropna()
    missing = len(done) - len(recorded)
    if recorded.empty:
        return (f"Environment: none of the {len(done)} runs records one (written before metrics.json recorded it), "
                f"so whether they share one cannot be checked.")
    kinds = recorded.nunique()
    if kinds == 1:
        env = json.loads(recorded.iloc[0])
        text = "Environment: one for every run that records it (" + ", ".join(f"{k} {v}" for k, v in env.items()) + ")"
    else:
        text = (f"**Warning: the runs come from {kinds} environments**, and the same seed gives other digits in "
                f"another one (docs/reliability.md): {describe(differences(done))}")
    return text + (f". {missing} of the {len(done)} runs record none (written before metrics.json recorded it)."
                   if missing else ".")


def cell_warnings(done: pd.DataFrame) -> list[str]:
    """A warning per table cell (one arm: the runs averaged together) whose runs come from several environments."""
    notes = []
    for _, cell in done.groupby(list(GROUP), sort=True):
        differ = differences(cell)
        if differ:
            first = cell.iloc[0]
            missing = cell["environment"].isna().sum()
            notes.append(f"**Warning: the {arm_label(first['loss'], first['rul_loss'], first['variant'])} runs average "
                         f"several environments**: {describe(differ)}"
                         + (f"; {missing} record none" if missing else "") + ".")
    return notes


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
             "NASA score is summed over test units. Every table names the protocol that produced it and its test "
             "truth: capped at max_rul like the training targets (dataset.cap_test_rul=true, the default; runs "
             "older than that option always capped) or not capped."]
    done = with_truth(runs[runs["status"] == "completed"])
    done[list(GROUP)] = done[list(GROUP)].fillna("?").astype(str)
    if len(done):
        parts += ["", environment_note(done)]
    for protocol, by_protocol in table.groupby("protocol", sort=True):
        parts += ["", f"## protocol={protocol}", "", f"Selection: {by_protocol['selection'].iloc[0]}."]
        show_variant = (by_protocol["variant"] != "").any()
        for dataset, rows in by_protocol.groupby("dataset", sort=True):
            mixed = rows["test_truth"].nunique() > 1
            header = ["controller", "RUL loss", *(["variant"] if show_variant else []),
                      *(["test truth"] if mixed else []), "runs", "seeds", *(h for _, h, _ in METRICS.values())]
            body = [[r.loss, r.rul_loss, *([r.variant or "(defaults)"] if show_variant else []),
                     *([r.test_truth] if mixed else []), r.n_runs, r.seeds,
                     *(mean_std(r[f"{s}_mean"], r[f"{s}_std"], f) for s, _, f in METRICS.values())]
                    for _, r in rows.iterrows()]
            shown = runs[(runs["status"] == "completed") & (runs["protocol"].astype(str) == protocol)
                         & (runs["dataset"].astype(str) == dataset)]
            parts += ["", f"### {dataset} (protocol={protocol})", "",
                      f"Protocol: {protocol}. {truth_note(shown)}", "", md_table(header, body)]
            for note in cell_warnings(done[(done["protocol"] == protocol) & (done["dataset"] == dataset)]):
                parts += ["", note]
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


# ------------------------------------------------------------------ GABA's weights
def gaba_logs(runs: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """Every completed GABA run with a controller_log.csv and a recorded ``loss.controller.min_weight``: one row of
    ``floor_summary`` per run (with FLOOR_KEYS, seed, fold; the arm's variant as in the tables), and its log by
    row index (for the figure)."""
    done = with_truth(runs[(runs["status"] == "completed") & (runs["loss"] == "gaba")])
    rows, logs = [], {}
    for r in done.itertuples():
        path = Path(os.path.normpath(out / r.run))  # out may not exist yet: no '..' through it
        cfg = saved_config(path)
        min_weight = config_value(cfg, "loss.controller.min_weight")
        if not (path / "controller_log.csv").is_file() or min_weight is None:
            continue
        log = pd.read_csv(path / "controller_log.csv")
        if "weight_rul" not in log:
            continue
        variant_ = " ".join(o for o in str(r.variant or "").split() if not o.startswith("protocol.fold="))
        logs[len(rows)] = log
        rows.append({"protocol": r.protocol, "test_truth": r.test_truth,
                     "cap_test_rul": getattr(r, "cap_test_rul", None), "max_rul": getattr(r, "max_rul", None),
                     "dataset": r.dataset,
                     "arm": arm_label(r.loss, r.rul_loss, variant_), "min_weight": float(min_weight),
                     "seed": r.seed, "fold": 0 if pd.isna(r.fold) else int(r.fold),
                     **floor_summary(log, float(min_weight), config_value(cfg, "loss.controller.warmup_steps"))})
    return pd.DataFrame(rows, columns=[*FLOOR_KEYS, "seed", "fold"] if not rows else None), logs


# ------------------------------------------------------------------ CLI
def default_out(paths: Sequence[Path]) -> Path:
    return paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))


def figure_name(stem: str, protocol: str, truth: str, truths: int) -> str:
    """``<stem>_<protocol>.png``; the test truth joins the name only where a protocol has several."""
    suffix = "" if truths == 1 else "_" + "".join(c if c.isalnum() else "_" for c in truth)
    return f"{stem}_{protocol}{suffix}.png"


def report(paths: Sequence[Path], out: Path, trajectory_units: int, plots: bool, reference: str = "gaba",
           latex: bool = False) -> str:
    runs = collect(paths, out)
    table = summarize(runs)
    paired = paired_comparisons(runs, reference)  # grace_lit.stats: each controller against the reference
    tests = friedman_tests(runs, "test/rmse_last")
    per_protocol = pd.Series([t["protocol"] for t in tests]).value_counts()
    cd_figures = {figure_key(t): figure_name("report_cd", t["protocol"], t["test_truth"], per_protocol[t["protocol"]])
                  for t in tests if not t["refused"]}
    floors, logs = gaba_logs(runs, out)
    weight_figures = {}
    for (protocol, truth), rows in (floors.groupby(["protocol", "test_truth"], sort=True) if len(floors) else []):
        weight_figures[(protocol, truth)] = (rows, figure_name("report_gaba_weights", protocol, truth,
                                                               floors.loc[floors["protocol"] == protocol,
                                                                          "test_truth"].nunique()))
    text = (markdown(table, runs)
            + paired_markdown(paired, rank_table(runs), reference, "test/rmse_last", md_table)
            + friedman_markdown(tests, "test/rmse_last", md_table, cd_figures if plots else None)
            + floor_markdown(floor_table(floors) if len(floors) else pd.DataFrame(),
                             truth_note(floors, "GABA run") if len(floors) else "", md_table,
                             [name for _, name in weight_figures.values()] if plots else None))
    atomic_write_csv(out / "runs.csv", runs)
    atomic_write_csv(out / "report.csv", table)
    atomic_write_csv(out / "paired.csv", paired)
    atomic_write_text(out / "report.md", text)
    if latex:
        atomic_write_text(out / "report.tex", latex_document(table, paired, reference, "test/rmse_last",
                                                             {k: METRICS[k] for k in LATEX_METRICS}))
    if plots:
        from grace_lit.plots import cd_diagram, plot_run, sweep_bars, weight_floor  # matplotlib only when plotting

        for protocol, rows in table.groupby("protocol"):
            sweep_bars(rows, protocol, out / f"report_{protocol}.png")
        for test in tests:
            if not test["refused"]:
                cd_diagram(test["mean_ranks"], test["cd"], test["groups"],
                           f"protocol={test['protocol']}, test truth {test['test_truth']}: Friedman p = "
                           f"{test['p']:.3g}, k = {test['k']} arms, N = {test['n_blocks']} blocks",
                           out / cd_figures[figure_key(test)])
        for (protocol, truth), (rows, name) in weight_figures.items():
            weight_floor(rows, {i: logs[i] for i in rows.index},
                         f"protocol={protocol}: GABA's RUL weight per epoch (epoch means)", out / name)
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
    parser.add_argument("--out", type=Path, help="where report.{csv,md}, runs.csv, paired.csv and the figures go")
    parser.add_argument("--trajectory-units", type=int, default=4,
                        help="test units whose full RUL trajectory is re-scored and plotted per run (0: none)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--reference", default="gaba", help="controller the paired comparisons are made against")
    parser.add_argument("--latex", action="store_true", help="also report.tex: the tables as booktabs LaTeX")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.paths)
    try:
        print(report(args.paths, out, args.trajectory_units, plots=not args.no_plots, reference=args.reference,
                     latex=args.latex))
    except GraceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    figures = f", the figures {out / 'report_*.png'} and each run's plots/" if not args.no_plots else ""
    tex = f", {out / 'report.tex'}" if args.latex else ""
    print(f"-> {out / 'report.md'}{tex}, {out / 'report.csv'}, {out / 'runs.csv'}, {out / 'paired.csv'}{figures}")


if __name__ == "__main__":
    main()
