"""What a run leaves behind: ``metrics.json`` (always naming its protocol), ``predictions.csv`` and, under
protocol=holdout, ``calibration.csv``."""
from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grace_lit.calibration import attach as attach_intervals
from grace_lit.data.windows import with_health_names
from grace_lit.io import atomic_write_csv, atomic_write_json
from grace_lit.metrics import nasa_terms

TEST_KEYS = ("test/rmse_last", "test/rmse_all", "test/nasa", "test/nasa_all", "test/health_acc",
             "test/health_acc_all")
# the last windows scored against the raw truth (never capped: C-MAPSS's RUL_FD00x files), beside the capped
# test/rmse_last and test/nasa, so that a number can be compared with a paper whatever its cap
RAW_KEYS = ("test/rmse_last_raw", "test/nasa_raw")
# the packages whose versions can move a run's digits (the environment record in metrics.json)
PACKAGES = ("torch", "lightning", "numpy", "pandas", "hydra-core", "torchjd", "torchmetrics", "crepes")
TRACE_NOTE = "the test set scored after every epoch, for auditing selection only; it chose nothing"


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


def environment(trainer: L.Trainer) -> dict[str, Any]:
    """What produced the digits: the same seed gives the same numbers only in the same environment (one thread;
    docs/reliability.md). ``kernels``: torch's CPU instruction set, or the GPU's name."""
    return environment_on(trainer.strategy.root_device)


def environment_on(device: torch.device) -> dict[str, Any]:
    """``environment`` without a trainer: for scripts that train by a loop of their own (benchmarks/)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), **packages, "cpu": cpu_model(),
            "kernels": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu {torch.backends.cpu.get_cpu_capability()}"}


def cpu_model() -> str:
    """The processor's name (Linux's /proc/cpuinfo, else what the platform says): two machines with one
    instruction set (AVX512 on an Intel Xeon and on an AMD EPYC) still give other float digits."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def identity(cfg: DictConfig) -> dict[str, Any]:
    return {"protocol": cfg.protocol.name, "selection": cfg.protocol.selection, "dataset": cfg.dataset.name,
            "loss": cfg.loss.name, "rul_loss": cfg.rul_loss.name, "seed": cfg.seed,
            "split_seed": cfg.data.split_seed, "folds": cfg.protocol.folds, "fold": cfg.protocol.fold,
            "val_cuts": cfg.protocol.val_cuts,
            "test_trace": f"test_trace.csv: {TRACE_NOTE}" if cfg.protocol.get("test_trace") else None,
            # what test/* were scored against: the truth capped at max_rul (true) or the raw one (false)
            "cap_test_rul": OmegaConf.select(cfg, "dataset.cap_test_rul", default=None),
            "max_rul": OmegaConf.select(cfg, "dataset.max_rul", default=None), "command": command(),
            "git_commit": git_commit()}


def run_summary(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, n_params: int,
                wall_time_s: float, cpu_time_s: float) -> dict[str, Any]:
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
        "cpu_time_s": round(cpu_time_s, 2),
        "n_params": n_params, "device": device_name(trainer), "world_size": trainer.world_size,
        "nonfinite_skips": module.nonfinite.skips, "environment": environment(trainer),
    }
    summary.update({k: float(metrics[k]) if k in metrics else None for k in TEST_KEYS})
    return summary


def score_raw_truth(summary: dict[str, Any], predictions: pd.DataFrame | None,
                    test_rul_raw: dict[int, float]) -> pd.DataFrame | None:
    """The test units' last windows scored against the raw truth too: ``summary`` gains RAW_KEYS and the
    predictions (one row per test unit, ``unit`` still the integer codes) a ``rul_true_raw`` column, each unit's
    true RUL after its last row never capped (``Splits.test_rul_raw``). Under dataset.cap_test_rul=false the raw
    scores equal the capped ones. None and no column where the reader gives no raw truth."""
    raw = None if predictions is None else predictions["unit"].map(test_rul_raw)
    if raw is None or raw.isna().any():
        summary.update(dict.fromkeys(RAW_KEYS))
        return predictions
    pred, truth = torch.tensor(predictions["rul_pred"].to_numpy(float)), torch.tensor(raw.to_numpy(float))  # copies
    summary["test/rmse_last_raw"] = float((pred - truth).square().mean().sqrt())
    summary["test/nasa_raw"] = float(nasa_terms(pred, truth).sum())
    return predictions.assign(rul_true_raw=raw.to_numpy(float))


def write_scored(out_dir: Path, cfg: DictConfig, summary: dict[str, Any], module: Any, splits: Any) -> None:
    """A tested model's files, for a train run and a study's best trial alike: the test predictions with their
    raw-truth scores beside the capped ones, their intervals (calibrated on the held-out cut ends, covering
    both truths) and the predicted health state's name, then
    ``write_results``. ``module``: the tested GraceModule; ``splits``: its datamodule's ``Splits``."""
    held = module.held_out_predictions
    held = None if held is None else named_units(held, splits.unit_names)  # as calibration.csv names them
    predictions = score_raw_truth(summary, module.test_predictions, splits.test_rul_raw)
    predictions = attach_intervals(cfg, splits.preprocessing, summary, predictions, held)
    if predictions is not None:
        predictions = with_health_names(predictions, cfg.model.num_health_states)
    write_results(out_dir, summary, predictions, splits.unit_names, module.held_out_predictions)


def write_results(out_dir: Path, summary: dict[str, Any], predictions: pd.DataFrame | None,
                  unit_names: dict[int, str], held_out: pd.DataFrame | None = None) -> None:
    """``unit_names``: the units as the user's table names them (``Splits.unit_names``), as predict prints them.
    ``held_out``: the held-out cut ends scored by the tested weights (protocol=holdout), which calibrate the
    intervals (``grace_lit.calibration``), written as ``calibration.csv``: intervals are calibrated again later
    without the checkpoint."""
    if held_out is not None:
        atomic_write_csv(out_dir / "calibration.csv", named_units(held_out, unit_names))
    if predictions is not None:
        atomic_write_csv(out_dir / "predictions.csv", named_units(predictions, unit_names))
    atomic_write_json(out_dir / "metrics.json", summary)


def named_units(frame: pd.DataFrame, unit_names: dict[int, str]) -> pd.DataFrame:
    """``frame``'s unit codes back to the ids a user's table gave (windows carry integer codes only)."""
    return frame.assign(unit=frame["unit"].map(lambda u: unit_names.get(u, u))) if unit_names else frame


def write_failure(out_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    """A failed run still leaves a metrics.json, so a sweep report lists it with its error (and with what of its
    identity can be read: the failure may be an unset value, e.g. dataset.name)."""
    try:
        known = identity(cfg)
    except OmegaConfBaseException:
        known = {}
    atomic_write_json(out_dir / "metrics.json", {
        "status": "failed", **known, "error": str(err),
        "traceback": "".join(traceback.format_exception(err))[-4000:]})
