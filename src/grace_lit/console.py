"""What a training run prints around its progress: no third-party notice a user cannot act on, one opening
summary, the composed config as a tree on request, and a closing line with the result and where the files are."""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import rich
from omegaconf import DictConfig, OmegaConf
from rich.syntax import Syntax
from rich.tree import Tree

from grace_lit.results import TRACE_NOTE, device_name

# Python warnings, matched at the start of their message (scoped: any other warning still shows)
NOISE_WARNINGS = (
    # every value grace-lit logs is already global under DDP (the module averages losses over ranks, every rank
    # scores the whole evaluation set), so Lightning's advice to reduce them again does not apply
    r"It is recommended to use `self\.log\(.*sync_dist=True",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning calling torch's pytree API
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # metrics are per epoch
)
# Lightning's info records that the opening summary or the closing line already say, or that advertise
NOISE_RECORDS = re.compile("|".join((
    r"💡 Tip: ",                                              # the litlogger advertisement
    r"`Trainer\(limit_\w+_batches=1\.0\)` was configured",     # the default, announced
    r"[GTHI]PU available: ",                                  # the summary names the device
    r"Seed set to ",                                          # the summary names the seed
    r"`Trainer\.fit` stopped: `max_(epochs|steps)=",          # the result line says best epoch N of M
    r"Restoring states from the checkpoint path at ",          # resume (said by the summary), the final test
    r"Restored all states from the checkpoint",
    r"Loaded model weights from the checkpoint",
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: ",                # on a GPU; the summary names the device
)))
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.seed", "lightning.pytorch.accelerators.cuda")


def _keep(record: logging.LogRecord) -> bool:
    return NOISE_RECORDS.match(record.getMessage()) is None


def quiet() -> None:
    """Drop the third-party noise above; everything else (errors, advice a user can follow) still shows."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_keep)  # a logger's filter sees the records created on it


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (what a user would type)."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def opening(cfg: DictConfig, trainer: L.Trainer, model_name: str, n_params: int, resume_from: str | None) -> str:
    """The run's summary, before training: what is trained on what, how it selects, where, into which directory."""
    devices = f" x {trainer.num_devices}" if trainer.num_devices > 1 else ""
    start = f"resumed from {shown_path(Path(resume_from))}" if resume_from else "fresh"
    return "\n".join((
        f"[{cfg.dataset.name} | protocol={cfg.protocol.name} | selection on {cfg.monitor}] seed {cfg.seed}, {start}",
        f"  selects on: {cfg.protocol.selection}",
        f"  model {model_name}: {n_params:,} parameters; controller {cfg.loss.name} + {cfg.rul_loss.name}, "
        f"grad_mode={cfg.grad_mode}",
        f"  device: {device_name(trainer)}{devices}, precision {trainer.precision}, "
        f"up to {trainer.max_epochs} epochs; {threads_note(cfg)}",
        *([f"  test trace: test_trace.csv, {TRACE_NOTE}"] if cfg.protocol.get("test_trace") else []),
        f"  run directory: {shown_path(Path(cfg.paths.output_dir))}",
    ))


def threads_note(cfg: DictConfig) -> str:
    """Where the thread count in the device line came from (config ``threads``, set by ``train.build``)."""
    threads = cfg.get("threads")
    return "threads=null: torch's default" if threads is None else f"threads={threads} (per process)"


def closing(cfg: DictConfig, summary: dict[str, Any], out_dir: Path) -> str:
    """The result line and where the run's files are."""
    epochs = summary["epochs_run"]
    tested = (f"best epoch {summary['best_epoch']} of {epochs}" if summary["best_epoch"] is not None
              else f"{epochs} epochs, no checkpoint: the live weights")
    files = ", ".join(sorted(p.name + "/" * p.is_dir() for p in out_dir.iterdir() if not p.name.startswith(".")))
    return (f"[{cfg.dataset.name} | protocol={cfg.protocol.name}] test rmse_last={summary['test/rmse_last']:.3f} "
            f"rmse_all={summary['test/rmse_all']:.3f} nasa={summary['test/nasa']:.1f} "
            f"({tested})\n{interval_line(summary)}"
            f"  files in {shown_path(out_dir)}{os.sep}: {files}")


def interval_line(summary: dict[str, Any]) -> str:
    """The test set's empirical coverage of the run's interval (or why it has none), one line."""
    if summary.get("interval/form") is None:
        return f"  {summary['interval/note']}\n" if summary.get("interval/note") else ""
    coverage = summary.get("test/interval_coverage")
    measured = "" if coverage is None else (f": test coverage {coverage:.3f}, mean width "
                                            f"{summary['test/interval_width']:.1f}")
    return (f"  {summary['interval/nominal_coverage']:.0%} interval ({summary['interval/form']}, calibrated on "
            f"{summary['interval/calibration_points']} held-out cut ends){measured}\n")


def print_config(cfg: DictConfig) -> None:
    """The composed config as a rich tree, one branch per top-level key (as lightning-hydra-template prints it)."""
    tree = Tree("config", style="dim", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key), style="bold").add(Syntax(text, "yaml"))
    rich.print(tree)
