"""AMNL (spec 003): each task loss divided by its own detached EMA, then equal weights.

The EMA starts at the first observed loss and is updated with the current loss before normalising, so
weights_i = w_i / max(ema_i, floor) multiply the raw losses.
"""
from __future__ import annotations

import torch

from grace_lit.losses.base import Controller, task_names


class AMNL(Controller):
    def __init__(self, decay: float, floor: float, weights: list[float]):
        super().__init__(len(weights))
        self.decay, self.floor = decay, floor
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("loss_ema", torch.zeros(self.n_tasks))
        self.register_buffer("initialised", torch.tensor(False))
        self.last_weights = self.task_weights.clone()

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        current = losses.detach().to(self.loss_ema)
        blended = self.decay * self.loss_ema + (1.0 - self.decay) * current
        self.loss_ema.copy_(torch.where(self.initialised, blended, current))
        self.initialised.fill_(True)
        self.last_weights = self.task_weights / self.loss_ema.clamp(min=self.floor)
        return self.last_weights.to(losses), None

    def log_values(self) -> dict[str, torch.Tensor]:
        names = task_names(self.n_tasks)
        return {**{f"weight_{n}": w for n, w in zip(names, self.last_weights)},
                **{f"loss_ema_{n}": e for n, e in zip(names, self.loss_ema)}}
