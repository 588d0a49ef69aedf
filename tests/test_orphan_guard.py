"""A joblib sweep killed mid-job leaves no worker process behind (``grace_lit.orphan_guard``): real CLI sweeps
in a subprocess, their main process killed while both workers train. (Without the guard, with
``~hydra.callbacks.orphan_guard``, the same test finds both workers alive: joblib's workers outlive SIGKILL.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

LONG = ["dataset=FD001", "model=small", "trainer.max_epochs=200", "trainer.limit_val_batches=1"]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has died)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running_with(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


def descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_for(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def training(sweep_dir: Path) -> int:
    """Jobs past their start (the guard is set before the run logs its run directory)."""
    return sum("run directory" in log.read_text() for log in sweep_dir.glob("*/train.log"))


def start_sweep(sweep_dir: Path, data_cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grace_lit.train", "--multirun", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "seed=1,2", *LONG, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=REPO, env=cli_env(data_cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_mid_job(sweep_dir: Path, data_cache: Path, sig: signal.Signals) -> set[int]:
    """Start a two-job sweep, kill its main process with ``sig`` once both jobs train; the workers still alive
    10 s later (the guard's signal is immediate; a worker without it trains on for minutes)."""
    sweep, workers = start_sweep(sweep_dir, data_cache), set()
    try:
        assert wait_for(lambda: training(sweep_dir) == 2 or sweep.poll() is not None, 240)
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        workers = descendants(sweep.pid)
        assert workers
        os.kill(sweep.pid, sig)
        sweep.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in workers), 10)
        return {p for p in workers if alive(p)}
    finally:
        for pid in descendants(sweep.pid) | workers | {sweep.pid}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_sweep_leaves_no_worker(sig, tmp_path, data_cache):
    survivors = kill_mid_job(tmp_path, data_cache, sig)
    assert survivors == set()
    assert not list(tmp_path.glob("*/metrics.json"))  # no job finished: each was stopped mid-training

