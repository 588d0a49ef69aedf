"""A cap on a run's CPU time: training stops after the epoch that the next one would carry past the cap.

CPU time, not wall time, because tuning trials share a loaded machine: the cap is what a run costs, whatever
runs beside it. The next epoch's cost is taken as the mean of those so far (the first carries one-time costs,
so the estimate errs towards stopping early).
"""
from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger("grace_lit")


class CPUBudget(L.Callback):
    def __init__(self, minutes: float | None):
        self.minutes = minutes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None or trainer.should_stop:
            return
        used, epochs = pl_module.cpu_time_s(), trainer.current_epoch + 1
        if used + used / epochs > 60.0 * self.minutes:
            trainer.should_stop = True
            log.info("CPU budget: stopping after epoch %d (%.1f of %g CPU-minutes used; another epoch would pass "
                     "the cap)", trainer.current_epoch, used / 60.0, self.minutes)
