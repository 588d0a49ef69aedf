"""EMA shadow of the model's parameters: updated after every optimizer step, swapped in for every evaluation.

The live parameters are copied aside before the swap and copied back afterwards, bit for bit (spec pitfalls
3 and 4). The shadow is part of every checkpoint.

With a constant decay of 0.999 (the spec) and no bias correction the shadow still holds 0.999^t of the random
initialisation after t steps (about half at epoch 10 on FD001), so short runs evaluate partly untrained weights.
``warmup=True`` (not in the spec, off by default) uses TensorFlow's ``ExponentialMovingAverage(num_updates=t)``
schedule instead: decay min(decay, (1 + t) / (10 + t)) at the 0-based optimizer step t.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch


class EMAWeights(L.Callback):
    def __init__(self, decay: float, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.shadow: list[torch.Tensor] | None = None
        self._live: list[torch.Tensor] | None = None
        self._seen_step = -1

    @staticmethod
    def _params(pl_module: L.LightningModule) -> list[torch.Tensor]:
        return list(pl_module.model.parameters())

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = self._params(pl_module)
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in params]
        else:  # restored from a checkpoint
            self.shadow = [s.to(p.device, p.dtype) for s, p in zip(self.shadow, params)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = trainer.global_step  # here, not in on_fit_start: a resumed step count is restored by now

    def decay_at(self, step: int) -> float:
        """The decay applied after the 0-based optimizer step ``step``."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._seen_step:  # no optimizer step this batch (skipped)
            return
        self._seen_step = trainer.global_step
        decay = self.decay_at(trainer.global_step - 1)  # global_step already counts this step
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self._params(pl_module)], 1.0 - decay)

    def swap_in(self, pl_module: L.LightningModule) -> None:
        if self.shadow is None or self._live is not None:
            return
        params = self._params(pl_module)
        with torch.no_grad():
            self._live = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)

    def swap_out(self, pl_module: L.LightningModule) -> None:
        if self._live is None:
            return
        with torch.no_grad():
            for p, live in zip(self._params(pl_module), self._live):
                p.copy_(live)
        self._live = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_in(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.shadow is not None:
            self.shadow = [s.to(p.device, p.dtype) for s, p in zip(self.shadow, self._params(pl_module))]
        self.swap_in(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = state_dict["shadow"]
