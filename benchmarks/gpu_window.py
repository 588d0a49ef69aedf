"""One prepared command for a window of GPU time (issue 13): tests, speed, concurrency, then the campaign.

Phases, in order; each runs in child processes that are killed at the phase's share of ``--budget`` (what
finished is kept), and a phase that finished in an earlier command on the same machine (``--work`` is
git-ignored, so a warm machine keeps it) is not run again:

1. ``tests``: ``pytest -m gpu`` (tests/test_gpu.py on CUDA), output and junit XML (with the distances of
   bf16-mixed, fused AdamW and compile from float32).
2. ``epochs``: FD002 epoch time at the default model (epoch 0 dropped): GABA in float32, bf16-mixed + fused
   AdamW, and compile; then AMNL, GradNorm, Uncertainty in float32.
3. ``concurrency``: 2, 4, 8 GABA float32 runs at once on the one GPU (1 is phase 2's); each run's slowdown.
4. ``launch``: is a step launch-bound? GABA float32 epoch time at batch 1024 (against 256), and torch.profiler
   over a few training steps: kernels per step, GPU busy time per step against the step's wall time.
5. ``campaign``: benchmarks/campaign.py for the rest of the budget, at the concurrency that gave the most
   runs per hour.

Then ``gpu_window.tar.gz`` (the work folder without checkpoints) and ``summary.json`` go into ``--out``.
Without CUDA (or with ``--dry-run``) the same phases run small: model=small, a few batches, a small budget.

    python benchmarks/gpu_window.py --budget 480 --out OUT          # on the GPU machine (BENCHMARKS.md)
    python benchmarks/gpu_window.py --dry-run --out /tmp/window      # CPU: the same code path, about a minute
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import lightning as L
import torch

import campaign
from common import REPO, EpochTimer, compose_config
from grace_lit.results import git_commit
from grace_lit.train import build

WORK = REPO / "multirun" / "gpu_window"
PHASES = {"tests": 0.25, "epochs": 0.22, "concurrency": 0.18, "launch": 0.08}  # budget shares; campaign: the rest
RESERVE_S = 15  # for the archive and summary
CONCURRENT_EPOCHS = 2  # per run of the concurrency phase: epoch 0 dropped, one timed epoch
GABA32 = "gaba-float32"
SPECS = {GABA32: ["loss=gaba"],
         "gaba-bf16-fused": ["loss=gaba", "trainer.precision=bf16-mixed", "optimizer.fused=true"],
         "gaba-compile": ["loss=gaba", "compile=true"], "amnl-float32": ["loss=amnl"],
         "gradnorm-float32": ["loss=gradnorm"], "uncertainty-float32": ["loss=uncertainty"]}
GPU = {"base": ["trainer=gpu"], "epochs": 3, "specs": list(SPECS), "processes": [2, 4, 8], "profile_steps": 20,
       "jobs": 4, "extra": []}
DRY = {"base": ["trainer=gpu", "trainer.accelerator=cpu", "model=small", "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"],
       "epochs": 1, "specs": [GABA32, "gaba-bf16-fused"], "processes": [2], "profile_steps": 2, "jobs": 2,
       "extra": ["model=small", "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]}


# ----------------------------------------------------------------------------- measurement (child processes)
class StepProfiler(L.Callback):
    """torch.profiler over training batches [start, start + steps) of the first epoch."""

    def __init__(self, start: int, steps: int):
        self.start, self.steps = start, steps
        self.result: dict[str, Any] = {}
        self._prof: Any = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.start and trainer.current_epoch == 0:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.__enter__()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._prof is None or batch_idx != self.start + self.steps - 1:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        events = self._prof.events()
        cpu = torch.autograd.DeviceType.CPU
        kernels = [e for e in events if e.device_type != cpu]
        sort = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        n = self.steps
        self.result = {
            "profiled_steps": n, "wall_s_per_step": wall / n,
            "kernels_per_step": len(kernels) / n,
            "kernel_launches_per_step": sum(1 for e in events if "LaunchKernel" in e.name) / n,
            "gpu_busy_s_per_step": sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / n,
            "top_level_ops_per_step": sum(1 for e in events if e.device_type == cpu and e.cpu_parent is None) / n,
            "syncs_per_step": sum(1 for e in events if "Synchronize" in e.name) / n,
            "table": self._prof.key_averages().table(sort_by=sort, row_limit=30)}
        self._prof = None


def measure(label: str, overrides: list[str], epochs: int, profile_steps: int) -> dict[str, Any]:
    """One fit through the real training path; epoch times with epoch 0 (cuDNN autotune, compile) dropped."""
    out = tempfile.mkdtemp(prefix="gpu-window-")
    cfg = compose_config(*overrides, f"paths.output_dir={out}", f"trainer.max_epochs={epochs}")
    L.seed_everything(cfg.seed)
    data, module, trainer = build(cfg)
    timer, profiler = EpochTimer(), StepProfiler(start=3, steps=profile_steps)
    trainer.callbacks.extend([timer] + ([profiler] if profile_steps else []))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=data)
    measured = timer.epochs[1:] or timer.epochs
    return {"label": label, "overrides": overrides, "epoch_s": timer.epochs, "median_epoch_s": statistics.median(
            measured), "batches_per_epoch": trainer.num_training_batches, "batch_size": cfg.data.batch_size,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            **profiler.result}


def measure_main(args: argparse.Namespace, overrides: list[str]) -> None:
    """``measure``: every --spec (label:override override ...) in turn, one JSON line each as it finishes."""
    for spec in args.spec:
        label, _, own = spec.partition(":")
        try:
            row = measure(label, [*overrides, *own.split()], args.epochs, args.profile_steps)
        except Exception as err:  # one failed variant (compile, say) must not cost the others
            row = {"label": label, "error": f"{type(err).__name__}: {err}"[:2000]}
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- the window (orchestration)
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def measure_cmd(jsonl: Path, mode: dict, specs: list[str], epochs: int, profile_steps: int = 0,
                extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, __file__, "measure", "--jsonl", str(jsonl), "--epochs", str(epochs),
           "--profile-steps", str(profile_steps)]
    return cmd + [f"--spec={s}" for s in specs] + ["--", *mode["base"], *extra]


def spec(label: str) -> str:
    return f"{label}:{' '.join(SPECS[label])}"


def threads_env(processes: int) -> dict[str, str]:
    """Intra-op threads per process: the machine's cores shared by the processes running at once."""
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}


