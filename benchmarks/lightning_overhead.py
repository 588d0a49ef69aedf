"""Epoch time of the LightningModule in a real lightning.Trainer (callbacks and logger as in conf/) against a
minimal plain-PyTorch loop doing the same work on the same model, data and controller: forward, losses, GABA
(fused, past its warmup), backward, clip, AdamW, EMA; then evaluation with the EMA weights swapped in, the
metrics, and one checkpoint file. The plain loop uses the same public units a run does (the model, the controller,
``grace_lit.gradients.GradientStep``, the optimizer, ``grace_lit.metrics``), never the module's private methods.

FD001, model=small, the first ``--batches`` training batches per epoch and the whole test set as evaluation.
Epoch 0 of every fit is dropped (first-call allocations). The last line is ``lightning_vs_plain=<ratio>``.

    .venv/bin/python benchmarks/lightning_overhead.py [--rounds 5] [--epochs 3] [--batches 30] [--threads N] [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from common import EpochTimer, add_options, apply_options, compose_config, interleaved, machine, medians, now
from grace_lit.gradients import GradientStep
from grace_lit.metrics import RMSE, Accuracy, NASAScore
from grace_lit.train import build

METRICS = {"rmse": RMSE, "nasa": NASAScore, "health_acc": Accuracy}  # each on the last and on all windows, as a run


def lightning_epochs(cfg) -> list[float]:
    data, module, trainer = build(cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=data)
    return timer.epochs[1:]


def plain_epochs(cfg, out: Path) -> list[float]:
    """The same work in a plain loop, through the same public units a run uses: the model, the controller, the
    gradient step (grace_lit.gradients), the optimizer and the metrics; no Lightning."""
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    data.setup("fit")
    model = instantiate(cfg.model)
    controller = instantiate(cfg.loss.controller)
    rul_loss = instantiate(cfg.rul_loss.fn)
    gradient_step = GradientStep(model, controller, cfg.grad_mode, accumulate=1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = instantiate(cfg.optimizer)([{"params": params}])  # GABA has no parameters of its own
    metrics = {(name, last): metric(last_only=last) for name, metric in METRICS.items() for last in (True, False)}
    shadow = [p.detach().clone() for p in model.parameters()]
    decay = cfg.callbacks.ema.decay
    times = []
    for _ in range(cfg.trainer.max_epochs):
        start = now()
        model.train()
        controller.before_epoch()
        for i, (x, rul, health, _, _) in enumerate(data.train_dataloader()):
            if i == cfg.trainer.limit_train_batches:
                break
            opt.zero_grad(set_to_none=True)
            features = model.backbone(x)
            rul_pred, logits = model.heads(features)
            losses = torch.stack([rul_loss(rul_pred, rul), F.cross_entropy(logits, health)])
            gradient_step(losses, losses.detach(), features, torch.Tensor.backward)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            controller.after_step()
            with torch.no_grad():
                torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters()], 1.0 - decay)
        model.eval()
        with torch.no_grad():
            live = [p.detach().clone() for p in model.parameters()]
            torch._foreach_copy_(list(model.parameters()), shadow)
            for x, rul, health, _, is_last in data.val_dataloader():
                rul_pred, logits = model(x)
                outputs = {"rmse": (rul_pred, rul), "nasa": (rul_pred, rul), "health_acc": (logits, health)}
                for (name, _), metric in metrics.items():
                    metric.update(*outputs[name], is_last)
            scores = {f"{name}_{'last' if last else 'all'}": m.compute() for (name, last), m in metrics.items()}
            for metric in metrics.values():
                metric.reset()
            torch._foreach_copy_(list(model.parameters()), live)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": shadow,
                    "controller": controller.state_dict(), "scores": scores}, out / "plain.ckpt")
        times.append(now() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first is dropped")
    parser.add_argument("--batches", type=int, default=30, help="training batches per epoch")
    add_options(parser)
    args = parser.parse_args()
    apply_options(args)
    out = Path(tempfile.mkdtemp(prefix="lightning-overhead-"))
    cfg = compose_config("dataset=FD001", "model=small", "loss=gaba", "loss.controller.warmup_steps=0",
                         f"paths.output_dir={out}", f"trainer.max_epochs={args.epochs}",
                         f"trainer.limit_train_batches={args.batches}", "trainer.accelerator=cpu")
    print(f"machine: {machine()}")
    print(f"FD001, model=small, GABA fused past warmup, {args.batches} training batches of "
          f"{cfg.data.batch_size} + full test-set evaluation per epoch; {args.rounds} rounds x "
          f"{args.epochs - 1} timed epochs per variant, interleaved")
    med = medians(interleaved({"lightning": lambda: lightning_epochs(cfg), "plain": lambda: plain_epochs(cfg, out)},
                              args.rounds))
    for name, t in med.items():
        print(f"{name:>10}: {t:.3f} s/epoch")
    print(f"lightning_vs_plain={med['lightning'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
