"""GradNorm (Chen et al., ICML 2018): learnable task weights that equalise weighted gradient norms.

G_i = w_i ||grad_W L_i|| on the last shared layer W (``scope``), with the measured norms detached, so only the
weights receive the GradNorm loss sum_i |G_i - mean(G) r_i^alpha|, where r_i = (L_i / L_i(0)) / mean_j(L_j /
L_j(0)) and the targets are detached. The task losses are weighted by the detached w, so they do not push the
weights. After each optimizer step the weights are clamped at ``min_weight`` (which keeps them positive) and
rescaled to sum to K; the rescaling can take a clamped weight slightly below ``min_weight`` again.
"""
from __future__ import annotations

import torch
from torch import nn

from grace_lit.errors import GraceError
from grace_lit.losses.base import Controller, norms, task_names


class GradNorm(Controller):
    def __init__(self, alpha: float, lr: float, min_weight: float, scope: str = "last_shared", n_tasks: int = 2):
        super().__init__(n_tasks)
        if scope not in ("last_shared", "shared"):
            raise GraceError(f"loss.controller.scope={scope!r} is not a GradNorm scope. Fix: "
                             "loss.controller.scope=last_shared (the last backbone layer) or shared (all of it).")
        self.alpha, self.lr, self.min_weight, self.scope = alpha, lr, min_weight, scope
        self.weights = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("initial_losses", torch.zeros(n_tasks))
        self.register_buffer("initialised", torch.tensor(False))
        self.last_norms: torch.Tensor | None = None

    def forward(self, losses: torch.Tensor, gramian: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        current = losses.detach().to(self.initial_losses)
        self.initial_losses.copy_(torch.where(self.initialised, self.initial_losses, current))
        self.initialised.fill_(True)
        if gramian is None:  # no gradients (evaluation): the weights as they are
            return self.weights.detach().to(losses), None
        self.last_norms = norms(gramian).detach()
        weighted = self.weights * self.last_norms.to(self.weights)
        ratios = current / self.initial_losses
        relative = ratios / ratios.mean()
        target = (weighted.mean() * relative ** self.alpha).detach()
        aux = (weighted - target).abs().sum()
        return self.weights.detach().to(losses), aux.to(losses)

    @torch.no_grad()
    def after_step(self) -> None:
        self.weights.clamp_(min=self.min_weight)
        self.weights.mul_(self.n_tasks / self.weights.sum())

    def log_values(self) -> dict[str, torch.Tensor]:
        names = task_names(self.n_tasks)
        out = {f"weight_{n}": w for n, w in zip(names, self.weights.detach())}
        if self.last_norms is not None:
            out.update({f"g_{n}": g for n, g in zip(names, self.last_norms)})
        return out
