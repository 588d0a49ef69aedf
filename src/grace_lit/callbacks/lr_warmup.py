"""Linear learning-rate warmup per epoch: lr = base * (start + (1 - start) * epoch / epochs) until ``epochs``."""
from __future__ import annotations

import lightning as L


def warmup_factor(epoch: int, epochs: int, start_factor: float) -> float:
    """0.1 at epoch 0, 0.55 at 5, 0.91 at 9 and 1.0 from ``epochs`` on (spec 004's table, epoch 0-based)."""
    if epoch >= epochs:
        return 1.0
    return start_factor + (1.0 - start_factor) * epoch / epochs


class LRWarmup(L.Callback):
    """Sets each group's lr at the start of epochs 0..``epochs``; afterwards the plateau scheduler owns it.

    At epoch ``epochs`` the lr is set to exactly the base value once (spec 004's smoke test shows 1e-3 there,
    which its own code never sets), then it is left alone.
    """

    def __init__(self, epochs: int, start_factor: float):
        self.epochs, self.start_factor = epochs, start_factor

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > self.epochs:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                base = group.setdefault("base_lr", group["lr"])
                group["lr"] = base * warmup_factor(epoch, self.epochs, self.start_factor)
