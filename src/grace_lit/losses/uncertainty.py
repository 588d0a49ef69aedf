"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

total = sum_i c_i exp(-s_i) L_i + s_i / 2 with learnable log-variances s_i = log sigma_i^2 (initialised to 0),
c = 1/2 for the regression task (Gaussian likelihood) and 1 for the classification task (softmax likelihood).
The weights c_i exp(-s_i) are returned undetached, so s_i receives
d total / d s_i = -c_i exp(-s_i) L_i + 1/2 through them, and aux = sum_i s_i / 2.
"""
from __future__ import annotations

import torch
from torch import nn

from grace_lit.losses.base import Controller, task_names


class Uncertainty(Controller):
    def __init__(self, scales: list[float], lr: float):
        super().__init__(len(scales))
        self.lr = lr
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))
        self.log_vars = nn.Parameter(torch.zeros(self.n_tasks))

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.scales * torch.exp(-self.log_vars)
        return weights.to(losses), 0.5 * self.log_vars.sum().to(losses)

    def log_values(self) -> dict[str, torch.Tensor]:
        names = task_names(self.n_tasks)
        weights = (self.scales * torch.exp(-self.log_vars)).detach()
        return {**{f"weight_{n}": w for n, w in zip(names, weights)},
                **{f"logvar_{n}": s for n, s in zip(names, self.log_vars.detach())}}
