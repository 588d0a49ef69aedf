"""The gradient-manipulation methods (``loss=upgrad|pcgrad|...``, torchjd weightings of the Gramian) against
independent references on small random task gradients: PCGrad and MGDA for two tasks by their closed forms, the
others against torchjd's own Aggregator applied to the whole Jacobian (aggregate(J) = J^T w). Then one real step
in the module, and every method (and DWA) through the CLI."""
from __future__ import annotations

import json
from functools import cache, partial

import pandas as pd
import pytest
import torch
import torchjd.aggregation as tjd
from hydra.utils import instantiate
from omegaconf import DictConfig

from conftest import composed
from grace_lit.errors import GraceError
from grace_lit.losses.jacobian_descent import JacobianDescent, gramian_root
from test_controllers import assert_model_moved_by, reference_gradients, sweep_losses, train_one_step

METHODS = ["upgrad", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "mgda", "dualproj", "rlw"]
# torchjd's Aggregators with the parameters the conf/loss yamls give (written out here, not read from them)
AGGREGATORS = {
    "upgrad": lambda: tjd.UPGrad(),
    "cagrad": lambda: tjd.CAGrad(c=0.4, norm_eps=1e-4),
    "imtl_g": lambda: tjd.IMTLG(),
    "nash_mtl": lambda: tjd.NashMTL(n_tasks=2, max_norm=1.0, update_weights_every=1, optim_niter=20),
    "aligned_mtl": lambda: tjd.AlignedMTL(scale_mode="min"),
    "dualproj": lambda: tjd.DualProj(),
    "rlw": lambda: tjd.Random(),
}


@cache
def config(method: str) -> DictConfig:
    return composed([f"loss={method}"]).loss.controller


def controller(method: str) -> JacobianDescent:
    """A fresh one, built the way the CLI builds it, from ``conf/loss/<method>.yaml``."""
    return instantiate(config(method))


def task_gradients(seed: int, conflict: bool) -> torch.Tensor:
    """A 2 x 9 Jacobian in float64: two task gradients of different norms, at an obtuse angle or an acute one."""
    gen = torch.Generator().manual_seed(seed)
    g1 = torch.randn(9, generator=gen, dtype=torch.float64) * 3.0
    g2 = torch.randn(9, generator=gen, dtype=torch.float64)
    if (g1 @ g2 < 0) != conflict:
        g2 = -g2
    return torch.stack([g1, g2])


CASES = [(seed, conflict) for seed in range(2) for conflict in (True, False)]


