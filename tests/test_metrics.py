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


def test_nasa_branches_and_float64_sums():
    """d = +0.5 (late, just): e^(0.05) - 1, not the early branch; d = -390 (very early): e^30 - 1 needs a float64
    sum (float32 keeps about 7 of its digits)."""
    for d, term in ((0.5, math.expm1(0.05)), (-390.0, math.expm1(30.0))):
        score = NASAScore(last_only=False)
        score.update(torch.tensor([20.0 + d]), torch.tensor([20.0]), torch.tensor([True]))
        assert score.compute().item() == pytest.approx(term, rel=1e-12)
    rmse = RMSE(last_only=False)  # 10001^2 = 100020001 is not a float32
    rmse.update(torch.tensor([10001.0]), torch.tensor([0.0]), torch.tensor([True]))
    assert rmse.compute().item() == 10001.0


def test_every_metric_accumulates_over_batches():
    """Two batches, scored as one: last windows only and all windows; 4 health states and 5 windows, so the argmax is
    over the states of each window."""
    logits = torch.eye(4)[[0, 1, 2, 3, 1]] * 3.0
    health = torch.tensor([0, 2, 2, 3, 1])
    pred, true = torch.tensor([10.0, 12.0, 30.0, 5.0, 7.0]), torch.tensor([10.0, 20.0, 25.0, 5.0, 0.0])
    last = torch.tensor([False, True, True, False, True])
    metrics = {"acc_last": Accuracy(True), "acc_all": Accuracy(False), "nasa_last": NASAScore(True),
               "nasa_all": NASAScore(False), "rmse_last": RMSE(True)}
    for rows in (slice(0, 2), slice(2, 5)):
        for name, metric in metrics.items():
            if name.startswith("acc"):
                metric.update(logits[rows], health[rows], last[rows])
            else:
                metric.update(pred[rows], true[rows], last[rows])
    # by hand: correct states at windows 0, 2, 3, 4; d = 0, -8, +5, 0, +7
    assert metrics["acc_last"].compute().item() == pytest.approx(2 / 3)
    assert metrics["acc_all"].compute().item() == pytest.approx(4 / 5)
    late = [math.expm1(5 / 10), math.expm1(7 / 10)]
    assert metrics["nasa_last"].compute().item() == pytest.approx(math.expm1(8 / 13) + sum(late), rel=1e-12)
    assert metrics["nasa_all"].compute().item() == pytest.approx(math.expm1(8 / 13) + sum(late), rel=1e-12)
    assert metrics["rmse_last"].compute().item() == pytest.approx(math.sqrt((64 + 25 + 49) / 3), rel=1e-12)
