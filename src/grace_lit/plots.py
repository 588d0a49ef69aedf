"""Figures of a finished run and of a sweep table, as PNG files beside the data.

Headless by construction: figures are ``matplotlib.figure.Figure`` objects saved directly, never pyplot, so no
display backend or global figure state is involved. Per run (into ``<run>/plots/``): learning curves, controller
weights with the GABA warmup band (and the gradient norms and the cosine between the task gradients where they
were measured), learning rate and weight decay, last-window predictions, and full RUL
trajectories of a few test units (re-scored from the selected checkpoint, see replay.py). Per report: bars per
protocol, a critical-difference diagram of the Friedman test (Demšar 2006) and GABA's RUL weight per epoch against
its floor.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from grace_lit.data.windows import health_names
from grace_lit.fleet import ranked
from grace_lit.replay import window_predictions

DPI = 120
PANEL = (4.5, 3.4)  # inches per subplot; a figure is at least two panels wide, so its title fits
FLEET_ROW_INCHES = 0.12  # the fleet figure's height per unit
LOG_SPAN = 10.0  # task weights spanning more than this factor (AMNL's effective weights) get a log axis
CONTROLLER_PANELS = {"weight_": "task weights", "g_": "gradient norms (shared parameters)",
                     "cos_": "cosine between the task gradients (< 0: conflict)"}
HEALTH_COLOURS = ("tab:green", "tab:orange", "tab:red")  # healthy, degrading, critical (more states: viridis)
BAR_METRICS = {"rmse_last": "test RMSE (last window)", "nasa": "test NASA score", "health_acc": "test health acc."}


def _figure(n_panels: int, rows: int = 1) -> tuple[Figure, list[Axes]]:
    cols = -(-n_panels // rows)
    fig = Figure(figsize=(PANEL[0] * max(cols, 2), PANEL[1] * rows), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(rows, cols)).ravel())


def _save(fig: Figure, path: Path, **savefig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, **savefig)
    return path


def curve(ax: Axes, metrics: pd.DataFrame, column: str, epochs: set[int] | None = None, log: bool = True,
          **style) -> None:
    """Plot ``column`` of the CSV logger's metrics.csv per epoch (``epochs``: only those); ``log``: log y axis
    when every value is positive."""
    if column not in metrics:
        ax.set_title(f"{column} (not logged)")
        return
    rows = metrics.dropna(subset=[column]).drop_duplicates("epoch", keep="last")
    if epochs is not None:
        rows = rows[rows["epoch"].isin(epochs)]
    ax.plot(rows["epoch"], rows[column], marker=".", **style)
    ax.set(title=column, xlabel="epoch")
    if log and len(rows) and (rows[column] > 0).all():
        ax.set_yscale("log")


def learning_curves(metrics: pd.DataFrame, monitor: str, best_epoch: int | None, title: str, path: Path) -> Path:
    """Train losses and the selection metric per epoch (training epochs only: the final test row is left out)."""
    fig, axes = _figure(3)
    curve(axes[0], metrics, "train/loss_rul")
    curve(axes[1], metrics, "train/loss_health")
    trained = set(metrics.dropna(subset=["train/loss_rul"])["epoch"]) if "train/loss_rul" in metrics else None
    curve(axes[2], metrics, monitor, trained, log=False, color="C1")
    axes[2].set_title(f"{monitor} (selection)")
    if best_epoch is not None:
        axes[2].axvline(best_epoch, color="k", linestyle=":", label=f"selected (epoch {best_epoch})")
        axes[2].legend()
    fig.suptitle(title)
    return _save(fig, path)


def controller_weights(log: pd.DataFrame, warmup_steps: int | None, title: str, path: Path) -> Path:
    """Per-epoch mean task weights at each epoch's last step; where the step measured the task gradients, also
    their norms and the cosine between them (the conflict spec 002 measures before training, as a curve)."""
    prefixes = [p for p in CONTROLLER_PANELS if any(c.startswith(p) for c in log.columns)]
    fig, axes = _figure(len(prefixes))
    for ax, prefix in zip(axes, prefixes):
        columns = [c for c in log.columns if c.startswith(prefix)]
        for column in columns:
            ax.plot(log["step"], log[column], marker=".", label=column)
        if warmup_steps:
            ax.axvspan(0, warmup_steps, color="0.85", label=f"warmup ({warmup_steps} steps, uniform)")
        ax.set(xlabel="optimizer step (epoch end; values are epoch means)", title=CONTROLLER_PANELS[prefix])
        values = log[columns].to_numpy()
        if prefix == "cos_":
            ax.axhline(0.0, color="k", linewidth=0.8)
            ax.set_ylim(-1.05, 1.05)
        elif prefix == "g_" or values.size and (values > 0).all() and values.max() > LOG_SPAN * values.min():
            ax.set_yscale("log")
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def schedules(metrics: pd.DataFrame, title: str, path: Path) -> Path:
    """Learning rate and weight decay of the first parameter group, at each epoch's end."""
    fig, axes = _figure(2)
    curve(axes[0], metrics, "lr")
    curve(axes[1], metrics, "weight_decay")
    fig.suptitle(title)
    return _save(fig, path)


