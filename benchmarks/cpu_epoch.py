"""CPU cost of one training epoch, side by side: GRACE model=small on FD001 with this checkout's code, with a
baseline commit's code (a git worktree), and the plain reference (benchmarks/plain_reference.py) on the same
windows. Every variant is a whole command run with one thread, twice (``--short`` and ``--long`` epochs), and an
epoch costs the difference of the two CPU times over the difference of their epochs: start-up, data preparation
and the test pass cancel, while training, the held-out evaluation, the controller log and the checkpoints stay.
The variants run interleaved, round by round, so a load spike from other jobs hits them alike.

    .venv/bin/python benchmarks/cpu_epoch.py --baseline d387663 [--rounds 3] [--short 2] [--long 6] [overrides ...]
    .venv/bin/python benchmarks/cpu_epoch.py --variants current,plain ...     # no baseline worktree

Overrides go to every variant (the plain reference reads only the data's; default: ``dataset=FD001 model=small loss=gaba protocol=holdout
protocol.val_cuts=5``, main's defaults otherwise). The last line is
``baseline_vs_current=<ratio> current_vs_plain=<ratio>``.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine

RUN = ("dataset=FD001", "model=small", "loss=gaba", "protocol=holdout", "protocol.val_cuts=5")


def child_cpu_s(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """CPU seconds (user + system) of ``cmd`` and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"cpu_epoch: {' '.join(cmd)} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def worktree(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="cpu-epoch-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), ref], cwd=REPO, check=True,
                   capture_output=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="framework overrides for both variants (after the defaults)")
    parser.add_argument("--baseline", default="HEAD", help="git ref whose code is the baseline")
    parser.add_argument("--variants", default="baseline,current,plain", help="which to run, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--short", type=int, default=2, help="epochs of the short run")
    parser.add_argument("--long", type=int, default=6, help="epochs of the long run")
    parser.add_argument("--batches", type=int, default=None, help="training batches per epoch (smoke tests)")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    base = worktree(args.baseline) if "baseline" in chosen else None
    out = Path(tempfile.mkdtemp(prefix="cpu-epoch-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limit = [f"trainer.limit_train_batches={args.batches}"] if args.batches else []
    plain_limit = ["--max-batches", str(args.batches)] if args.batches else []

    def framework(src: Path, epochs: int) -> float:
        cmd = [sys.executable, "-m", "grace_lit.train", *RUN, *args.overrides, *limit,
               f"trainer.max_epochs={epochs}", "callbacks.early_stopping.patience=1000",
               f"hydra.run.dir={out / f'{src.name}_{epochs}'}"]
        return child_cpu_s(cmd, {**env, "PYTHONPATH": str(src / "src")}, src)

    def plain(epochs: int) -> float:
        cmd = [sys.executable, "plain_reference.py", "--max-epochs", str(epochs), *plain_limit,
               *RUN, *args.overrides]  # the same windows and batch size
        return child_cpu_s(cmd, env, REPO / "benchmarks")

    variants = {"baseline": lambda n: framework(base, n), "current": lambda n: framework(REPO, n), "plain": plain}
    variants = {name: run for name, run in variants.items() if name in chosen}
    per_epoch: dict[str, list[float]] = {name: [] for name in variants}
    print(f"machine: {machine()}")
    print(f"{', '.join(variants)} (baseline: {args.baseline}); {' '.join([*RUN, *args.overrides])}; "
          f"{args.rounds} rounds of {args.short} and {args.long} epochs per variant, one thread, CPU time")
    try:
        for r in range(args.rounds):
            for name, run in variants.items():
                per_epoch[name].append((run(args.long) - run(args.short)) / (args.long - args.short))
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n}={statistics.median(t):.2f}s"
                                                              for n, t in per_epoch.items()), flush=True)
    finally:
        if base is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    med = {name: statistics.median(t) for name, t in per_epoch.items()}
    for name, t in med.items():
        print(f"{name:>10}: {t:.2f} CPU-s/epoch")
    ratio = {f"{a}_vs_{b}": med[a] / med[b] if a in med and b in med else float("nan")
             for a, b in (("baseline", "current"), ("current", "plain"))}
    print(" ".join(f"{k}={v:.3f}" for k, v in ratio.items()))


if __name__ == "__main__":
    main()
