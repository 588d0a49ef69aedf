"""The baseline controllers against hand-computed values; their parameters reach the optimizer (pitfall 2)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import partial

import lightning as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conftest import REPO, cli_env, composed
from grace_lit.data.windows import batch_as_is
from grace_lit.errors import GraceError
from grace_lit.losses.amnl import AMNL
from grace_lit.losses.base import Controller
from grace_lit.losses.fixed import FixedWeights
from grace_lit.losses.gradnorm import GradNorm
from grace_lit.losses.rul import WMSE
from grace_lit.losses.single_task import SingleTask
from grace_lit.losses.uncertainty import Uncertainty
from grace_lit.module import GraceModule
from test_module import tiny_batch, tiny_model

LOSSES = ["gaba", "amnl", "gradnorm", "uncertainty", "fixed", "single_task"]


# ----------------------------------------------------------------- the control laws, by hand
def test_amnl_trace():
    amnl = AMNL(decay=0.9, floor=1e-6, weights=[0.5, 0.5])
    steps = [(100.0, 1.0), (80.0, 0.9), (60.0, 0.8)]
    ema = list(steps[0])  # initialised to the first observed losses
    for i, (l_rul, l_h) in enumerate(steps):
        if i:
            ema = [0.9 * ema[0] + 0.1 * l_rul, 0.9 * ema[1] + 0.1 * l_h]
        weights, aux = amnl(torch.tensor([l_rul, l_h]), None)
        assert aux is None
        assert weights.tolist() == pytest.approx([0.5 / ema[0], 0.5 / ema[1]], rel=1e-6)
    assert ema == pytest.approx([94.2, 0.971])
    assert amnl(torch.tensor([0.0, 0.0]), None)[0][0].item() == pytest.approx(0.5 / (0.9 * 94.2), rel=1e-6)
    tiny = AMNL(decay=0.9, floor=1e-6, weights=[0.5, 0.5])
    assert tiny(torch.tensor([1e-9, 2.0]), None)[0].tolist() == pytest.approx([0.5 / 1e-6, 0.25])  # the floor


def test_uncertainty_gradient_on_log_variances():
    unc = Uncertainty(scales=[0.5, 1.0], lr=1e-3)
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([0.3, -0.2]))
    losses = torch.tensor([10.0, 2.0])
    weights, aux = unc(losses, None)
    total = (weights * losses).sum() + aux
    assert total.item() == pytest.approx(0.5 * math.exp(-0.3) * 10 + math.exp(0.2) * 2 + (0.3 - 0.2) / 2, rel=1e-6)
    total.backward()
    expected = [-0.5 * math.exp(-0.3) * 10 + 0.5, -math.exp(0.2) * 2 + 0.5]  # -c_i exp(-s_i) L_i + 1/2
    assert unc.log_vars.grad.tolist() == pytest.approx(expected, rel=1e-6)


def test_gradnorm_update_and_renormalisation():
    gn = GradNorm(alpha=1.5, lr=0.1, min_weight=1e-3)
    opt = torch.optim.SGD(gn.parameters(), lr=0.1)
    w = [1.0, 1.0]
    first = None
    for losses, norms in [((10.0, 2.0), (4.0, 1.0)), ((5.0, 1.5), (3.0, 1.0)), ((4.0, 1.0), (2.0, 2.0))]:
        first = first or losses
        # by hand: G_i = w_i g_i, target_i = mean(G) r_i^1.5, d|G_i - t_i|/dw_i = sign(G_i - t_i) g_i
        ratios = [losses[i] / first[i] for i in range(2)]
        rel = [r / (sum(ratios) / 2) for r in ratios]
        G = [w[i] * norms[i] for i in range(2)]
        target = [sum(G) / 2 * rel[i] ** 1.5 for i in range(2)]
        grad = [math.copysign(norms[i], G[i] - target[i]) for i in range(2)]
        stepped = [w[i] - 0.1 * grad[i] for i in range(2)]
        w = [2 * s / sum(stepped) for s in stepped]

        weights, aux = gn(torch.tensor(losses), torch.diag(torch.tensor(norms) ** 2))  # the norms' Gramian
        assert not weights.requires_grad  # the task losses do not push the weights
        assert aux.item() == pytest.approx(sum(abs(G[i] - target[i]) for i in range(2)), rel=1e-6)
        opt.zero_grad()
        aux.backward()
        assert gn.weights.grad.tolist() == pytest.approx(grad, rel=1e-6)
        opt.step()
        gn.after_step()
        assert gn.weights.tolist() == pytest.approx(w, rel=1e-6)
        assert gn.weights.sum().item() == pytest.approx(2.0)
    assert w != pytest.approx([1.0, 1.0])  # the trace above did move the weights


def test_gradnorm_keeps_weights_positive():
    gn = GradNorm(alpha=1.5, lr=1.0, min_weight=0.01)
    with torch.no_grad():
        gn.weights.copy_(torch.tensor([-0.5, 2.5]))  # as if a large step overshot
    gn.after_step()
    assert gn.weights.tolist() == pytest.approx([2 * 0.01 / 2.51, 2 * 2.5 / 2.51])


def test_gradnorm_rejects_an_unknown_scope():
    with pytest.raises(GraceError, match="loss.controller.scope=last_shared"):
        GradNorm(alpha=1.5, lr=0.025, min_weight=1e-3, scope="features")


def test_fixed_and_single_task():
    assert FixedWeights([0.3, 0.7])(torch.tensor([5.0, 1.0]), None)[0].tolist() == pytest.approx([0.3, 0.7])
    single = SingleTask()
    assert single(torch.tensor([5.0, 1.0]), None)[0].tolist() == [1.0, 0.0] and not single.trains_health


@pytest.mark.parametrize("make, names", [
    (lambda: AMNL(0.9, 1e-6, [0.5, 0.5]), {"weight_rul", "weight_health", "loss_ema_rul", "loss_ema_health"}),
    (lambda: Uncertainty([0.5, 1.0], 1e-3), {"weight_rul", "weight_health", "logvar_rul", "logvar_health"}),
    (lambda: GradNorm(1.5, 0.025, 1e-3), {"weight_rul", "weight_health", "g_rul", "g_health"}),
    (lambda: FixedWeights([0.5, 0.5]), {"weight_rul", "weight_health"}),
])
def test_log_values(make, names):
    controller = make()
    weights, _ = controller(torch.tensor([4.0, 1.0]), torch.diag(torch.tensor([4.0, 1.0])))
    values = controller.log_values()
    assert set(values) == names
    torch.testing.assert_close(torch.stack([values["weight_rul"], values["weight_health"]]), weights.detach())
    assert not any(v.requires_grad for v in values.values())


@pytest.mark.parametrize("make", [lambda: AMNL(0.9, 1e-6, [0.5, 0.5]), lambda: Uncertainty([0.5, 1.0], 1e-3),
                                  lambda: GradNorm(1.5, 0.025, 1e-3), lambda: FixedWeights([0.5, 0.5])])
def test_state_dict_round_trip(make):
    a = make()
    opt = torch.optim.SGD(a.parameters(), lr=0.1) if list(a.parameters()) else None
    for losses in ([4.0, 1.0], [3.0, 0.5]):
        weights, aux = a(torch.tensor(losses), torch.diag(torch.tensor([4.0, 1.0])))
        if opt:
            opt.zero_grad()
            ((weights * torch.tensor(losses)).sum() + (aux if aux is not None else 0)).backward()
            opt.step()
            a.after_step()
    b = make()
    b.load_state_dict(a.state_dict())
    nxt = (torch.tensor([2.0, 0.4]), torch.eye(2))
    (wa, aux_a), (wb, aux_b) = a(*nxt), b(*nxt)  # GradNorm's aux depends on L(0): it must survive too
    torch.testing.assert_close(wa, wb)
    if aux_a is not None:
        torch.testing.assert_close(aux_a, aux_b)


# ----------------------------------------------------------------- inside GraceModule (pitfall 2)
@pytest.mark.parametrize("controller, own, lr", [(Uncertainty([0.5, 1.0], lr=0.01), "log_vars", 0.01),
                                                 (GradNorm(1.5, lr=0.025, min_weight=1e-3), "weights", 0.025)])
def test_learnable_parameters_get_their_own_group(controller, own, lr):
    module = GraceModule(tiny_model(), controller, WMSE(125.0), partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4),
                         grad_clip=1.0)
    groups = module.configure_optimizers().param_groups
    assert len(groups) == 2 and groups[1]["params"] == [getattr(controller, own)]
    assert groups[1]["lr"] == lr and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1e-4


def train_one_step(controller: Controller, grad_mode: str) -> GraceModule:
    """One real Lightning step in float64; SGD(lr=1) on the model and no clipping, so the model moves by exactly
    minus the gradient the module assembled, and the controller's group by minus its lr times its gradient."""
    module = GraceModule(tiny_model(), controller, WMSE(125.0), partial(torch.optim.SGD, lr=1.0), grad_clip=1e12,
                         grad_mode=grad_mode)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    data = tiny_batch()
    trainer.fit(module, DataLoader(data, batch_size=len(data), collate_fn=batch_as_is))
    return module


