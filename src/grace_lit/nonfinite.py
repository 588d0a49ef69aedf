"""A step whose loss or gradient is not finite: stop with the step and the last good checkpoint (``raise``), or
skip its update without a trace in the weights, statistics or controller state (``skip``)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from grace_lit.errors import GraceError

NONFINITE_ACTIONS = ("raise", "skip")


class NonFiniteGuard:
    """``skip`` must decide before the step: one host sync per step. ``raise`` never waits for this step's flag:
    it keeps it on the device and checks the previous step's, whose kernels the device has finished (or nearly)
    while this step's are queued, so the host does not stall it. The caller checks the last flag (``check``)
    before every evaluation, epoch end and checkpoint: a non-finite update never reaches a checkpoint, and the
    error names the step it happened at and the newest of ``checkpoints()``, the files written so far."""

    def __init__(self, action: str, checkpoints: Callable[[], Sequence[str]]):
        if action not in NONFINITE_ACTIONS:
            raise GraceError(f"on_nonfinite={action!r} is not one of {NONFINITE_ACTIONS}.")
        self.action, self.checkpoints = action, checkpoints
        self.skips = 0
        self._pending: tuple[torch.Tensor, torch.Tensor, int, int] | None = None
        self._snapshot: tuple[list[torch.Tensor], dict[str, torch.Tensor]] | None = None

    def open_cycle(self, model: nn.Module, controller: nn.Module) -> None:
        """Before a step's first forward, under ``skip``: what the forward and the controller change besides the
        parameters (BatchNorm statistics, controller EMAs and counters), so a skipped step leaves no NaN there."""
        if self.action == "skip":
            self._snapshot = ([b.clone() for b in model.buffers()],
                              {k: v.clone() for k, v in controller.state_dict().items()})

    def allows(self, losses: torch.Tensor, total_norm: torch.Tensor, step: int, epoch: int) -> bool:
        """Whether to apply this step's update (the same decision on every rank: the inputs are global)."""
        finite = torch.isfinite(losses).all() & torch.isfinite(total_norm)
        if self.action == "skip":
            if bool(finite):
                return True
            self.skips += 1
            return False
        self.check()
        self._pending = (finite, losses.detach(), step, epoch)
        return True

    def undo(self, model: nn.Module, controller: nn.Module) -> None:
        """Restore what ``open_cycle`` saved (after a skipped step)."""
        buffers, state = self._snapshot
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        controller.load_state_dict(state)  # also resets host mirrors (GABA's step count)

    def check(self) -> None:
        """Raise if the last unchecked step (``raise``) was not finite."""
        if self._pending is None:
            return
        finite, losses, step, epoch = self._pending
        if bool(finite):
            self._pending = None
            return  # a non-finite flag stays: a later save (an on-exception checkpoint) raises too
        written = [path for path in self.checkpoints() if path and os.path.isfile(path)]
        last_good = max(written, key=os.path.getmtime, default="")  # the newest: last.ckpt, or best.ckpt
        raise GraceError(
            f"Non-finite loss or gradient at step {step} (epoch {epoch}, losses {losses.cpu().tolist()}). "
            f"Last good checkpoint: {last_good or 'none written yet'}. "
            f"Fix: lower optimizer.lr or check the data; on_nonfinite=skip skips such steps instead.")
