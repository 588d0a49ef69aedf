"""LR warmup and adaptive weight decay against the spec's tables; EMA swap exactness."""
from __future__ import annotations

import pytest
import torch

from grace_lit.callbacks.ema import EMAWeights
from grace_lit.callbacks.lr_warmup import warmup_factor
from grace_lit.callbacks.weight_decay import WeightDecaySchedule, decay_factor
from grace_lit.errors import GraceError


@pytest.mark.parametrize("epoch, lr", [(0, 1.0e-4), (5, 5.5e-4), (9, 9.1e-4), (10, 1.0e-3), (50, 1.0e-3)])
def test_warmup_matches_spec_004_table(epoch, lr):
    assert 1e-3 * warmup_factor(epoch, epochs=10, start_factor=0.1) == pytest.approx(lr)


@pytest.mark.parametrize("epoch, wd", [(0, 1e-4), (99, 1e-4), (100, 5e-5), (199, 5e-5), (200, 1e-5), (499, 1e-5)])
def test_weight_decay_schedule(epoch, wd):
    assert 1e-4 * decay_factor(epoch, [100, 200], [0.5, 0.1]) == pytest.approx(wd)


@pytest.mark.parametrize("milestones, factors", [([200, 100], [0.5, 0.1]), ([100], [0.5, 0.1])])
def test_weight_decay_schedule_rejects_bad_milestones(milestones, factors):
    with pytest.raises(GraceError, match=r"callbacks\.weight_decay\.milestones=.*Fix"):
        WeightDecaySchedule(milestones, factors)


class _Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(3, 2)


def test_ema_update_and_exact_swap():
    torch.manual_seed(0)
    holder = _Holder()
    ema = EMAWeights(decay=0.9)
    ema.shadow = [p.detach().clone() for p in holder.model.parameters()]
    start = [p.detach().clone() for p in holder.model.parameters()]
    with torch.no_grad():
        for p in holder.model.parameters():
            p.add_(1.0)
    ema._seen_step = -1

    class _T:  # the callback only reads global_step
        global_step = 1
    ema.on_train_batch_end(_T(), holder)
    for s, p0 in zip(ema.shadow, start):  # shadow = 0.9 * old + 0.1 * (old + 1)
        torch.testing.assert_close(s, p0 + 0.1, rtol=0, atol=1e-6)
    live = [p.detach().clone() for p in holder.model.parameters()]
    ema.swap_in(holder)
    for p, s in zip(holder.model.parameters(), ema.shadow):
        assert torch.equal(p, s)
    ema.swap_out(holder)
    for p, l in zip(holder.model.parameters(), live):
        assert torch.equal(p, l)  # bit for bit


def test_restored_shadow_takes_the_parameters_dtype():
    """A checkpoint's shadow (here float64) is cast to the live parameters' dtype when training starts, so the
    per-step update mixes like with like."""
    holder = _Holder()
    ema = EMAWeights(decay=0.9)
    saved = [p.detach().double() + 1 for p in holder.model.parameters()]
    ema.load_state_dict({"decay": 0.9, "shadow": saved})
    ema.on_fit_start(None, holder)
    for s, p, want in zip(ema.shadow, holder.model.parameters(), saved):
        assert s.dtype == p.dtype == torch.float32
        torch.testing.assert_close(s, want.float())
