"""The interface every outer controller implements, and the gradient-norm measurement they share.

Per training step the LightningModule asks ``norm_scope()`` which per-task gradient norms the controller needs
this step ("none", "shared" = all backbone parameters, "last_shared" = the last backbone layer, "features" = the
backbone output), measures them, and calls ``forward(losses, norms)``. The controller returns the per-task
weights applied to the task losses and an optional auxiliary loss for its own parameters; the module
differentiates ``(weights * losses).sum() + aux``. ``after_step()`` runs after each optimizer step.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

SCOPES = ("none", "shared", "last_shared", "features")


class Controller(nn.Module):
    """Base class: subclasses set ``scope`` and implement ``forward``; learnable ones also set ``lr``."""

    scope: str = "none"
    lr: float | None = None  # learning rate of the controller's own parameter group (no weight decay)
    trains_health: bool = True

    def __init__(self, n_tasks: int = 2):
        super().__init__()
        self.n_tasks = n_tasks

    def norm_scope(self) -> str:
        """Where the next call needs per-task gradient norms measured ("none" skips the measurement)."""
        return self.scope

    def forward(self, losses: torch.Tensor, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after ``optimizer.step()`` (GradNorm renormalises its weights here)."""

    def log_values(self) -> dict[str, torch.Tensor]:
        """Detached tensors describing the last step, for the controller log (names: weight_rul, g_rul, ...)."""
        return {}


def task_names(n_tasks: int) -> list[str]:
    return ["rul", "health"] if n_tasks == 2 else [f"task{i}" for i in range(n_tasks)]


def grad_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """L2 norm of a list of gradients treated as one vector (None = parameter untouched by this loss)."""
    present = [g for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))


def task_grads(losses: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor | None, ...]]:
    """Per-task gradients of ``losses`` w.r.t. ``inputs`` (parameters or activations), graph retained."""
    return [torch.autograd.grad(loss, list(inputs), retain_graph=True, allow_unused=True) for loss in losses]
