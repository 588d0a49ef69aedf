"""GPU throughput (written for an H100; not yet run: no GPU was at hand when it was written, see
BENCHMARKS.md). Two measurements, each through the real training path (grace_lit.train.build + Trainer.fit):

1. ``epochs``: FD002 epoch time (training + evaluation + callbacks + checkpoints) per controller at the default
   model, epoch 0 dropped, and the 500-epoch budget it implies (goal: under 1.5 s per epoch).
2. ``concurrency``: N identical runs (different seeds) launched as separate processes on the one GPU, for
   each N in ``--processes``; per N the median epoch time per run and the runs per hour it implies
   (N x 3600 / (budget x epoch time)). Throughput per GPU grows with N until the GPU saturates.

``--check-sync`` sets torch.cuda's sync debug mode to "warn" inside training steps and reports the number of
synchronising calls per step (expected: 1, the lagged finite check of the previous step; see module.py).

    .venv/bin/python benchmarks/gpu_throughput.py epochs [--controllers gaba amnl gradnorm uncertainty]
    .venv/bin/python benchmarks/gpu_throughput.py concurrency [--processes 1 2 4 8]
    # extra Hydra overrides after --, e.g. the fast options:
    .venv/bin/python benchmarks/gpu_throughput.py epochs -- trainer.precision=bf16-mixed optimizer.fused=true
    # CPU smoke test of the script itself:
    .venv/bin/python benchmarks/gpu_throughput.py epochs --epochs 2 --controllers gaba -- trainer.accelerator=cpu \
        model=small trainer.limit_train_batches=2 trainer.limit_val_batches=1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import warnings
from typing import Any

import lightning as L
import torch

from common import EpochTimer, add_options, apply_options, compose_config, machine
from grace_lit.train import build

SYNC_WARNING = "synchronizing CUDA operation"


class SyncCounter(L.Callback):
    """Counts synchronising CUDA calls inside training steps (torch.cuda.set_sync_debug_mode('warn'))."""

    def __init__(self) -> None:
        self.syncs, self.steps = 0, 0
        self._caught: Any = None

    def on_train_batch_start(self, *args: Any) -> None:
        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._caught.__exit__(None, None, None)
        self.syncs += sum(SYNC_WARNING in str(w.message) for w in self._records)
        self.steps += 1


def epoch_times(overrides: list[str], epochs: int, check_sync: bool) -> dict[str, Any]:
    """One run of ``epochs`` epochs (no test pass); epoch times with epoch 0 dropped."""
    out = tempfile.mkdtemp(prefix="gpu-throughput-")
    cfg = compose_config("trainer=gpu", "dataset=FD002", f"paths.output_dir={out}",
                         f"trainer.max_epochs={epochs}", *overrides)
    L.seed_everything(cfg.seed)
    data, module, trainer = build(cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    counter = SyncCounter() if check_sync else None
    if counter:
        trainer.callbacks.append(counter)
    trainer.fit(module, datamodule=data)
    result = {"epoch_s": timer.epochs[1:]}
    if counter:
        result["syncs_per_step"] = counter.syncs / max(counter.steps, 1)
    return result


def per_controller(args: argparse.Namespace) -> None:
    for controller in args.controllers:
        r = epoch_times([f"loss={controller}", *args.overrides], args.epochs, args.check_sync)
        epoch = statistics.median(r["epoch_s"])
        sync = f" syncs_per_step={r['syncs_per_step']:.2f}" if "syncs_per_step" in r else ""
        print(f"controller={controller} epoch_s={epoch:.3f} budget_{args.budget}_epochs_min="
              f"{epoch * args.budget / 60:.1f}{sync}", flush=True)


def concurrency(args: argparse.Namespace) -> None:
    for n in args.processes:
        procs = [subprocess.Popen([sys.executable, __file__, "worker", "--epochs", str(args.epochs), "--",
                                   f"seed={seed}", *args.overrides], stdout=subprocess.PIPE, text=True)
                 for seed in range(n)]
        results = []
        for p in procs:
            stdout, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"a worker failed (exit {p.returncode}); rerun with N=1 to see its error")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        epoch = statistics.median(t for r in results for t in r["epoch_s"])
        print(f"processes={n} epoch_s_per_run={epoch:.3f} "
              f"runs_per_hour={n * 3600 / (args.budget * epoch):.2f} (budget {args.budget} epochs)", flush=True)


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["epochs", "concurrency", "worker"])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run; the first is dropped")
    parser.add_argument("--controllers", nargs="+", default=["gaba", "amnl", "gradnorm", "uncertainty"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--budget", type=int, default=compose_config().trainer.max_epochs,
                        help="epochs per full run (default: trainer.max_epochs of conf/)")
    parser.add_argument("--check-sync", action="store_true")
    add_options(parser)
    args = parser.parse_args(argv)
    args.overrides = overrides
    apply_options(args)
    if args.mode == "worker":
        print(json.dumps(epoch_times(overrides, args.epochs, check_sync=False)))
        return
    print(f"machine: {machine()}; cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"overrides: {' '.join(overrides) or '(none)'}")
    {"epochs": per_controller, "concurrency": concurrency}[args.mode](args)


if __name__ == "__main__":
    main()
