"""The interface every outer controller implements, shaped like torchjd's ``Weighting``.

Per training step the gradient step (``grace_lit.gradients``) asks ``gradient_scope()`` where the controller needs
the task gradients measured ("none", "shared" = all backbone parameters, "last_shared" = the last backbone
layer), builds the K x K Gramian G_ij = <grad L_i, grad L_j> there, and calls ``forward(losses, gramian)``. The
controller returns the per-task weights applied to the task losses and an optional auxiliary loss for its own
parameters; the update is sum_i w_i grad L_i (+ the gradient of aux on the controller's parameters). A loss
weighting (``weights_heads = True``: GABA, AMNL, GradNorm, Uncertainty, DWA, RLW, ...) applies it to every
parameter, heads included; a gradient aggregation (``weights_heads = False``: PCGrad, MGDA, UPGrad and the other
torchjd methods, as their papers and torchjd's ``mtl_backward`` define them) applies it to the shared (backbone)
parameters only, and each head gets its own task's unweighted gradient.
``after_step()`` runs after each optimizer step. Gradient norms are the Gramian's diagonal, the conflict between
tasks its off-diagonal: two tasks' Gramian is three dot products.
"""
from __future__ import annotations

import torch
from torch import nn

class Controller(nn.Module):
    """Base class: subclasses set ``scope`` and implement ``forward``; learnable ones also set ``lr``."""

    scope: str = "none"
    lr: float | None = None  # learning rate of the controller's own parameter group (no weight decay)
    trains_health: bool = True
    # True: the weights multiply the task losses, so every parameter's task gradient is weighted (loss weighting).
    # False: they combine the task gradients on the shared parameters only; each head gets its own task's gradient
    # unweighted (gradient aggregation). Either way the weights are the ones forward() returns.
    weights_heads: bool = True

    def __init__(self, n_tasks: int = 2):
        super().__init__()
        self.n_tasks = n_tasks

    def gradient_scope(self) -> str:
        """Where the next call needs the task gradients' Gramian ("none" skips the measurement)."""
        return self.scope

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after ``optimizer.step()`` (GradNorm renormalises its weights here)."""

    def before_epoch(self) -> None:
        """Hook at the start of every training epoch (DWA turns the last epoch's mean losses into weights here)."""

    def log_values(self) -> dict[str, torch.Tensor]:
        """Detached tensors describing the last step, for the controller log (names: weight_rul, g_rul, ...)."""
        return {}


def task_names(n_tasks: int) -> list[str]:
    return ["rul", "health"] if n_tasks == 2 else [f"task{i}" for i in range(n_tasks)]


def norms(gramian: torch.Tensor) -> torch.Tensor:
    """Per-task gradient norms: the square roots of the Gramian's diagonal."""
    return gramian.diagonal().sqrt()


def cosine(gramian: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Cosine between tasks i and j's gradients (0 when either gradient is zero)."""
    scale = (gramian[i, i] * gramian[j, j]).sqrt().clamp_min(torch.finfo(gramian.dtype).tiny)
    return gramian[i, j] / scale
