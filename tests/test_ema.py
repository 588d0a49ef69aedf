"""EMA warmup (``callbacks.ema.warmup``): in a real Trainer the shadow follows the recursion
s_t = d_t s_(t-1) + (1 - d_t) p_t with d_t = min(0.999, (1 + t) / (10 + t)) at the 0-based optimizer step t,
computed here by hand from the parameters recorded after every step; without warmup d_t = 0.999."""
from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import composed
from grace_lit.callbacks.ema import EMAWeights


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Linear(3, 1).double()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.model(x).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    def __init__(self):
        self.params: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.params.append([p.detach().clone() for p in pl_module.model.parameters()])


def fit(ema: EMAWeights, steps: int) -> tuple[list[torch.Tensor], Recorder]:
    torch.manual_seed(0)
    module = Tiny()
    start = [p.detach().clone() for p in module.model.parameters()]
    data = TensorDataset(torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64))
    recorder = Recorder()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[ema, recorder])
    trainer.fit(module, DataLoader(data, batch_size=2))
    assert trainer.global_step == steps == len(recorder.params)
    return start, recorder


def by_hand(start: list[torch.Tensor], steps: list[list[torch.Tensor]], decays: list[float]) -> list[torch.Tensor]:
    shadow = start
    for d, params in zip(decays, steps, strict=True):
        shadow = [d * s + (1 - d) * p for s, p in zip(shadow, params)]
    return shadow


@pytest.mark.parametrize("warmup", [True, False])
def test_shadow_follows_the_decay_trajectory_in_a_trainer(warmup):
    ema = EMAWeights(decay=0.999, warmup=warmup)
    start, recorder = fit(ema, steps=12)
    decays = [min(0.999, (1 + t) / (10 + t)) for t in range(12)] if warmup else [0.999] * 12
    for got, want in zip(ema.shadow, by_hand(start, recorder.params, decays)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_warmup_decays_by_hand():
    ema = EMAWeights(decay=0.999, warmup=True)
    assert [ema.decay_at(t) for t in (0, 1, 2)] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert ema.decay_at(8989) == pytest.approx(8990 / 8999) and ema.decay_at(8989) < 0.999
    assert ema.decay_at(8990) == ema.decay_at(10**6) == 0.999  # 8991 / 9000 = 0.999: the spec's decay from here
    assert EMAWeights(decay=0.999).decay_at(0) == 0.999


def test_warmup_is_off_by_default_and_an_override():
    assert instantiate(composed().callbacks.ema).warmup is False
    assert instantiate(composed(["callbacks.ema.warmup=true"]).callbacks.ema).warmup is True