def phase_tests(work: Path, deadline: float, mode: dict) -> dict[str, Any]:
    junit = work / "tests" / "junit.xml"
    junit.parent.mkdir(exist_ok=True)
    codes = campaign.run_until([[sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-v", "-rA",
                                 f"--junitxml={junit}", "tests/test_gpu.py"]], deadline, work / "tests" / "pytest.log")
    if not junit.is_file():  # stopped before pytest wrote it: count the outcomes its -v log shows so far
        log = (work / "tests" / "pytest.log").read_text().split()
        return {"finished": False, **{k: log.count(k) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}}
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = list(suite.iter("testcase"))
    props = {case.get("name"): {p.get("name"): float(p.get("value")) for p in case.iter("property")}
             for case in cases if case.find("properties") is not None}
    failed = [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]
    return {"finished": codes is not None, **{k: int(suite.get(k)) for k in ("tests", "failures", "errors",
                                                                          "skipped")},
            "failed": failed, "properties": props}


def phase_epochs(work: Path, deadline: float, mode: dict) -> dict[str, Any]:
    jsonl = work / "measure" / "epochs.jsonl"
    done = {r["label"] for r in read_jsonl(jsonl)}
    todo = [spec(s) for s in mode["specs"] if s not in done]
    codes = campaign.run_until([measure_cmd(jsonl, mode, todo, mode["epochs"])], deadline, work / "measure" /
                               "epochs.log") if todo else []
    return {"finished": codes is not None, "runs": read_jsonl(jsonl)}


def alone(work: Path) -> float | None:
    return next((r["median_epoch_s"] for r in read_jsonl(work / "measure" / "epochs.jsonl")
                 if r["label"] == GABA32 and "median_epoch_s" in r), None)


