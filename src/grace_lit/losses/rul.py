"""Inner RUL losses (the per-sample axis): failure-weighted MSE and plain MSE."""
from __future__ import annotations

import torch


class WMSE:
    """w(y) = 1 + clip(1 - y / max_rul, 0, 1): twice the weight at failure, plain MSE weight at max_rul and above."""

    def __init__(self, max_rul: float):
        self.max_rul = max_rul

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + torch.clamp(1.0 - target / self.max_rul, 0.0, 1.0)
        return (weight * (pred - target).square()).mean()


class MSE:
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).square().mean()