def reference_gradients(scope: str) -> tuple[torch.Tensor, list[list[torch.Tensor]], torch.Tensor]:
    """Independently of the module: the task losses, each task's gradient per parameter, and the per-task
    gradient norms over ``scope``'s parameters, at the initial weights."""
    model, data = tiny_model(), tiny_batch()
    x, rul, health, _, _ = data.__getitems__(list(range(len(data))))
    rul_pred, logits = model(x.double())
    losses = torch.stack([WMSE(125.0)(rul_pred, rul.double()), F.cross_entropy(logits, health)])
    params = list(model.parameters())
    # shared: the whole backbone; last_shared: its last layer, the tiny backbone's one MLP layer (fc_dims=[6])
    measured = list(model.backbone.parameters()) if scope == "shared" else list(model.backbone.fc[0].parameters())
    grads, norms = [], []
    for loss in losses:
        g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads.append([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)])
        by_param = dict(zip(map(id, params), grads[-1]))
        norms.append(torch.sqrt(sum((by_param[id(p)] ** 2).sum() for p in measured)))
    return losses.detach(), grads, torch.stack(norms)


def assert_model_moved_by(module: GraceModule, grads: list[list[torch.Tensor]], weights: torch.Tensor) -> None:
    start = list(tiny_model().parameters())
    for j, (p, p0) in enumerate(zip(module.model.parameters(), start)):
        # float64, summation order only (measured: at most 6e-14 apart)
        torch.testing.assert_close(p.detach(), p0.detach() - (weights[0] * grads[0][j] + weights[1] * grads[1][j]),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("scope, grad_mode", [("last_shared", "fused"), ("shared", "fused"),
                                              ("shared", "reference")])
def test_gradnorm_step_in_the_module(scope, grad_mode):
    """GradNorm's weights get only the GradNorm-loss gradient, whichever path measured the norms (scope=shared
    under grad_mode=fused goes through the fused two-VJP path); the model gets the w-weighted task gradients."""
    gn = GradNorm(alpha=1.5, lr=1e-4, min_weight=1e-3, scope=scope)  # lr: g_rul ~ 800 here, SGD on w stays > 0
    module = train_one_step(gn, grad_mode)
    _, grads, g = reference_gradients(scope)
    # first step: w = 1, L = L(0) so r = 1 and target = mean(g); d|g_i - mean(g)| / dw_i = sign(g_i - mean(g)) g_i
    stepped = 1.0 - 1e-4 * torch.sign(g - g.mean()) * g
    torch.testing.assert_close(gn.weights.detach(), 2 * stepped / stepped.sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(gn.last_norms, g, rtol=1e-12, atol=0)
    assert_model_moved_by(module, grads, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("grad_mode", ["fused", "reference"])
def test_uncertainty_step_in_the_module(grad_mode):
    unc = Uncertainty(scales=[0.5, 1.0], lr=0.1)
    module = train_one_step(unc, grad_mode)
    losses, grads, _ = reference_gradients("shared")
    c = torch.tensor([0.5, 1.0], dtype=torch.float64)
    # s starts at 0: d total / d s_i = -c_i exp(0) L_i + 1/2
    torch.testing.assert_close(unc.log_vars.detach(), -0.1 * (-c * losses + 0.5), rtol=1e-12, atol=0)
    assert_model_moved_by(module, grads, c)  # the model sees weights c_i exp(-s_i) at s = 0


# ----------------------------------------------------------------- configs and the CLI
@pytest.mark.parametrize("preset", ["grid_baseline", "grid_amnl", "grid_gaba_mse", "grid_grace"])
def test_grid_presets_compose(preset):
    cfg = composed([f"experiment={preset}"])
    cell = {"grid_baseline": ("fixed", "mse"), "grid_amnl": ("amnl", "wmse"), "grid_gaba_mse": ("gaba", "mse"),
            "grid_grace": ("gaba", "wmse")}[preset]
    assert (cfg.loss.name, cfg.rul_loss.name) == cell
    assert list(cfg.callbacks.weight_decay.factors) == ([0.5, 0.1] if preset == "grid_grace" else [1.0, 1.0])


def sweep_losses(losses: list[str], batches: int, tmp_path, data_cache) -> dict:
    """One ``--multirun`` over ``losses`` on FD001 with the small model, one epoch of ``batches`` training batches;
    each loss's run directory."""
    run = subprocess.run([sys.executable, "-m", "grace_lit.train", "--multirun", f"loss={','.join(losses)}",
                          "dataset=FD001", "model=small", "trainer.max_epochs=1",
                          f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=1",
                          "trainer.limit_test_batches=1", f"hydra.sweep.dir={tmp_path}"],
                         cwd=REPO, env=cli_env(data_cache), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = {json.loads((d / "metrics.json").read_text())["loss"]: d for d in tmp_path.iterdir() if d.is_dir()}
    assert sorted(runs) == sorted(losses)
    return runs


def test_every_controller_through_the_cli(tmp_path, data_cache):
    runs = sweep_losses(LOSSES, 3, tmp_path, data_cache)
    logged = {"gaba": "ema_rul", "amnl": "loss_ema_rul", "gradnorm": "g_rul", "uncertainty": "logvar_rul",
              "fixed": "weight_rul", "single_task": "weight_rul"}
    for loss, run_dir in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert (metrics["test/health_acc"] is None) == (loss == "single_task")  # absent, not zero
        predictions = pd.read_csv(run_dir / "predictions.csv")
        assert predictions.health_pred.isna().all() == (loss == "single_task")
        log = pd.read_csv(run_dir / "controller_log.csv")
        assert {"weight_rul", "weight_health", logged[loss]} <= set(log.columns)
        assert f"controller/{logged[loss]}" in pd.read_csv(run_dir / "metrics.csv").columns  # the Lightning logger