def phase_concurrency(work: Path, deadline: float, mode: dict) -> dict[str, Any]:
    base = alone(work)
    rows = [{"processes": 1, "errors": [], "median_epoch_s": base, "slowdown": 1.0, "runs_per_hour_vs_alone": 1.0}
            ] if base else []  # the epochs phase's run: the campaign runs one at a time if sharing does not pay
    for n in mode["processes"]:
        files = [work / "measure" / f"concurrency_{n}_{i}.jsonl" for i in range(n)]
        for f in files:
            f.unlink(missing_ok=True)
        cmds = [measure_cmd(f, mode, [spec(GABA32)], CONCURRENT_EPOCHS, extra=(f"seed={i}",))
                for i, f in enumerate(files)]
        codes = campaign.run_until(cmds, deadline, work / "measure" / "concurrency.log", threads_env(n))
        if codes is None:
            return {"finished": False, "alone_epoch_s": base, "rows": rows}
        runs = [r for f in files for r in read_jsonl(f)]
        errors = [r["error"] for r in runs if "error" in r]  # out of memory, say: recorded, not retried
        runs = [r for r in runs if "median_epoch_s" in r]
        if not runs:
            rows.append({"processes": n, "errors": errors})
            continue
        epoch = statistics.median(r["median_epoch_s"] for r in runs)
        rows.append({"processes": n, "errors": errors, "median_epoch_s": epoch,
                     "slowdown": epoch / base if base else None,
                     "runs_per_hour_vs_alone": len(runs) * base / epoch if base else None,
                     "peak_gib_per_run": max((r["peak_gib"] or 0) for r in runs)})
    return {"finished": True, "alone_epoch_s": base, "rows": rows}


def phase_launch(work: Path, deadline: float, mode: dict) -> dict[str, Any]:
    """A few profiled GABA steps at batch 256 past its warmup, and epochs at batch 1024 (its epoch 0 profiled
    too, outside the timed epochs)."""
    jsonl = work / "measure" / "launch.jsonl"
    jsonl.unlink(missing_ok=True)
    n = mode["profile_steps"]
    specs = [f"{GABA32}-b256:loss=gaba loss.controller.warmup_steps=0 trainer.limit_train_batches={3 + n}",
             f"{GABA32}-b1024:loss=gaba loss.controller.warmup_steps=0 data.batch_size=1024"]
    codes = campaign.run_until([measure_cmd(jsonl, mode, specs, mode["epochs"], profile_steps=n)], deadline,
                               work / "measure" / "launch.log")
    rows = read_jsonl(jsonl)
    for row in rows:
        if "table" in row:
            (work / "measure" / f"profile_{row['label']}.txt").write_text(row.pop("table"))
    by = {r["label"]: r for r in rows}
    b1024, base = by.get(f"{GABA32}-b1024", {}).get("median_epoch_s"), alone(work)
    prof = by.get(f"{GABA32}-b256", {})
    verdict = {"epoch_s_b256": base, "epoch_s_b1024": b1024,
               "b1024_over_b256": b1024 / base if base and b1024 else None,  # near 1: bound by the work; near 0.25:
               "gpu_busy_fraction": prof["gpu_busy_s_per_step"] / prof["wall_s_per_step"]  # a fixed cost per step
               if prof.get("wall_s_per_step") else None,
               "kernels_per_step_b256": prof.get("kernels_per_step")}
    return {"finished": codes is not None, "verdict": verdict, "runs": rows}


def best_jobs(work: Path, default: int) -> int:
    """The concurrency with the most runs per hour, among those measured."""
    rows = json.loads((work / "concurrency.json").read_text()).get("rows", []) if (work / "concurrency.json"
                                                                                   ).is_file() else []
    rows = [r for r in rows if r.get("runs_per_hour_vs_alone") and not r.get("errors")]
    return max(rows, key=lambda r: r["runs_per_hour_vs_alone"])["processes"] if rows else default


def phase_campaign(work: Path, deadline: float, mode: dict, results: Path, jobs: int | None,
                   dry: bool) -> dict[str, Any]:
    manifest = campaign.load_manifest()
    if dry:  # the first experiment, one seed
        manifest.experiments, manifest.seeds = manifest.experiments[:1], manifest.seeds[:1]
    jobs = jobs or best_jobs(work, mode["jobs"])
    report = campaign.run_campaign(manifest, work / "runs", results, jobs, deadline, mode["extra"],
                                   work / "campaign.log", env=threads_env(jobs))
    (work / "campaign.txt").write_text("\n".join(campaign.summary_lines(report)) + "\n")
    return {"finished": False, "jobs": jobs, **report}  # never "done": the next window goes on with it


def pack(work: Path, out: Path) -> Path:
    archive = out / "gpu_window.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname="gpu_window",
                filter=lambda info: None if "checkpoints" in Path(info.name).parts or info.name.endswith(".ckpt")
                else info)
    return archive


