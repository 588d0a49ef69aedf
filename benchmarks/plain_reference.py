"""The yardstick: a plain PyTorch 2x64 LSTM trained by a short loop on the framework's own windows, selected as
the framework selects, scored at several CPU budgets from one run.

The data path is the framework's (the datamodule of the composed config: the same units, scaling, windows, capped
targets, and the held-out units and cuts that ``protocol=holdout protocol.val_cuts=5`` draws from
``data.split_seed``), so only the training differs: one stacked LSTM on the last time step, RUL divided by
``max_rul``, plain MSE, Adam, no controller, no EMA, no schedule. After every epoch the held-out cut ends are
scored (``val_rmse_last``, what the framework's ``monitor`` selects on) and the epoch's weights kept in memory
while some budget may still choose them.

The accuracy-against-CPU curve: training runs until the largest budget (CPU time of this process,
``time.process_time``, training only: evaluation is not counted, which favours the yardstick); for each budget
the best held-out epoch among those finished within it is scored on the test set (each test unit's last window),
once, after training, so the test set chooses nothing. The last epoch finished within the budget is scored
beside it (the earlier, unselected yardstick). Seeded: the initialisation from ``--seed`` and the shuffle from
its own generator, so two runs of one seed in one environment give the same digits (docs/reliability.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/plain_reference.py --seed 42 --out FD001_s42.json dataset=FD001

Overrides are the framework's (default ``dataset=FD001 protocol=holdout protocol.val_cuts=5``, the CPU campaign's
data; ``data.split_seed`` defaults to the seed). ``--out`` writes the curve, every epoch's held-out score, the
environment, the command and the git commit as JSON. The last line is
``plain_reference budgets_min=<b,...> test_rmse_best=<RMSE,...> test_rmse_last=<RMSE,...> cpu_s=<s> epochs=<n>``
(``nan`` where no epoch finished within a budget).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import nn

from common import REPO, add_options, apply_options, compose_config, machine
from grace_lit.data.windows import WindowSet
from grace_lit.io import atomic_write_json
from grace_lit.metrics import RMSE
from grace_lit.results import environment_on, git_commit

DEFAULTS = ("dataset=FD001", "protocol=holdout", "protocol.val_cuts=5")
BUDGETS_MIN = (0.5, 1.0, 2.0, 5.0)  # CPU-minutes: the curve's points (issue 30)
SECONDS_PER_MINUTE = 60.0


class PlainLSTM(nn.Module):
    def __init__(self, n_features: int, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(x)[0][:, -1]).squeeze(-1)


@dataclass
class Epoch:
    epoch: int  # 1-based
    cpu_s: float  # training CPU seconds at the epoch's end, cumulative
    val_rmse_last: float


@dataclass
class Point:
    """One budget of the curve: the epochs finished within it, the best held-out one and the last one."""

    budget_min: float
    epochs: int
    best_epoch: int | None
    val_rmse_last: float | None  # the best epoch's held-out score
    test_rmse_best: float | None
    last_epoch: int | None
    test_rmse_last: float | None


def chosen(epochs: list[Epoch], budget_s: float) -> tuple[int | None, int | None]:
    """The (best held-out, last) epoch among those finished within ``budget_s``; ties go to the earlier epoch
    (as the framework's checkpoint keeps its first best); (None, None) when none finished within it."""
    within = [e for e in epochs if e.cpu_s <= budget_s]
    if not within:
        return None, None
    return min(within, key=lambda e: e.val_rmse_last).epoch, within[-1].epoch


def decimals(score: float | None) -> str:
    """A printed score: three decimals, ``nan`` where no epoch finished within the budget."""
    return "nan" if score is None else f"{score:.3f}"


def rmse_last(model: nn.Module, loader, scale: float) -> float:
    metric = RMSE(last_only=True)
    model.eval()
    with torch.no_grad():
        for x, rul, _, _, is_last in loader:
            metric.update(model(x) * scale, rul, is_last)
    model.train()
    return float(metric.compute())


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: WindowSet, batch_size: int, scale: float,
                shuffle: torch.Generator, max_batches: int | None) -> None:
    order = torch.randperm(len(train), generator=shuffle)
    for i, idx in enumerate(order.split(batch_size)):
        if i == max_batches:
            break
        x, rul, *_ = train.__getitems__(idx)
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - rul / scale).square().mean()
        loss.backward()
        opt.step()


