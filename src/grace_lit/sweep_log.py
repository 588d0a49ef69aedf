"""Hydra job callback: one line per finished job of a sweep, so a 100-run sweep can be followed in a terminal.

Registered under ``hydra.callbacks`` in conf/train.yaml (and conf/diagnose.yaml with its own fields). The line
reads the job's result file (metrics.json / diagnose.json); a job that died before writing one is reported
with Hydra's exception. Runs in the worker process, so it works the same under the joblib and SLURM launchers.
"""
from __future__ import annotations

import json
import time
from itertools import takewhile
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def job_line(job: str, result: dict[str, Any] | None, fields: list[str], elapsed_s: float,
             error: BaseException | str | None) -> str:
    """``[job 3] FD001 gaba seed=1 test/rmse_last=41.2 wall_time_s=31.8 completed``."""
    result = result or {}
    values = " ".join(f"{key}={format_value(result.get(key))}" for key in fields)
    status = result.get("status", "failed" if error is not None else "completed")
    line = f"[job {job}] {values} {status}"
    if error is not None or status == "failed":
        line += f": {problem(str(result.get('error') or error)) or type(error).__name__} (after {elapsed_s:.1f}s)"
    return line


def problem(message: str) -> str:
    """An error message on one line, without its fix: 'Invalid configuration: optimizer.lr=-1: must be > 0'."""
    lines = [part.strip() for part in message.strip().splitlines()]
    return " ".join(takewhile(lambda part: not part.startswith("Fix:"), lines))


def sweep_size(config: DictConfig) -> int:
    """How many jobs Hydra's basic sweeper makes of this sweep: its ``params`` (presets), then the command line's."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return sum(len(batch) for batch in batches)


class SweepLog(Callback):
    def __init__(self, filename: str, fields: list[str]):
        self.filename, self.fields = filename, list(fields)
        self._start = time.time()
        self.total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # before the launcher ships this callback to its workers (joblib, SLURM), so they know the total too
        self.total = sweep_size(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run logs its own summary line
        path = Path(config.hydra.runtime.output_dir) / self.filename
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            result = None
        # JobReturn.return_value re-raises a failed job's exception; the line only needs to name it
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        # finished jobs, also in other workers and before a resume: the result files in the sweep directory
        done = len(list(Path(config.hydra.sweep.dir).glob(f"*/{self.filename}")))
        count = f"{done} of {self.total} done" if self.total else f"{done} done"
        print(f"{job_line(str(config.hydra.job.num), result, self.fields, time.time() - self._start, error)} "
              f"({count})", flush=True)