def last_window(predictions: pd.DataFrame, title: str, path: Path) -> Path:
    """Scatter of predicted vs true RUL, and every unit sorted by true RUL (the usual C-MAPSS figure)."""
    rmse = float(np.sqrt(((predictions["rul_pred"] - predictions["rul_true"]) ** 2).mean()))
    fig, (scatter, ordered) = _figure(2)
    scatter.scatter(predictions["rul_true"], predictions["rul_pred"], s=12)
    top = float(max(predictions["rul_true"].max(), predictions["rul_pred"].max()))
    scatter.plot([0, top], [0, top], color="k", linewidth=0.8)
    scatter.set(xlabel="true RUL", ylabel="predicted RUL", title=f"last window per test unit (RMSE {rmse:.2f})")
    order = predictions.sort_values("rul_true").reset_index(drop=True)
    ordered.plot(order.index, order["rul_true"], color="k", label="true")
    ordered.scatter(order.index, order["rul_pred"], s=10, color="C3", label="predicted")
    ordered.set(xlabel="test unit (sorted by true RUL)", ylabel="RUL", title="per unit")
    ordered.legend()
    fig.suptitle(title)
    return _save(fig, path)


def fleet_intervals(frame: pd.DataFrame, title: str, path: Path, alert: float | None = None) -> Path:
    """Every unit's interval (a prediction table: rul_pred, rul_lo, rul_hi, rul_hi_open, health_pred), one row
    per unit ranked by lower bound (the first to inspect at the top), coloured by predicted health state; an
    open upper end ("RUL >= lo") drawn as an arrow past the cap instead of an end; ``alert``: a line at that
    many cycles."""
    rows = ranked(frame).reset_index(drop=True)
    states = sum(c.startswith("p_health_") for c in rows.columns) or 1
    names = health_names(states) if states > 1 else ["(no health head)"]
    colours = (HEALTH_COLOURS if states == len(HEALTH_COLOURS) else
               [matplotlib.colormaps["viridis"](k / max(states - 1, 1)) for k in range(states)])
    health = rows["health_pred"].fillna(0).astype(int) if "health_pred" in rows else pd.Series(0, index=rows.index)
    fig = Figure(figsize=(PANEL[0] * 2, max(PANEL[1], FLEET_ROW_INCHES * len(rows))), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    is_open = rows["rul_hi_open"].fillna(False).to_numpy(bool)
    finite = rows["rul_hi"].where(np.isfinite(rows["rul_hi"]))
    top = float(max(finite.max(), rows["rul_pred"].max())) if finite.notna().any() else float(rows["rul_pred"].max())
    for state in range(states):
        mine = (health == state).to_numpy()
        if not mine.any():
            continue
        closed, opened = mine & ~is_open, mine & is_open
        ax.hlines(y[mine], rows["rul_lo"][mine], np.minimum(rows["rul_hi"][mine], top), color=colours[state],
                  linewidth=2, label=f"{state} {names[state]}")
        ax.plot(rows["rul_lo"][mine], y[mine], "|", color=colours[state], markersize=6)
        ax.plot(rows["rul_hi"][closed], y[closed], "|", color=colours[state], markersize=6)
        ax.plot(np.full(opened.sum(), top), y[opened], ">", color=colours[state], markersize=5)
        ax.plot(rows["rul_pred"][mine], y[mine], "o", color="k", markersize=2.5)
    if is_open.any():
        ax.plot([], [], ">", color="0.4", label=f"open end: RUL >= lower bound (truth capped at {top:g})")
    if alert is not None:
        ax.axvline(alert, color="k", linestyle="--", linewidth=0.8, label=f"alert: lower bound < {alert:g}")
    ax.set_yticks(y, rows["unit"].astype(str), fontsize="x-small")
    ax.invert_yaxis()  # the lowest lower bound at the top
    ax.set(xlabel="RUL (interval, dot: prediction)", ylabel="unit (ranked by lower bound)", title=title)
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    return _save(fig, path)


def trajectories(windows: pd.DataFrame, title: str, path: Path) -> Path:
    units = list(dict.fromkeys(windows["unit"]))
    fig, axes = _figure(len(units), rows=1 if len(units) <= 4 else 2)
    for ax, unit in zip(axes, units):
        rows = windows[windows["unit"] == unit]
        ax.plot(rows["cycle"], rows["rul_true"], color="k", label="true (capped)")
        ax.plot(rows["cycle"], rows["rul_pred"], color="C3", label="predicted")
        ax.set(title=f"unit {unit}", xlabel="cycle relative to the last observed", ylabel="RUL")
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def sweep_bars(table: pd.DataFrame, protocol: str, path: Path) -> Path:
    """One panel per metric: datasets on x, one bar per controller/RUL loss/variant, error bars = sample std."""
    keys = ["loss", "rul_loss", "variant", *(["test_truth"] if "test_truth" in table and
                                              table["test_truth"].nunique() > 1 else [])]
    methods = list(table[keys].drop_duplicates().itertuples(index=False))
    datasets = sorted(table["dataset"].unique())
    width = 0.8 / len(methods)
    fig, axes = _figure(len(BAR_METRICS))
    for ax, (stem, label) in zip(axes, BAR_METRICS.items()):
        for i, method in enumerate(methods):
            rows = table[(table[keys] == pd.Series(method, index=keys)).all(axis=1)].set_index("dataset")
            rows = rows.reindex(datasets)
            name = " + ".join(filter(None, method))
            ax.bar(np.arange(len(datasets)) + (i - (len(methods) - 1) / 2) * width, rows[f"{stem}_mean"],
                   width, yerr=rows[f"{stem}_std"].fillna(0.0), capsize=3, label=name)
        ax.set_xticks(np.arange(len(datasets)), datasets)
        ax.set(title=label)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize="small")
    fig.suptitle(f"protocol={protocol}: mean ± sample std over seeds")
    return _save(fig, path)


