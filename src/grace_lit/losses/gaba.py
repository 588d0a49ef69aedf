"""GABA: closed-form inverse gradient-norm task weights, smoothed by an EMA, floored, with a warmup gate."""
from __future__ import annotations

import torch

from grace_lit.losses.base import Controller, norms, task_names


class GABA(Controller):
    """Control law ``update(grad_norms) -> weights`` (spec 001, Algorithm 1).

    Each call counts a step. While ``step_count <= warmup_steps`` (or without norms) the weights are uniform and
    the norms need not be measured. Afterwards, with S = sum(g): raw_i = (S - g_i) / ((K - 1) S); the EMA
    ``beta * ema + (1 - beta) * raw`` is written back detached; weights = clamp(ema, min_weight) renormalised.
    """

    scope = "shared"

    def __init__(self, beta: float = 0.99, warmup_steps: int = 100, min_weight: float = 0.05, n_tasks: int = 2):
        super().__init__(n_tasks)
        self.beta, self.warmup_steps, self.min_weight = beta, warmup_steps, min_weight
        self.register_buffer("ema_weights", torch.full((n_tasks,), 1.0 / n_tasks))
        self.register_buffer("step_count", torch.tensor(0, dtype=torch.long))
        self.register_buffer("_others", 1.0 - torch.eye(n_tasks), persistent=False)
        self.last_norms: torch.Tensor | None = None
        self.last_raw: torch.Tensor | None = None
        self.last_weights = torch.full((n_tasks,), 1.0 / n_tasks)
        self._steps = 0  # host mirror of step_count: the warmup gate needs no device sync

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._steps = int(self.step_count)

    def in_warmup(self) -> bool:
        """Whether the next ``update`` falls inside the warmup gate."""
        return self._steps + 1 <= self.warmup_steps

    def gradient_scope(self) -> str:
        return "none" if self.in_warmup() or not torch.is_grad_enabled() else self.scope

    def update(self, grad_norms: torch.Tensor | None) -> torch.Tensor:
        warm = self.in_warmup()
        self._steps += 1
        self.step_count += 1
        if warm or grad_norms is None:
            weights = torch.full_like(self.ema_weights, 1.0 / self.n_tasks)
        else:
            g = grad_norms.detach().to(self.ema_weights)
            total = g.sum().clamp_min(torch.finfo(g.dtype).tiny)  # both norms 0: stay finite
            others = self._others @ g  # S - g_i summed directly: no cancellation for the small task
            raw = others / ((self.n_tasks - 1) * total)
            self.ema_weights.copy_(self.beta * self.ema_weights + (1.0 - self.beta) * raw)
            floored = self.ema_weights.clamp(min=self.min_weight)
            weights = floored / floored.sum()
            self.last_norms, self.last_raw = g, raw
        self.last_weights = weights
        return weights

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return self.update(None if gramian is None else norms(gramian)), None

    def log_values(self) -> dict[str, torch.Tensor]:
        names = task_names(self.n_tasks)
        out = {f"weight_{n}": w for n, w in zip(names, self.last_weights)}
        out.update({f"ema_{n}": w for n, w in zip(names, self.ema_weights.detach())})
        if self.last_norms is not None:
            out.update({f"g_{n}": g for n, g in zip(names, self.last_norms)})
            out.update({f"raw_{n}": r for n, r in zip(names, self.last_raw)})
        return out
