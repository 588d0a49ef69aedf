"""The baseline controllers against hand-computed values; their parameters reach the optimizer (pitfall 2)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

import grace_lit.config  # noqa: F401  (registers the resolvers conf/ uses)
from conftest import REPO, cli_env
from grace_lit.data.windows import batch_as_is
from grace_lit.losses.amnl import AMNL
from grace_lit.losses.fixed import FixedWeights
from grace_lit.losses.gradnorm import GradNorm
from grace_lit.losses.single_task import SingleTask
from grace_lit.losses.uncertainty import Uncertainty
from grace_lit.losses.rul import WMSE
from grace_lit.module import GraceModule
from test_module import tiny_batch, tiny_model

LOSSES = ["gaba", "amnl", "gradnorm", "uncertainty", "fixed", "single_task"]


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

        weights, aux = gn(torch.tensor(losses), torch.tensor(norms))
        assert not weights.requires_grad  # the task losses do not push the weights
        assert aux.item() == pytest.approx(sum(abs(G[i] - target[i]) for i in range(2)), rel=1e-6)
        opt.zero_grad()
        aux.backward()
        assert gn.weights.grad.tolist() == pytest.approx(grad, rel=1e-6)
        opt.step()
        gn.after_step()
        assert gn.weights.tolist() == pytest.approx(w, rel=1e-6)
        assert gn.weights.sum().item() == pytest.approx(2.0)


def test_fixed_and_single_task():
    assert FixedWeights([0.3, 0.7])(torch.tensor([5.0, 1.0]), None)[0].tolist() == pytest.approx([0.3, 0.7])
    single = SingleTask()
    assert single(torch.tensor([5.0, 1.0]), None)[0].tolist() == [1.0, 0.0] and not single.trains_health


@pytest.mark.parametrize("make", [lambda: AMNL(0.9, 1e-6, [0.5, 0.5]), lambda: Uncertainty([0.5, 1.0], 1e-3),
                                  lambda: GradNorm(1.5, 0.025, 1e-3), lambda: FixedWeights([0.5, 0.5])])
def test_state_dict_round_trip(make):
    a = make()
    opt = torch.optim.SGD(a.parameters(), lr=0.1) if list(a.parameters()) else None
    for losses in ([4.0, 1.0], [3.0, 0.5]):
        weights, aux = a(torch.tensor(losses), torch.tensor([2.0, 1.0]))
        if opt:
            opt.zero_grad()
            ((weights * torch.tensor(losses)).sum() + (aux if aux is not None else 0)).backward()
            opt.step()
            a.after_step()
    b = make()
    b.load_state_dict(a.state_dict())
    nxt = (torch.tensor([2.0, 0.4]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(a(*nxt)[0], b(*nxt)[0])


@pytest.mark.parametrize("controller, own", [(Uncertainty([0.5, 1.0], lr=0.01), "log_vars"),
                                             (GradNorm(1.5, lr=0.025, min_weight=1e-3), "weights")])
def test_learnable_parameters_are_optimised_in_their_own_group(controller, own):
    module = GraceModule(tiny_model(), controller, WMSE(125.0), partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4),
                         grad_clip=1.0)
    groups = module.configure_optimizers().param_groups
    assert len(groups) == 2 and groups[1]["params"] == [getattr(controller, own)]
    assert groups[1]["lr"] == controller.lr and groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1e-4
    before = getattr(controller, own).detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, precision="64-true", logger=False, callbacks=[],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(tiny_batch(), batch_size=16, collate_fn=batch_as_is))
    assert not torch.equal(getattr(controller, own).detach().float(), before.float())


@pytest.mark.parametrize("preset", ["grid_baseline", "grid_amnl", "grid_gaba_mse", "grid_grace"])
def test_grid_presets_compose(preset):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={preset}"])
    cell = {"grid_baseline": ("fixed", "mse"), "grid_amnl": ("amnl", "wmse"), "grid_gaba_mse": ("gaba", "mse"),
            "grid_grace": ("gaba", "wmse")}[preset]
    assert (cfg.loss.name, cfg.rul_loss.name) == cell
    assert list(cfg.callbacks.weight_decay.factors) == ([0.5, 0.1] if preset == "grid_grace" else [1.0, 1.0])


def test_every_controller_through_the_cli(tmp_path, data_cache):
    run = subprocess.run([sys.executable, "-m", "grace_lit.train", "--multirun", f"loss={','.join(LOSSES)}",
                          "dataset=FD001", "model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          f"hydra.sweep.dir={tmp_path}"], cwd=REPO, env=cli_env(data_cache), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {json.loads(p.read_text())["loss"]: json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")}
    assert sorted(results) == sorted(LOSSES)
    assert all(r["status"] == "completed" for r in results.values())
    assert results["single_task"]["test/health_acc"] is None and results["gaba"]["test/health_acc"] is not None
