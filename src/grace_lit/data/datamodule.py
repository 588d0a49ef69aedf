"""LightningDataModule over any reader with ``train_units()`` and ``build(fit_units, val_units, seed)``.

The protocol decides what the per-epoch evaluation sees: ``paper`` evaluates on the test set, ``holdout`` on
a seeded share of the training units (the test set is then only used by ``trainer.test``).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from grace_lit.data.cmapss import Splits
from grace_lit.data.preprocess import split_units
from grace_lit.data.windows import WindowSet, batch_as_is
from grace_lit.errors import GraceError

PROTOCOLS = ("paper", "holdout")


class RULDataModule(L.LightningDataModule):
    def __init__(self, source: Any, protocol: str, holdout_fraction: float, batch_size: int, eval_batch_size: int,
                 seed: int):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise GraceError(f"protocol={protocol!r} is not one of {PROTOCOLS}.")
        if protocol == "holdout" and not 0 < holdout_fraction < 1:
            raise GraceError(f"protocol.holdout_fraction={holdout_fraction} must lie in (0, 1) for the holdout "
                             f"protocol.")
        self.source, self.protocol, self.holdout_fraction = source, protocol, holdout_fraction
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.splits: Splits | None = None

    @property
    def n_features(self) -> int:
        return self.source.n_features

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        units = self.source.train_units()
        if self.protocol == "holdout":
            fit, held = split_units(units, self.holdout_fraction, self.seed)
        else:
            fit, held = units, np.array([], dtype=np.int64)
        self.splits = self.source.build(fit, held, self.seed)

    def _loader(self, data: WindowSet, train: bool) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          collate_fn=batch_as_is)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val if self.protocol == "holdout" else self.splits.test, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, train=False)
