"""Dual-task model: one shared backbone, an RUL regression head and a health-state classification head."""
from __future__ import annotations

import torch
from torch import nn

from grace_lit.models.backbone import Backbone


def _head(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_features))


class DualTaskModel(nn.Module):
    """``rul_scale``: the RUL head predicts in units of ``rul_scale`` cycles. The loss stays in cycles (the
    spec's scale, which GABA's gradient norms see); only the parameterisation changes, so Adam's ~lr-sized
    steps move the prediction by ~lr * rul_scale cycles instead of ~lr cycles."""

    def __init__(self, backbone: Backbone, head_hidden: int, num_health_states: int, dropout: float,
                 rul_scale: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.rul_scale = rul_scale
        self.rul_head = _head(backbone.out_features, head_hidden, 1, dropout)
        self.health_head = _head(backbone.out_features, head_hidden, num_health_states, dropout)

    def heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rul_head(z).squeeze(-1) * self.rul_scale, self.health_head(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(RUL prediction (batch,), health logits (batch, states))."""
        return self.heads(self.backbone(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters only: where the task gradients meet (heads would bias the norms, spec 001)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer, where GradNorm measures its norms by default."""
        last = [m for m in self.backbone.modules() if isinstance(m, nn.Linear)][-1]
        return list(last.parameters())