def cd_diagram(mean_ranks: pd.Series, cd: float, groups: list[list[str]], title: str, path: Path) -> Path:
    """Critical-difference diagram (Demšar 2006, Fig. 1): the arms on a mean-rank axis (1 = lowest error, left),
    half labelled on each side; the CD as a bar above the axis; thick bars below it join the arms whose mean ranks
    differ by less than the CD (``groups``, grace_lit.stats.nemenyi_groups)."""
    ranks = mean_ranks.sort_values()
    k = len(ranks)
    half = (k + 1) // 2
    lines = max(half, k - half)
    step = 0.35
    fig = Figure(figsize=(8.0, 1.6 + step * (lines + len(groups) * 0.5)))
    ax = fig.subplots()
    ax.set_axis_off()
    lo, hi = 1, max(k, 2)
    ax.hlines(0.0, lo, hi, color="k", linewidth=1.2)
    for tick in np.arange(lo, hi + 0.25, 0.5):
        whole = float(tick).is_integer()
        ax.vlines(tick, 0.0, 0.12 if whole else 0.06, color="k", linewidth=1.0)
        if whole:
            ax.text(tick, 0.18, f"{tick:g}", ha="center", va="bottom")
    ax.hlines(0.75, lo, lo + cd, color="k", linewidth=1.5)  # the critical difference, from rank 1
    ax.vlines([lo, lo + cd], 0.68, 0.82, color="k", linewidth=1.5)
    ax.text(lo + cd / 2, 0.86, f"CD = {cd:.3f}", ha="center", va="bottom")
    for j, group in enumerate(groups):
        y = -0.18 - 0.16 * j
        ax.hlines(y, ranks[group[0]] - 0.03, ranks[group[-1]] + 0.03, color="k", linewidth=4)
    top = -0.18 - 0.16 * len(groups) - 0.25
    for i, (name, rank) in enumerate(ranks.items()):
        left = i < half
        y = top - step * (i if left else k - 1 - i)
        end = lo - 0.15 if left else hi + 0.15
        ax.plot([rank, rank, end], [0.0, y, y], color="k", linewidth=0.9)
        ax.text(end + (-0.05 if left else 0.05), y, f"{name} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize="small")
    ax.set_xlim(lo - 0.2, hi + 0.2)
    ax.set_ylim(top - step * lines, 1.2)
    ax.set_title(title, fontsize="medium")
    return _save(fig, path, bbox_inches="tight")


def weight_floor(rows: pd.DataFrame, logs: dict[int, pd.DataFrame], title: str, path: Path) -> Path:
    """One panel per (dataset, arm) of ``rows`` (grace_lit.report.gaba_logs): the RUL weight per epoch on a log
    axis, one line per seed (``logs`` by row index), the floor ``min_weight`` dashed."""
    panels = list(rows.groupby(["dataset", "arm"], sort=True))
    cols = min(len(panels), 3)
    fig, axes = _figure(len(panels), rows=-(-len(panels) // cols))
    for ax, ((dataset, arm), runs) in zip(axes, panels):
        for index, run in runs.sort_values(["seed", "fold"]).iterrows():
            log = logs[index].dropna(subset=["weight_rul"]).drop_duplicates("epoch", keep="last")
            label = f"seed {int(run['seed'])}" + (f" fold {int(run['fold'])}" if run["fold"] else "")
            ax.plot(log["epoch"], log["weight_rul"], linewidth=1.0, label=label)
        for floor in sorted(runs["min_weight"].unique()):
            ax.axhline(floor, color="k", linestyle="--", linewidth=0.8, label=f"floor (min_weight {floor:g})")
        ax.set_yscale("log")  # a departure from the floor shows as well as the fall from 0.5
        ax.set(xlabel="epoch", ylabel="weight_rul (epoch mean, log scale)",
               title="\n".join(textwrap.wrap(f"{dataset}: {arm}", 50)))
        ax.legend(fontsize="x-small")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title)
    return _save(fig, path)


def plot_run(run_dir: Path, trajectory_units: int) -> list[Path]:
    """Every figure whose input the run left behind; returns the files written."""
    out = run_dir / "plots"
    summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    saved = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create()
    monitor = summary.get("selection_metric") or OmegaConf.select(cfg, "monitor", default="")

    def name(key: str, path: str) -> str:  # metrics.json, else (unfinished run) the config it started with
        return summary[key] if key in summary else OmegaConf.select(cfg, path, default="?",
                                                                     throw_on_resolution_failure=False)

    title = (f"{name('dataset', 'dataset.name')} {name('loss', 'loss.name')} + {name('rul_loss', 'rul_loss.name')}, "
             f"seed {name('seed', 'seed')} (protocol={name('protocol', 'protocol.name')}, "
             f"{summary.get('status', 'unfinished')})")
    written = []
    if (run_dir / "metrics.csv").is_file():
        metrics = pd.read_csv(run_dir / "metrics.csv")
        written.append(learning_curves(metrics, monitor, summary.get("best_epoch"), title,
                                       out / "learning_curves.png"))
        written.append(schedules(metrics, title, out / "lr_weight_decay.png"))
    if (run_dir / "controller_log.csv").is_file():
        log = pd.read_csv(run_dir / "controller_log.csv")
        warmup = OmegaConf.select(cfg, "loss.controller.warmup_steps", default=None)
        written.append(controller_weights(log, warmup, title, out / "controller_weights.png"))
    if (run_dir / "predictions.csv").is_file():
        written.append(last_window(pd.read_csv(run_dir / "predictions.csv"), title, out / "predictions_last.png"))
    if trajectory_units > 0 and summary.get("status") == "completed":
        windows = window_predictions(run_dir, trajectory_units)
        scored = pd.read_csv(run_dir / "predictions.csv").set_index("unit")["rul_pred"]
        last = windows[windows["is_last"]].set_index("unit")["rul_pred"]
        gap = float((last - scored.reindex(last.index)).abs().max())  # the replay must reproduce the test scores
        written.append(trajectories(windows, f"{title}\nre-scored; max |difference| to predictions.csv {gap:.2g}",
                                    out / "trajectories.png"))
    return written
