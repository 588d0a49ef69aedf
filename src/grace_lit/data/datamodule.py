"""LightningDataModule over any reader with ``train_units()`` and
``build(fit_units, val_units, seed, val_cuts, calibration_cuts)``.

The protocol decides what the per-epoch evaluation sees: ``paper`` evaluates on the test set, ``holdout`` on
held-out training units (the test set is then only used by ``trainer.test``): a seeded share of them, or with
``folds`` > 1 the ``fold``-th of K seeded groups. ``split_seed`` draws the held-out units and their cuts, so
the spread over ``seed`` can be that of training alone.

On an accelerator the windows are moved to the device once, in ``setup``; every batch is then one gather on
the device from a slice of a device-resident index order (``DeviceBatchSampler``): no per-sample
``__getitem__``, no collate, no worker processes, no pinned-memory copies, no host-to-device copy per batch.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from grace_lit.data.pipeline import Splits
from grace_lit.data.preprocess import fold_units, split_units
from grace_lit.data.windows import WindowSet, batch_as_is
from grace_lit.errors import GraceError

PROTOCOLS = ("paper", "holdout")


class DeviceBatchSampler(BatchSampler):
    """Batches of indices as tensors on ``device``. The epoch's order comes from ``sampler`` (the same
    permutation a host-side loader would draw), crosses to the device once per epoch and is sliced there, so a
    device-resident ``WindowSet`` gathers each batch without a host-to-device copy (and its implicit sync)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, device: torch.device):
        super().__init__(sampler, batch_size, drop_last)
        self.device = device

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64).to(self.device)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size]


class RULDataModule(L.LightningDataModule):
    def __init__(self, source: Any, protocol: str, holdout_fraction: float, batch_size: int, eval_batch_size: int,
                 seed: int, split_seed: int | None = None, folds: int = 1, fold: int = 0, val_cuts: int = 1,
                 calibration_cuts: int = 0):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise GraceError(f"protocol={protocol!r} is not one of {PROTOCOLS}.")
        if protocol == "holdout" and not 0 < holdout_fraction < 1:
            raise GraceError(f"protocol.holdout_fraction={holdout_fraction} must lie in (0, 1) for the holdout "
                             f"protocol.")
        if folds > 1 and protocol != "holdout":
            raise GraceError(f"protocol.folds={folds} needs held-out units. Fix: add protocol=holdout.")
        self.source, self.protocol, self.holdout_fraction = source, protocol, holdout_fraction
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.split_seed = seed if split_seed is None else split_seed
        self.folds, self.fold, self.val_cuts, self.calibration_cuts = folds, fold, val_cuts, calibration_cuts
        self.splits: Splits | None = None

    @property
    def n_features(self) -> int:
        return self.source.n_features

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            units = self.source.train_units()
            if self.protocol == "holdout" and self.folds > 1:
                fit, held = fold_units(units, self.folds, self.fold, self.split_seed)
            elif self.protocol == "holdout":
                fit, held = split_units(units, self.holdout_fraction, self.split_seed)
            else:
                fit, held = units, np.array([], dtype=np.int64)
            self.splits = self.source.build(fit, held, self.split_seed, self.val_cuts, self.calibration_cuts)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for part in (self.splits.train, self.splits.val, self.splits.test, self.splits.calibration):
            if part is not None:
                part.to(device)  # once per run: a few MB even for FD004

    def _train_sampler(self, data: WindowSet) -> Sampler[int]:
        """Under DDP each rank draws its own equal share of a seeded shuffle (Lightning sets its epoch); the
        evaluation sets are never split: every rank scores all of them (``use_distributed_sampler: false`` in
        conf/trainer/default.yaml), so there is no padding duplicate and nothing to gather. ``overfit_batches``
        (debug=overfit) needs the same batches every epoch: Lightning cannot reach inside this batch sampler to
        turn its shuffle off, so it is done here."""
        trainer = self.trainer
        if trainer is not None and trainer.overfit_batches > 0:
            return SequentialSampler(data)
        if trainer is None or trainer.world_size == 1:
            return RandomSampler(data)
        return DistributedSampler(data, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=True,
                                  seed=self.seed)

    def _loader(self, data: WindowSet, train: bool) -> DataLoader:
        sampler = self._train_sampler(data) if train else SequentialSampler(data)
        batches = DeviceBatchSampler(sampler, self.batch_size if train else self.eval_batch_size, drop_last=False,
                                     device=data.starts.device)
        return DataLoader(data, batch_sampler=batches, collate_fn=batch_as_is, num_workers=0, pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val if self.protocol == "holdout" else self.splits.test, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, train=False)
