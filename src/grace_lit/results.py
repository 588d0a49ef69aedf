"""What a run leaves behind: ``metrics.json`` (always naming its protocol) and ``predictions.csv``."""
from __future__ import annotations

import platform
import subprocess
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grace_lit.io import atomic_write_csv, atomic_write_json

TEST_KEYS = ("test/rmse_last", "test/rmse_all", "test/nasa", "test/nasa_all", "test/health_acc",
             "test/health_acc_all")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command() -> str:
    return " ".join(["python -m grace_lit.train", *HydraConfig.get().overrides.task])


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def identity(cfg: DictConfig) -> dict[str, Any]:
    return {"protocol": cfg.protocol.name, "selection": cfg.protocol.selection, "dataset": cfg.dataset.name,
            "loss": cfg.loss.name, "rul_loss": cfg.rul_loss.name, "seed": cfg.seed,
            "split_seed": cfg.data.split_seed, "folds": cfg.protocol.folds, "fold": cfg.protocol.fold,
            "val_cuts": cfg.protocol.val_cuts, "command": command(),
            "git_commit": git_commit()}


def run_summary(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, n_params: int,
                wall_time_s: float) -> dict[str, Any]:
    ckpt = trainer.checkpoint_callback
    best_epoch = None
    if ckpt is not None and ckpt.best_model_path:
        best_epoch = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False, mmap=True)["epoch"]
    metrics = trainer.callback_metrics
    summary = {
        "status": "completed", **identity(cfg),
        "selection_metric": cfg.monitor,
        "selection_score": float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None
        else None,
        "best_epoch": best_epoch, "epochs_run": trainer.current_epoch, "wall_time_s": round(wall_time_s, 2),
        "n_params": n_params, "device": device_name(trainer), "world_size": trainer.world_size,
        "nonfinite_skips": module.nonfinite.skips,
    }
    summary.update({k: float(metrics[k]) if k in metrics else None for k in TEST_KEYS})
    return summary


def write_results(out_dir: Path, summary: dict[str, Any], predictions: pd.DataFrame | None,
                  unit_names: dict[int, str]) -> None:
    """``unit_names``: the units as the user's table names them (``Splits.unit_names``), as predict prints them."""
    if predictions is not None:
        atomic_write_csv(out_dir / "predictions.csv", named_units(predictions, unit_names))
    atomic_write_json(out_dir / "metrics.json", summary)


def named_units(frame: pd.DataFrame, unit_names: dict[int, str]) -> pd.DataFrame:
    """``frame``'s unit codes back to the ids a user's table gave (windows carry integer codes only)."""
    return frame.assign(unit=frame["unit"].map(lambda u: unit_names.get(u, u))) if unit_names else frame


def write_failure(out_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    """A failed run still leaves a metrics.json, so a sweep report lists it with its error."""
    atomic_write_json(out_dir / "metrics.json", {
        "status": "failed", **identity(cfg), "error": str(err),
        "traceback": "".join(traceback.format_exception(err))[-4000:]})
