"""DWA, dynamic weight average (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention", Eq. 7)."""
from __future__ import annotations

import torch

from grace_lit.losses.base import Controller, task_names


class DWA(Controller):
    """w_k(t) = K softmax_k(r(t-1) / T), r_k(t-1) = L_k(t-1) / L_k(t-2), with L_k(t) task k's mean training loss
    over epoch t; w = 1 for the first two epochs.

    The losses of every step add up in buffers; ``before_epoch`` turns the finished epoch's sums into its mean and
    fixes the weights for the epoch that begins. Everything lives in buffers, so a checkpoint carries the history
    and a resumed run continues it. At the start of an epoch rather than its end: wherever between two epochs
    Lightning writes the checkpoint, the finished epoch's sums are in it and are rolled over once.
    """

    def __init__(self, temperature: float = 2.0, n_tasks: int = 2):
        super().__init__(n_tasks)
        self.temperature = temperature
        self.register_buffer("loss_sum", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("epoch_means", torch.zeros(2, n_tasks, dtype=torch.float64))  # L(t-2), L(t-1)
        self.register_buffer("epochs_seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("weights", torch.ones(n_tasks))

    def before_epoch(self) -> None:
        if int(self.steps) == 0:  # the first epoch, or no step was taken
            return
        mean = self.loss_sum / self.steps
        self.epoch_means.copy_(torch.stack([self.epoch_means[1], mean]))
        self.epochs_seen += 1
        self.loss_sum.zero_()
        self.steps.zero_()
        if int(self.epochs_seen) >= 2:
            ratio = self.epoch_means[1] / self.epoch_means[0].clamp_min(torch.finfo(mean.dtype).tiny)
            self.weights.copy_(self.n_tasks * torch.softmax(ratio / self.temperature, dim=0))

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        self.loss_sum += losses.detach().to(self.loss_sum)
        self.steps += 1
        return self.weights.to(losses), None

    def log_values(self) -> dict[str, torch.Tensor]:
        return {f"weight_{n}": w for n, w in zip(task_names(self.n_tasks), self.weights)}