def git_dirty() -> bool | None:
    """Whether tracked files differ from ``git_commit`` (then the commit alone does not name the code)."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None


def command() -> str:
    """This run's command line, the script named from the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="framework overrides for the data (after the defaults)")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS_MIN),
                        help="CPU-minutes of training at which the curve is scored")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--max-batches", type=int, default=None, help="per epoch (smoke tests)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None, help="the run as JSON")
    add_options(parser)
    args = parser.parse_args()
    args.clock = "cpu"
    apply_options(args)
    cfg = compose_config(*DEFAULTS, f"seed={args.seed}",
                         f"paths.output_dir={tempfile.mkdtemp(prefix='plain-reference-')}", *args.overrides)
    if cfg.protocol.name != "holdout":
        parser.error("the yardstick selects on held-out units: it needs protocol=holdout")
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    data.setup("fit")
    scale = float(cfg.dataset.max_rul)
    torch.manual_seed(args.seed)
    model = PlainLSTM(data.n_features, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    budgets_s = sorted(b * SECONDS_PER_MINUTE for b in args.budgets)
    n_params = sum(p.numel() for p in model.parameters())
    context = machine()  # the load average at the start
    print(f"machine: {context}")
    print(f"{cfg.dataset.name}, split_seed {cfg.data.split_seed}, val_cuts {cfg.protocol.val_cuts}, "
          f"{len(data.splits.train)} training windows, {args.layers}x{args.hidden} LSTM ({n_params:,} parameters), "
          f"batch {args.batch_size}, Adam {args.lr}, test truth capped at {scale:g}: {cfg.dataset.cap_test_rul}")

    epochs: list[Epoch] = []
    weights: dict[int, dict[str, torch.Tensor]] = {}  # the epochs some budget may still choose
    spent = 0.0
    while spent < budgets_s[-1] and len(epochs) < args.max_epochs:
        start = time.process_time()
        train_epoch(model, opt, data.splits.train, args.batch_size, scale, shuffle, args.max_batches)
        spent += time.process_time() - start
        epochs.append(Epoch(len(epochs) + 1, spent, rmse_last(model, data.val_dataloader(), scale)))
        weights[epochs[-1].epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        needed = {e for b in budgets_s for e in chosen(epochs, b) if e is not None}
        weights = {e: w for e, w in weights.items() if e in needed}
        print(f"epoch {epochs[-1].epoch:3d}  cpu_s {spent:7.1f}  val_rmse_last {epochs[-1].val_rmse_last:.3f}",
              flush=True)

    test: dict[int, float] = {}  # each chosen epoch's test score, computed once

    def score(epoch: int | None) -> float | None:
        if epoch is not None and epoch not in test:
            model.load_state_dict(weights[epoch])
            test[epoch] = rmse_last(model, data.test_dataloader(), scale)
        return None if epoch is None else test[epoch]

    curve = []
    for budget_s in budgets_s:
        best, last = chosen(epochs, budget_s)
        curve.append(Point(budget_s / SECONDS_PER_MINUTE, sum(e.cpu_s <= budget_s for e in epochs), best,
                           None if best is None else epochs[best - 1].val_rmse_last, score(best), last,
                           score(last)))
        print(f"budget {curve[-1].budget_min:g} CPU-min: {curve[-1].epochs} epochs, best held-out epoch {best} "
              f"test_rmse_best {decimals(score(best))}, last epoch {last} test_rmse_last {decimals(score(last))}")
    if args.out is not None:
        atomic_write_json(args.out, {
            "dataset": cfg.dataset.name, "seed": args.seed, "split_seed": cfg.data.split_seed,
            "protocol": cfg.protocol.name, "val_cuts": cfg.protocol.val_cuts,
            "cap_test_rul": cfg.dataset.cap_test_rul, "max_rul": scale,
            "model": {"hidden": args.hidden, "layers": args.layers, "n_params": n_params, "lr": args.lr,
                      "batch_size": args.batch_size, "max_batches": args.max_batches},
            "clock": "time.process_time of training, evaluation not counted", "threads": torch.get_num_threads(),
            "curve": [asdict(p) for p in curve], "epochs": [asdict(e) for e in epochs],
            "environment": environment_on(torch.device("cpu")), "machine": context,
            "command": command(), "git_commit": git_commit(), "git_dirty": git_dirty()})
    text = {name: ",".join(decimals(getattr(p, name)) for p in curve) for name in ("test_rmse_best", "test_rmse_last")}
    print(f"plain_reference budgets_min={','.join(f'{p.budget_min:g}' for p in curve)} "
          f"test_rmse_best={text['test_rmse_best']} test_rmse_last={text['test_rmse_last']} cpu_s={spent:.1f} "
          f"epochs={len(epochs)}")


if __name__ == "__main__":
    main()