def summarise(work: Path, elapsed: dict[str, float], budget: float) -> dict[str, Any]:
    phases = {p: json.loads((work / f"{p}.json").read_text()) for p in [*PHASES, "campaign"]
              if (work / f"{p}.json").is_file()}
    epochs = {r["label"]: r.get("median_epoch_s", r.get("error")) for r in phases.get("epochs", {}).get("runs", [])}
    gaba = epochs.get(GABA32)
    rows = phases.get("concurrency", {}).get("rows", [])
    camp = phases.get("campaign", {})
    gpu = torch.cuda.is_available()  # a dry run's figures are no evidence about the goals
    unfinished = [f"{row['cell']}/s{seed}" for row in camp.get("cells", []) for seed, run in row["runs"].items()
                  if run["status"] == "unfinished"]
    return {
        "device": torch.cuda.get_device_name() if gpu else "cpu (dry run)",
        "torch": torch.__version__, "commit": git_commit(), "budget_s": budget, "phase_s": elapsed,
        "tests": phases.get("tests", {}),
        "epoch_s": epochs, "concurrency": rows, "launch": phases.get("launch", {}).get("verdict"),
        "goals": {"gaba_float32_epoch_s_le_1": gaba <= 1.0 if gpu and isinstance(gaba, float) else None,
                  "four_seeds_each_le_1_5x": any(r["processes"] >= 4 and not r.get("errors") and
                                                 (r.get("slowdown") or 9) <= 1.5 for r in rows)
                  if gpu and rows else None},
        "campaign": {"jobs": camp.get("jobs"), "counts": camp.get("counts"), "stopped": camp.get("sweeps_stopped"),
                     "unfinished": unfinished},
        "finished_phases": sorted(p for p, r in phases.items() if r.get("finished"))}


def window(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    end = start + args.budget - RESERVE_S
    mode = DRY if args.dry_run else GPU
    work, elapsed = args.work, {}
    work.mkdir(parents=True, exist_ok=True)
    (work / "measure").mkdir(exist_ok=True)
    runners = {"tests": phase_tests, "epochs": phase_epochs, "concurrency": phase_concurrency,
               "launch": phase_launch}
    cumulative = 0.0
    for name, share in PHASES.items():
        cumulative += share  # a phase that ends early (or was done before) leaves its time to the next ones
        done = work / f"{name}.json"
        if done.is_file() and json.loads(done.read_text()).get("finished"):
            continue  # finished in an earlier command on this machine
        t0 = time.monotonic()
        deadline = min(start + cumulative * args.budget, end)
        print(f"gpu_window: {name} (until +{deadline - start:.0f}s)", flush=True)
        done.write_text(json.dumps(runners[name](work, deadline, mode), indent=1))
        elapsed[name] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    print(f"gpu_window: campaign (until +{end - start:.0f}s)", flush=True)
    (work / "campaign.json").write_text(json.dumps(phase_campaign(work, end, mode, args.results, args.jobs,
                                                                  args.dry_run), indent=1))
    elapsed["campaign"] = round(time.monotonic() - t0, 1)
    summary = {**summarise(work, elapsed, args.budget), "wall_s": round(time.monotonic() - start, 1)}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    pack(work, args.out)
    return summary


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["window", "measure"], default="window")
    parser.add_argument("--budget", type=float, help="seconds for everything (default 480; dry run 150)")
    parser.add_argument("--out", type=Path, help="where the archive and summary.json go")
    parser.add_argument("--work", type=Path, help=f"work folder (default {WORK.relative_to(REPO)}, or "
                                                  f"{WORK.name}_dry for a dry run)")
    parser.add_argument("--results", type=Path, default=campaign.manifest_dirs(campaign.load_manifest())[1],
                        help="completed runs the campaign skips")
    parser.add_argument("--jobs", type=int, help="campaign runs at a time (default: the concurrency phase's best)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: model=small, few batches (default off CUDA)")
    parser.add_argument("--jsonl", type=Path, help="measure: append results here")
    parser.add_argument("--spec", action="append", default=[], help="measure: label:override override ...")
    parser.add_argument("--epochs", type=int, default=GPU["epochs"])
    parser.add_argument("--profile-steps", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "measure":
        measure_main(args, overrides)
        return
    if args.out is None:
        parser.error("--out is required")
    args.dry_run = args.dry_run or not torch.cuda.is_available()
    args.budget = args.budget or (150 if args.dry_run else 480)
    args.work = args.work or WORK.with_name(WORK.name + ("_dry" if args.dry_run else ""))
    summary = window(args)
    print(json.dumps({k: summary[k] for k in ("device", "phase_s", "finished_phases", "tests", "epoch_s", "goals",
                                              "campaign", "wall_s")}, indent=1))


if __name__ == "__main__":
    main()
