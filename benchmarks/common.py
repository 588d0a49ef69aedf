"""Shared by the benchmark scripts: the composed config, interleaved repetition, and the machine description.

Variants are run interleaved (A, B, C, A, B, C, ...) and summarised by their medians, so a load spike from
other processes on a shared machine hits every variant alike instead of biasing one.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import grace_lit.config  # noqa: F401  (registers the resolvers conf/ uses)

REPO = Path(__file__).resolve().parents[1]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: CPU time of this process (all its threads), which other "
                             "jobs on a shared machine barely move when --threads 1")


def apply_options(args: argparse.Namespace) -> None:
    """Quiet Lightning, pin torch's threads, choose the clock. On a machine shared with other jobs, one thread
    avoids OpenMP barriers waiting on descheduled threads, and the CPU clock then measures the work itself."""
    global _clock
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    _clock = CLOCKS[args.clock]


def now() -> float:
    """The clock chosen by --clock, in seconds."""
    return _clock()


def compose_config(*overrides: str) -> DictConfig:
    """conf/train.yaml composed with ``overrides``, exactly as ``python -m grace_lit.train`` would."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def interleaved(variants: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, in order; each call returns its timings (seconds), collected per name."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            times[name] += run()
        print(f"round {r + 1}/{rounds}: " + "  ".join(f"{n}={statistics.median(t):.3f}s" for n, t in times.items()),
              flush=True)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> str:
    """CPU model, cores, torch threads, the clock and the load average: the context of every figure."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clock = next(name for name, c in CLOCKS.items() if c is _clock)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{clock} clock, load average {load:.2f} at start")


class EpochTimer(L.Callback):
    """Wall time between consecutive epoch starts (the last epoch ends at the end of training): training,
    evaluation, callbacks, logging and checkpoints, i.e. what an epoch costs a run."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, *args: Any) -> None:
        self.marks.append(now())

    def on_train_end(self, *args: Any) -> None:
        self.marks.append(now())

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]
