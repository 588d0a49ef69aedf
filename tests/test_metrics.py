"""RMSE, NASA score and accuracy against hand values."""
from __future__ import annotations

import math

import pytest
import torch

from grace_lit.metrics import RMSE, Accuracy, NASAScore

PRED = torch.tensor([10.0, 50.0, 100.0, 30.0])
TRUE = torch.tensor([20.0, 40.0, 100.0, 0.0])
LAST = torch.tensor([True, False, True, True])


def test_rmse_last_and_all():
    last, full = RMSE(last_only=True), RMSE(last_only=False)
    last.update(PRED, TRUE, LAST)
    full.update(PRED[:2], TRUE[:2], LAST[:2])  # accumulates across batches
    full.update(PRED[2:], TRUE[2:], LAST[2:])
    assert last.compute().item() == pytest.approx(math.sqrt((100 + 0 + 900) / 3))
    assert full.compute().item() == pytest.approx(math.sqrt((100 + 100 + 0 + 900) / 4))


def test_nasa_score_hand_values():
    score = NASAScore(last_only=True)
    score.update(PRED, TRUE, LAST)
    # d = -10 (early): e^(10/13) - 1; d = 0: 0; d = +30 (late): e^3 - 1
    assert score.compute().item() == pytest.approx(math.exp(10 / 13) - 1 + math.exp(3) - 1)


def test_accuracy_on_last_windows():
    acc = Accuracy(last_only=True)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    acc.update(logits, torch.tensor([0, 0, 2, 2]), LAST)
    assert acc.compute().item() == pytest.approx(2 / 3)
