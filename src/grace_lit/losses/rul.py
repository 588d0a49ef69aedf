"""Inner RUL losses (the per-sample axis): failure-weighted MSE and plain MSE.

``scale`` divides the error before squaring: 1 keeps the spec's loss in cycles squared; ``max_rul`` measures it
in units of the cap, so its gradients on the backbone compare with the health task's cross-entropy (in cycles
squared they are about a thousand times larger, which holds GABA at its floor on C-MAPSS).
"""
from __future__ import annotations

import torch


class WMSE:
    """w(y) = 1 + clip(1 - y / max_rul, 0, 1): twice the weight at failure, plain MSE weight at max_rul and above."""

    def __init__(self, max_rul: float, scale: float = 1.0):
        self.max_rul, self.scale = max_rul, scale

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + torch.clamp(1.0 - target / self.max_rul, 0.0, 1.0)
        return (weight * ((pred - target) / self.scale).square()).mean()


class MSE:
    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) / self.scale).square().mean()
