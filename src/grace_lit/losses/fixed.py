"""Constant task weights (the spec's baseline cell)."""
from __future__ import annotations

import torch

from grace_lit.losses.base import Controller, task_names


class FixedWeights(Controller):
    def __init__(self, weights: list[float]):
        super().__init__(len(weights))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return self.weights.to(losses), None

    def log_values(self) -> dict[str, torch.Tensor]:
        return {f"weight_{n}": w for n, w in zip(task_names(self.n_tasks), self.weights)}
