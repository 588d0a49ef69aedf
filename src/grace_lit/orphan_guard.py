"""Hydra job callback: a sweep's worker processes die with the process that launched the sweep.

joblib's loky workers outlive a killed parent: a worker busy with a training job only notices the closed pipe
when the job ends, so after ``kill`` of a ``--multirun`` sweep its jobs kept training and writing their run
directories (and a resumed sweep then had two processes on one directory). Linux's ``PR_SET_PDEATHSIG`` makes
the kernel send the worker SIGKILL the moment its parent dies, however the parent dies (SIGKILL included). A
killed job leaves its last atomic ``last.ckpt``, from which ``resume=true`` continues.

Registered under ``hydra.callbacks`` in conf/train.yaml. It acts only in a job that runs in a direct child of
the launching process (the joblib launcher's workers); a job of the basic launcher runs in the launching
process itself and a SLURM job on another machine, so neither is touched. No-op off Linux.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when ``parent_pid``, its parent, dies. Returns whether it was set."""
    if not sys.platform.startswith("linux") or os.getppid() != parent_pid:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request: the signal will never come
        os.kill(os.getpid(), signal.SIGKILL)
    return True


class DieWithParent(Callback):
    def __init__(self) -> None:
        self.launcher_pid = os.getpid()  # built in the launching process, pickled into the workers with it

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.getpid() != self.launcher_pid:
            die_with_parent(self.launcher_pid)
