"""Training-step time of the full model (conf/model/cmapss.yaml, 1.84 M parameters, batch 256, window 30,
14 features) under four gradient paths, each through GraceModule.training_step in a real lightning.Trainer:

* single:    one backward of one combined loss with fixed (uniform) weights: GABA inside its warmup gate
* reference: GABA, the spec's three passes (grad_mode=reference)
* fused:     GABA, one VJP per task and the assembled weighted sum (grad_mode=fused, the default)
* approx:    GABA with norms on the backbone output (grad_mode=approx)

The last line is ``fused_vs_single=<ratio> reference_vs_single=<ratio>`` (ratios of median step times).

    .venv/bin/python benchmarks/gaba_step.py [--rounds 5] [--steps 2] [--model cmapss] [--threads N] [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from common import add_options, apply_options, compose_config, interleaved, machine, medians, now
from grace_lit.data.windows import UnitSeries, WindowSet, batch_as_is
from grace_lit.module import GraceModule

BATCH, UNITS, ROWS = 256, 8, 200


class StepTimer(L.Callback):
    """Wall time of every training batch (forward, losses, controller, backward, clip, optimizer step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = now()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(now() - self._start)


def synthetic_windows(cfg) -> WindowSet:
    """Random standardised series with the dataset's shape (timing does not depend on the values)."""
    rng = np.random.default_rng(0)
    n_features = len(cfg.dataset.sensors)
    units = [UnitSeries(u, rng.normal(size=(ROWS, n_features)).astype(np.float32),
                        np.minimum(np.arange(ROWS)[::-1], cfg.dataset.max_rul).astype(np.float32))
             for u in range(1, UNITS + 1)]
    return WindowSet(units, window=cfg.dataset.window, stride=1, pad_mode="edge",
                     health_thresholds=list(cfg.dataset.health_thresholds))


def step_times(cfg, data: WindowSet, grad_mode: str, warmup_steps: int, steps: int) -> list[float]:
    """Per-step times of ``steps`` steps of a fresh module; the first step of each fit is dropped (allocation)."""
    torch.manual_seed(cfg.seed)
    module = GraceModule(model=instantiate(cfg.model),
                         controller=instantiate(cfg.loss.controller, warmup_steps=warmup_steps),
                         rul_loss=instantiate(cfg.rul_loss.fn), optimizer=instantiate(cfg.optimizer),
                         grad_clip=cfg.grad_clip, grad_mode=grad_mode)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps + 1,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, DataLoader(data, batch_size=BATCH, shuffle=False, collate_fn=batch_as_is))
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--model", default="cmapss", help="conf/model/ preset (small: a quick smoke run)")
    add_options(parser)
    args = parser.parse_args()
    apply_options(args)
    cfg = compose_config("dataset=FD002", f"model={args.model}", "loss=gaba")
    data = synthetic_windows(cfg)
    n_params = sum(p.numel() for p in instantiate(cfg.model).parameters())
    print(f"machine: {machine()}")
    print(f"model: {n_params:,} parameters, batch {BATCH}, window {cfg.dataset.window}, "
          f"{data.n_features} features; {args.rounds} rounds x {args.steps} steps per variant, interleaved")
    never = 10 ** 9  # warmup gate never passed: uniform fixed weights, no norms, one backward
    paths = {"single": ("fused", never), "reference": ("reference", 0), "fused": ("fused", 0), "approx": ("approx", 0)}
    for grad_mode, warmup in paths.values():  # untimed: the first fit of a process pays one-off initialisation
        step_times(cfg, data, grad_mode, warmup, steps=0)
    variants = {name: partial(step_times, cfg, data, grad_mode, warmup, args.steps)
                for name, (grad_mode, warmup) in paths.items()}
    med = medians(interleaved(variants, args.rounds))
    for name, t in med.items():
        print(f"{name:>10}: {t:.3f} s/step  ({t / med['single']:.2f}x single)")
    print(f"fused_vs_single={med['fused'] / med['single']:.3f} "
          f"reference_vs_single={med['reference'] / med['single']:.3f}")


if __name__ == "__main__":
    main()