@pytest.mark.parametrize("seed, conflict", CASES)
def test_pcgrad_closed_form(seed, conflict):
    J = task_gradients(seed, conflict)
    g1, g2 = J
    dot = g1 @ g2
    if dot < 0:  # Yu et al. 2020: each gradient loses its component along the other, then the two are summed
        update = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    else:
        update = g1 + g2
    weights, aux = controller("pcgrad")(torch.ones(2), J @ J.T)
    assert aux is None
    torch.testing.assert_close(J.T @ weights, update, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed, conflict", CASES)
def test_mgda_closed_form(seed, conflict):
    """Two tasks: the minimum-norm point of the segment [g2, g1] is a g1 + (1 - a) g2 with
    a = clip(<g2, g2 - g1> / |g1 - g2|^2, 0, 1)."""
    J = task_gradients(seed, conflict)
    g1, g2 = J
    a = ((g2 @ (g2 - g1)) / ((g1 - g2) @ (g1 - g2))).clamp(0.0, 1.0)
    weights, _ = controller("mgda")(torch.ones(2), J @ J.T)
    torch.testing.assert_close(weights, torch.stack([a, 1 - a]), rtol=1e-9, atol=1e-9)
    if conflict:  # the obtuse case lands strictly inside: the update is orthogonal to g1 - g2
        assert 0 < a < 1 and abs(float((J.T @ weights) @ (g1 - g2))) < 1e-9


@pytest.mark.parametrize("method", sorted(AGGREGATORS))
@pytest.mark.parametrize("seed, conflict", CASES)
def test_weights_reproduce_torchjds_aggregation_of_the_jacobian(method, seed, conflict):
    """The controller sees only the Gramian; torchjd's Aggregator sees the Jacobian itself. Stateful Nash-MTL is fed
    three Jacobians in a row (its warm start carries over); Random draws from the same seed on both sides."""
    ours, theirs = controller(method), AGGREGATORS[method]()
    for step in range(3 if method == "nash_mtl" else 1):
        J = task_gradients(seed + 10 * step, conflict)
        torch.manual_seed(step)
        weights, _ = ours(torch.ones(2), J @ J.T)
        torch.manual_seed(step)
        expected = theirs(J)
        torch.testing.assert_close(J.T @ weights, expected, rtol=1e-6, atol=1e-8)
    assert not weights.requires_grad
    assert set(ours.log_values()) == {"weight_rul", "weight_health"}
    torch.testing.assert_close(ours.log_values()["weight_rul"], weights[0])


def test_upgrad_removes_the_conflict():
    """UPGrad's defining property: the update does not increase either loss to first order (<g_i, J^T w> >= 0),
    where the plain sum would."""
    J = task_gradients(0, conflict=True)
    weights, _ = controller("upgrad")(torch.ones(2), J @ J.T)
    assert (J @ J.sum(0)).min() < 0  # the sum conflicts with one task
    assert (J @ (J.T @ weights)).min() > -1e-8


@pytest.mark.parametrize("gramian", [torch.tensor([[9.0, -2.0], [-2.0, 1.0]]),
                                     torch.tensor([[4.0, 2.0], [2.0, 1.0]]),  # parallel gradients: singular
                                     torch.zeros(2, 2)])
def test_gramian_root(gramian):
    M = gramian_root(gramian.double())
    torch.testing.assert_close(M @ M.T, gramian.double(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_a_non_finite_gramian_gives_nan_weights_not_a_solver_crash(method):
    """A NaN loss or gradient reaches the controller before the non-finite guard: the weights must come out NaN
    (the guard then stops or skips the step), and the next finite Gramian gets ordinary weights."""
    ours = controller(method)
    weights, _ = ours(torch.ones(2), torch.full((2, 2), float("nan"), dtype=torch.float64))
    assert weights.isnan().all()
    J = task_gradients(0, conflict=True)
    assert ours(torch.ones(2), J @ J.T)[0].isfinite().all()


def test_a_missing_solver_is_one_clear_message(monkeypatch):
    """torchjd checks cvxpy at construction; the controller turns that into one message with the install line."""
    import torchjd._mixins
    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else object())
    with pytest.raises(GraceError, match=r"pip install -e '\.\[jd-solvers\]'"):
        JacobianDescent(partial(tjd.CAGradWeighting, c=0.4))


@pytest.mark.parametrize("method, grad_mode", [("upgrad", "fused"), ("mgda", "reference")])
def test_step_in_the_module(method, grad_mode):
    """One real Lightning step (SGD lr 1, no clip): every parameter, heads included, moves by -sum_i w_i grad L_i
    with w the method's weights of the reference Gramian on the backbone."""
    module = train_one_step(controller(method), grad_mode)
    losses, grads, _ = reference_gradients("shared")
    shared = {id(p) for p in module.model.shared_parameters()}
    on_backbone = torch.stack([torch.cat([g.reshape(-1) for g, p in zip(task, module.model.parameters())
                                          if id(p) in shared]) for task in grads])
    weights, _ = controller(method)(losses, on_backbone @ on_backbone.T)
    assert_model_moved_by(module, grads, weights)


def test_every_method_through_the_cli(tmp_path, data_cache):
    losses = [*METHODS, "dwa"]
    runs = sweep_losses(losses, 2, tmp_path, data_cache)
    for loss, run_dir in runs.items():
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed", loss
        log = pd.read_csv(run_dir / "controller_log.csv")
        assert len(log) == 1 and {"weight_rul", "weight_health"} <= set(log.columns)
        assert log[["weight_rul", "weight_health"]].notna().all().all(), loss
        if loss != "dwa":  # the Gramian on the backbone is measured every step
            assert log["cos_rul_health"].between(-1, 1).all(), loss
    # DWA's later epochs: tests/test_dwa.py
