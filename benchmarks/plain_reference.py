"""The yardstick: a plain PyTorch 2x64 LSTM trained by a short loop on the framework's own windows.

The data path is the framework's (the datamodule of the composed config: the same units, scaling, windows, capped
targets and held-out split), so only the training differs: one stacked LSTM on the last time step, RUL divided by
``max_rul``, plain MSE, Adam, no controller, no EMA, no schedule, no selection. After every epoch it prints the
CPU seconds of training so far, the test RMSE on each test unit's last window and, under ``protocol=holdout``, the
same score on the held-out cut ends (what the framework selects on: it shows whether the two curves agree); the
number to compare is the last epoch's test score, the epoch that reaches the budget (so it may train up to one
epoch past it; nothing is selected, on the test set or elsewhere). Evaluation is not counted in the clock: both
favour the yardstick.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plain_reference.py --budget 300 [--seed 42] [overrides ...]

Overrides are the framework's (default ``dataset=FD001 protocol=holdout protocol.val_cuts=5``, the CPU campaign's
data). The last line is ``plain_reference test_rmse_last=<RMSE> cpu_s=<seconds> epochs=<n>``.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from hydra.utils import instantiate
from torch import nn

from common import add_options, apply_options, compose_config, machine
from grace_lit.metrics import RMSE

DEFAULTS = ("dataset=FD001", "protocol=holdout", "protocol.val_cuts=5")


class PlainLSTM(nn.Module):
    def __init__(self, n_features: int, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(x)[0][:, -1]).squeeze(-1)


def rmse_last(model: nn.Module, loader, scale: float) -> float:
    metric = RMSE(last_only=True)
    model.eval()
    with torch.no_grad():
        for x, rul, _, _, is_last in loader:
            metric.update(model(x) * scale, rul, is_last)
    model.train()
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="framework overrides for the data (after the defaults)")
    parser.add_argument("--budget", type=float, default=300.0, help="CPU seconds of training")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--max-batches", type=int, default=None, help="per epoch (smoke tests)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    add_options(parser)
    args = parser.parse_args()
    args.clock = "cpu"
    apply_options(args)
    cfg = compose_config(*DEFAULTS, f"seed={args.seed}", f"data.batch_size={args.batch_size}",
                         f"paths.output_dir={tempfile.mkdtemp(prefix='plain-reference-')}", *args.overrides)
    torch.manual_seed(args.seed)
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    data.setup("fit")
    scale = float(cfg.dataset.max_rul)
    model = PlainLSTM(data.n_features, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"machine: {machine()}")
    print(f"{cfg.dataset.name}, protocol={cfg.protocol.name}, {len(data.splits.train)} training windows, "
          f"{args.layers}x{args.hidden} LSTM ({n_params:,} parameters), batch {args.batch_size}, Adam {args.lr}, "
          f"test truth capped at {scale:g}: {cfg.dataset.cap_test_rul}")
    spent, epoch, rmse = 0.0, 0, float("nan")
    while spent < args.budget and epoch < args.max_epochs:
        start = time.process_time()
        for i, (x, rul, *_) in enumerate(data.train_dataloader()):
            if i == args.max_batches:
                break
            opt.zero_grad(set_to_none=True)
            loss = (model(x) - rul / scale).square().mean()
            loss.backward()
            opt.step()
        spent += time.process_time() - start
        epoch += 1
        rmse = rmse_last(model, data.test_dataloader(), scale)
        held_out = (f"  val_rmse_last {rmse_last(model, data.val_dataloader(), scale):.3f}"
                    if cfg.protocol.name == "holdout" else "")
        print(f"epoch {epoch:3d}  cpu_s {spent:7.1f}  test_rmse_last {rmse:.3f}{held_out}", flush=True)
    print(f"plain_reference test_rmse_last={rmse:.3f} cpu_s={spent:.1f} epochs={epoch}")


if __name__ == "__main__":
    main()
