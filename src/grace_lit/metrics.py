"""Evaluation metrics as torchmetrics ``Metric`` classes with sum states.

Never reduced over ranks: under DDP every rank scores the whole evaluation set (the datamodule shards the training
set only), so each rank's numbers are already the full set's; a cross-rank sum would count every window W times.

Each takes a mask ``is_last`` marking the last window of every unit: ``last_only=True`` scores those windows
(the NASA test protocol), ``last_only=False`` scores every window.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric


def nasa_terms(pred: torch.Tensor, target: torch.Tensor, early: float = 13.0, late: float = 10.0) -> torch.Tensor:
    """Per-unit NASA score term, d = pred - true: exp(-d/13) - 1 if d < 0 else exp(d/10) - 1 (Saxena 2008)."""
    d = pred - target
    return torch.where(d < 0, torch.exp(-d / early), torch.exp(d / late)) - 1.0


class _Masked(Metric):
    full_state_update = False

    def __init__(self, last_only: bool):
        super().__init__(sync_on_compute=False)
        self.last_only = last_only
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _select(self, is_last: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[is_last] for t in tensors) if self.last_only else tensors


class RMSE(_Masked):
    def update(self, pred: torch.Tensor, target: torch.Tensor, is_last: torch.Tensor) -> None:
        pred, target = self._select(is_last, pred, target)
        self.total += (pred.double() - target.double()).square().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return torch.sqrt(self.total / self.count)


class NASAScore(_Masked):
    """Sum (not mean) over the scored windows, as published."""

    def update(self, pred: torch.Tensor, target: torch.Tensor, is_last: torch.Tensor) -> None:
        pred, target = self._select(is_last, pred, target)
        self.total += nasa_terms(pred.double(), target.double()).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total


class Accuracy(_Masked):
    def update(self, logits: torch.Tensor, target: torch.Tensor, is_last: torch.Tensor) -> None:
        logits, target = self._select(is_last, logits, target)
        self.total += (logits.argmax(dim=-1) == target).sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count
