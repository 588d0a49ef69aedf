"""The gradient-manipulation methods (``loss=upgrad|pcgrad|...``, torchjd weightings of the Gramian) against
independent references on small random task gradients: PCGrad and MGDA for two tasks by their closed forms, the
others against torchjd's own Aggregator applied to the whole Jacobian (aggregate(J) = J^T w). Then every
parameter's gradient on a small model against torchjd's own ``mtl_backward`` (the backbone gets the aggregate,
each head its task's gradient; RLW is a loss weighting and weights the heads too), one real step in the module,
and every method (and DWA) through the CLI."""
from __future__ import annotations

import json
from functools import cache, partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchjd.aggregation as tjd
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchjd.autojac import jac_to_grad, mtl_backward

from conftest import composed
from grace_lit.errors import GraceError
from grace_lit.gradients import GradientStep
from grace_lit.losses.jacobian_descent import JacobianDescent, gramian_root
from grace_lit.losses.rul import WMSE
from grace_lit.models.dual_task import DualTaskModel
from test_controllers import reference_gradients, sweep_losses, train_one_step
from test_module import tiny_batch, tiny_model

METHODS = ["upgrad", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "mgda", "dualproj", "rlw"]
GRADIENT_METHODS = [m for m in METHODS if m != "rlw"]  # RLW weights the losses (Lin et al. 2022)
# torchjd's Aggregators with the parameters the conf/loss yamls give (written out here, not read from them)
AGGREGATORS = {
    "upgrad": lambda: tjd.UPGrad(),
    "pcgrad": lambda: tjd.PCGrad(),
    "mgda": lambda: tjd.MGDA(epsilon=1e-3, max_iters=100),
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


# ----------------------------------------------------------------- every parameter's gradient, against mtl_backward
def forward(model: DualTaskModel, rows, stacked: bool = True) -> tuple[torch.Tensor, torch.Tensor | list]:
    """The backbone output and the two task losses (WMSE, CE) of the tiny model on ``rows`` of the tiny set, as the
    module stacks them or (``stacked=False``) as two graphs for mtl_backward."""
    x, rul, health, _, _ = tiny_batch().__getitems__([int(r) for r in rows])
    features = model.backbone(x.double())
    rul_pred, logits = model.heads(features)
    losses = [WMSE(125.0)(rul_pred, rul.double()), F.cross_entropy(logits, health)]
    return features, torch.stack(losses) if stacked else losses


def ours(method: str, grad_mode: str, accumulate: int) -> DualTaskModel:
    """The tiny model's .grad after ``accumulate`` equal batches through the gradient step (one optimizer step's
    worth: each batch adds 1/accumulate of its gradient)."""
    model, jd = tiny_model(), controller(method)
    step = GradientStep(model, jd, grad_mode, accumulate)
    for rows in np.array_split(np.arange(len(tiny_batch())), accumulate):
        features, losses = forward(model, rows)
        torch.manual_seed(0)  # RLW's draw
        step(losses, losses.detach(), features, torch.Tensor.backward)
    return model


def torchjds(method: str, accumulate: int) -> DualTaskModel:
    """The same batches through torchjd's mtl_backward and jac_to_grad with the method's Aggregator: each head gets
    its task's gradient, the backbone the aggregate of the Jacobian on it; summed over the batches."""
    model, aggregator = tiny_model(), AGGREGATORS[method]()
    for rows in np.array_split(np.arange(len(tiny_batch())), accumulate):
        features, losses = forward(model, rows, stacked=False)
        mtl_backward(losses, features, tasks_params=[model.rul_head.parameters(), model.health_head.parameters()],
                     shared_params=model.backbone.parameters(), parallel_chunk_size=1)
        jac_to_grad(list(model.backbone.parameters()), aggregator)
    return model


@pytest.mark.parametrize("method, grad_mode, accumulate", [  # the paths do not depend on the method
    *[(m, "fused", 1) for m in GRADIENT_METHODS], *[(m, "reference", 1) for m in ("upgrad", "mgda", "pcgrad")],
    *[(m, mode, 2) for m in ("upgrad", "mgda") for mode in ("fused", "reference")], ("nash_mtl", "fused", 2)])
def test_every_parameter_gets_what_torchjds_mtl_backward_gives_it(method, grad_mode, accumulate):
    """Same model, batches and aggregator: the backbone's .grad is torchjd's aggregate of the Jacobian on it, each
    head's its task's unweighted gradient (MGDA's weights near their floor would otherwise starve the RUL head);
    with accumulate=2 the mean of the two batches' (stateful Nash-MTL carries its warm start across them)."""
    got, expected = ours(method, grad_mode, accumulate), torchjds(method, accumulate)
    scale = max(q.grad.abs().max() for q in expected.parameters())
    # weights from the Gramian against weights from the Jacobian: rounding (measured: at most 3.3e-16 of the largest
    # gradient, 0 on the heads), but Nash-MTL's iterative solver (ECOS, stopping at an optimality gap of 1e-3), whose
    # path moves with the last bits of its input: 2e-7 on the first batch with cvxpy 1.9.3, 6e-8 warm-started on
    # the second
    atol = (1e-6 if method == "nash_mtl" else 1e-12) * scale
    for (name, p), q in zip(got.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p.grad * accumulate, q.grad, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("grad_mode", ["fused", "reference", "approx"])
def test_the_heads_get_their_own_task_gradient_and_the_backbone_the_weighted_one(grad_mode):
    """Every gradient path, approx included (weights from the Gramian on the backbone output): the backbone gets
    sum_i w_i grad L_i with the weights the controller returned, each head its task's gradient, unweighted."""
    model = ours("mgda", grad_mode, accumulate=1)
    jd = controller("mgda")
    reference = tiny_model()
    features, losses = forward(reference, range(len(tiny_batch())))
    params = list(reference.parameters())
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
    on = [features] if grad_mode == "approx" else list(reference.backbone.parameters())
    jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, on, retain_graph=True)])
                       for loss in losses])
    weights, _ = jd(losses.detach(), jac @ jac.T)
    assert weights.min() < 0.2  # MGDA leans on one task here: weighting a head would show
    shared = {id(p) for p in reference.backbone.parameters()}
    for p, q, g_rul, g_health in zip(model.parameters(), params, *grads):
        w = weights if id(q) in shared else torch.ones(2, dtype=torch.float64)
        expected = sum(wi * g for wi, g in zip(w, (g_rul, g_health)) if g is not None)
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("grad_mode", ["fused", "reference"])
def test_rlw_weights_the_losses_heads_included(grad_mode):
    """RLW (Lin et al. 2022) draws weights for the losses: every parameter, heads included, gets sum_i w_i grad L_i
    with this step's draw; the gradient-manipulation methods aggregate on the backbone only."""
    assert config("rlw").weights_heads and controller("rlw").weights_heads
    assert not any(controller(m).weights_heads for m in GRADIENT_METHODS)
    model = ours("rlw", grad_mode, accumulate=1)
    reference = tiny_model()
    _, losses = forward(reference, range(len(tiny_batch())))
    torch.manual_seed(0)
    weights, _ = controller("rlw")(losses.detach(), torch.eye(2, dtype=torch.float64))
    (weights * losses).sum().backward()
    assert (weights - 0.5).abs().max() > 1e-3  # a draw that is not the plain mean
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method, grad_mode", [("upgrad", "fused"), ("mgda", "reference")])
def test_step_in_the_module(method, grad_mode):
    """One real Lightning step (SGD lr 1, no clip): the backbone moves by -sum_i w_i grad L_i with w the method's
    weights of the reference Gramian on the backbone, each head by minus its own task's gradient."""
    module = train_one_step(controller(method), grad_mode)
    losses, grads, _ = reference_gradients("shared")
    shared = {id(p) for p in module.model.shared_parameters()}
    on_backbone = torch.stack([torch.cat([g.reshape(-1) for g, p in zip(task, module.model.parameters())
                                          if id(p) in shared]) for task in grads])
    weights, _ = controller(method)(losses, on_backbone @ on_backbone.T)
    for j, (p, p0) in enumerate(zip(module.model.parameters(), tiny_model().parameters())):
        w = weights if id(p) in shared else torch.ones(2, dtype=torch.float64)
        torch.testing.assert_close(p.detach(), p0.detach() - (w[0] * grads[0][j] + w[1] * grads[1][j]),
                                   rtol=0, atol=1e-12)


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
