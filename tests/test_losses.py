"""WMSE and GABA against hand-computed values (spec 000 and 001)."""
from __future__ import annotations

import pytest
import torch

from grace_lit.losses.gaba import GABA
from grace_lit.losses.rul import MSE, WMSE


def test_wmse_hand_values():
    # spec 000's demo batch: w(20, 80, 5, 100) = (1.84, 1.36, 1.96, 1.20)
    target = torch.tensor([20.0, 80.0, 5.0, 100.0])
    pred = torch.tensor([25.0, 70.0, 5.0, 130.0])
    expected = (1.84 * 25 + 1.36 * 100 + 1.96 * 0 + 1.20 * 900) / 4
    assert WMSE(max_rul=125)(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # above max_rul the weight is 1: plain MSE
    high = torch.tensor([130.0, 200.0])
    assert WMSE(125)(high + 2, high).item() == pytest.approx(4.0) == MSE()(high + 2, high).item()
    # scale=max_rul: the same errors in units of the cap, (25 / 125)^2 = 0.04 times spec 000's value
    assert WMSE(125, scale=125)(pred, target).item() == pytest.approx(expected / 125**2, rel=1e-6)
    assert MSE(scale=2)(high + 2, high).item() == pytest.approx(1.0)


def test_gaba_multistep_trace():
    """Warmup (2 steps), closed form, EMA and floor, with beta = 0.5 so the floor is reached in a few steps."""
    gaba = GABA(beta=0.5, warmup_steps=2, min_weight=0.05)
    assert gaba.update(None).tolist() == [0.5, 0.5]
    assert gaba.update(torch.tensor([7.0, 3.0])).tolist() == [0.5, 0.5]  # norms ignored in warmup
    ema = 0.5
    for g_rul, g_h in [(250.0, 0.2), (300.0, 0.22), (350.0, 0.24), (400.0, 0.25)]:
        raw_rul = g_h / (g_rul + g_h)  # (S - g_rul) / ((K - 1) S) for K = 2
        ema = 0.5 * ema + 0.5 * raw_rul
        lo = max(ema, 0.05)
        expected = [lo / (lo + 1 - ema), (1 - ema) / (lo + 1 - ema)]
        weights = gaba.update(torch.tensor([g_rul, g_h]))
        assert weights.tolist() == pytest.approx(expected, rel=1e-6)
        assert gaba.ema_weights.tolist() == pytest.approx([ema, 1 - ema], rel=1e-6)
        assert gaba.last_raw.tolist() == pytest.approx([raw_rul, 1 - raw_rul], rel=1e-6)
    # by hand: EMA of the RUL weight 0.2504, 0.1256, 0.0631 (above the floor), then 0.0319 (floored to 0.05)
    assert ema == pytest.approx(0.03188, abs=1e-5)
    assert weights[0].item() == pytest.approx(0.05 / (0.05 + 1 - ema), rel=1e-6)
    assert int(gaba.step_count) == 6


def test_gaba_spec_demo_floor():
    """Spec 000's worked step: g = (41.5, 0.082), EMA converged -> lambda* = (0.0477, 0.9523)."""
    gaba = GABA(beta=0.0, warmup_steps=0, min_weight=0.05)
    w = gaba.update(torch.tensor([41.5, 0.082]))
    assert w.tolist() == pytest.approx([0.0477, 0.9523], abs=5e-5)


def test_gaba_state_dict_round_trip():
    gaba = GABA(beta=0.9, warmup_steps=1, min_weight=0.05)
    for g in ([1.0, 1.0], [10.0, 1.0], [30.0, 2.0]):
        gaba.update(torch.tensor(g))
    state = gaba.state_dict()
    assert set(state) == {"ema_weights", "step_count"}
    clone = GABA(beta=0.9, warmup_steps=1, min_weight=0.05)
    clone.load_state_dict(state)
    assert int(clone.step_count) == 3 and not clone.in_warmup()
    nxt = torch.tensor([5.0, 1.0])
    assert clone.update(nxt).tolist() == gaba.update(nxt).tolist()


def test_gaba_asks_for_no_gradients_under_no_grad():
    gaba = GABA(warmup_steps=0)
    with torch.no_grad():
        assert gaba.gradient_scope() == "none"
    assert gaba.gradient_scope() == "shared"
