"""Runs a campaign manifest until its cells are done or a time budget ends: ``benchmarks/campaign.yaml`` (the
GPU campaign: paper presets) or ``benchmarks/cpu_campaign.yaml`` (the CPU campaign: budget=cpu, one thread per run).

A manifest lists experiments, each a preset name (``experiment=<name>``, its cells named
``<dataset>_<loss>_<protocol>``) or a mapping ``{name, overrides}`` (cells named ``<name>_<protocol>``), and the
protocols, seeds and overrides every run gets; ``results`` and ``runs`` name its directories, ``env`` the
variables its runs start with, ``cpu_s_per_run`` (per dataset) what a run costs before any has been measured.
``folds`` (optional) lists the ``protocol.fold`` values every seed runs (a K-fold ensemble's K runs: with
``protocol.folds=K`` among the overrides); a run is then named ``s<seed>_f<fold>``, else ``s<seed>``.
Each experiment's pending runs (every protocol, every seed not yet completed) go to one ``--multirun`` sweep
through a Hydra launcher (``--launcher``): ``joblib`` (default), ``--jobs`` runs at a time on one machine;
``submitit_local``, each run its own process under submitit (every run of a sweep at once); ``submitit_slurm``,
each run a SLURM job, ``--jobs`` at a time (``hydra.launcher.array_parallelism``; partition, time and the rest
as extra overrides after ``--``). A budget stop ends the local sweep process; SLURM jobs it submitted are the
cluster's to cancel (``scancel``). A run is done when its
``metrics.json`` says ``completed`` in the results directory (committed) or in the runs directory (git-ignored,
so a machine keeps them between commands). Before it starts, ``run`` prints what the pending runs will cost.
Everything else runs again with ``resume=true`` in its run directory: a run that an earlier command left
unfinished continues from its ``last.ckpt``. At the budget's end the sweep's process group is killed (its
checkpoints are written atomically) and its runs are reported ``unfinished`` with the epochs they reached.
If this process itself is killed, the sweep dies with it (PR_SET_PDEATHSIG) and so do its workers
(``grace_lit.orphan_guard``).

    python benchmarks/campaign.py run --jobs 4 --budget 3600      # -- extra overrides after a double dash
    python benchmarks/campaign.py status                          # the report, nothing run
    python benchmarks/campaign.py collect                         # completed runs -> the results directory
    python benchmarks/campaign.py run --manifest benchmarks/cpu_campaign.yaml --jobs 1 --budget 7200
    python benchmarks/campaign.py run --manifest benchmarks/cpu_campaign.yaml --cells 'FD003_*' --jobs 1
    python benchmarks/campaign.py run --manifest benchmarks/fold_ensemble.yaml --launcher submitit_slurm --jobs 20 \
        -- hydra.launcher.partition=cpu hydra.launcher.timeout_min=120
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common import REPO, compose_config
from grace_lit.orphan_guard import die_with_parent

MANIFEST = REPO / "benchmarks" / "campaign.yaml"
RUNS = "multirun/campaign"      # a manifest's defaults for its ``runs`` and ``results`` keys (relative to REPO)
RESULTS = "results/gpu_full"
PRESET_LABEL = "${dataset.name}_${loss.name}"  # a preset's cells: named from the composed config, as label() does
# each launcher's overrides; {jobs}: how many runs at a time
LAUNCHERS = {"joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs={jobs}"),
             "submitit_local": ("hydra/launcher=submitit_local",),
             "submitit_slurm": ("hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism={jobs}")}
REPORTED = ("test/rmse_last", "test/nasa", "best_epoch", "epochs_run", "wall_time_s", "cpu_time_s", "device")


@dataclass
class Cell:
    experiment: str
    protocol: str
    name: str  # <label>_<protocol>: its directory under the runs and results directories
    overrides: tuple[str, ...] = ()  # what selects the experiment


@dataclass
class Sweep:
    experiment: str
    protocols: list[str]
    seeds: list[int]
    runs: list[tuple[str, str]] = field(default_factory=list)  # (cell name, run key), in Hydra's job order
    overrides: tuple[str, ...] = ()
    folds: list[int] | None = None  # the protocol.fold values swept (None: the manifest has no folds)


def run_keys(manifest: Any) -> list[tuple[int, int | None]]:
    """Every (seed, fold) a cell runs, in order; fold None without the manifest's ``folds``."""
    folds = list(manifest.get("folds") or [None])
    return [(seed, fold) for seed in manifest.seeds for fold in folds]


def key(seed: int, fold: int | None) -> str:
    """A run's key in the report; its directory is ``s<key>``."""
    return str(seed) if fold is None else f"{seed}_f{fold}"


def load_manifest(path: Path = MANIFEST) -> Any:
    return OmegaConf.load(path)


def select(manifest: Any, patterns: list[str] | None) -> Any:
    """The manifest with only the experiments whose name matches one of ``patterns`` (all when None)."""
    if patterns:
        kept = [e for e in manifest.experiments if any(fnmatch(experiment(e)[0], p) for p in patterns)]
        if not kept:
            raise SystemExit(f"campaign: no experiment matches --cells {' '.join(patterns)}; names are "
                             f"{', '.join(experiment(e)[0] for e in manifest.experiments)}")
        manifest.experiments = kept
    return manifest


def manifest_dirs(manifest: Any) -> tuple[Path, Path]:
    """(runs, results) of a manifest, under REPO unless absolute."""
    return REPO / manifest.get("runs", RUNS), REPO / manifest.get("results", RESULTS)


@lru_cache
def composed_names(overrides: tuple[str, ...]) -> tuple[str, str]:
    cfg = compose_config(*overrides)
    return cfg.dataset.name, f"{cfg.dataset.name}_{cfg.loss.name}"


def experiment(entry: Any) -> tuple[str, tuple[str, ...], str]:
    """(name, overrides, label) of a manifest entry: a preset name or a mapping {name, overrides}."""
    if isinstance(entry, str):
        overrides = (f"experiment={entry}",)
        return entry, overrides, composed_names(overrides)[1]
    return entry.name, tuple(entry.overrides), entry.name


def cells(manifest: Any) -> list[Cell]:
    """The manifest's cells in order, each named as Hydra will name its runs."""
    out = []
    for entry in manifest.experiments:
        name, overrides, label = experiment(entry)
        out += [Cell(name, p, f"{label}_{p}", overrides) for p in manifest.protocols]
    return out


def run_state(run_dir: Path) -> dict[str, Any]:
    """``status`` (completed | failed | unfinished | absent) and the run's figures or progress."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        result = json.loads(metrics.read_text())
        state = {"status": result["status"], **{k: result.get(k) for k in REPORTED}}
        if result["status"] == "failed":
            state["error"] = str(result.get("error", ""))[:300]
        return state
    if not run_dir.is_dir():
        return {"status": "absent"}
    log = run_dir / "controller_log.csv"  # one row per finished epoch (kept across resumes)
    epochs = max(len(log.read_text().splitlines()) - 1, 0) if log.is_file() else 0
    return {"status": "unfinished", "epochs_done": epochs, "has_checkpoint": (run_dir / "checkpoints" /
                                                                               "last.ckpt").is_file()}


def state(cell: Cell, run: str, runs: Path, results: Path) -> dict[str, Any]:
    """``run``: the run's key (:func:`key`)."""
    done = run_state(results / cell.name / f"s{run}")
    return done if done["status"] == "completed" else run_state(runs / cell.name / f"s{run}")


def plan(manifest: Any, runs: Path, results: Path) -> list[Sweep]:
    """One sweep per experiment with pending runs (protocol x seed x fold, when the pending runs form that
    product; otherwise one per protocol, and one per seed where a seed's pending folds differ), in manifest
    order."""
    sweeps = []
    by_experiment: dict[str, list[Cell]] = {}
    for cell in cells(manifest):
        by_experiment.setdefault(cell.experiment, []).append(cell)
    has_folds = bool(manifest.get("folds"))
    for experiment, group in by_experiment.items():
        pending = {c.protocol: [k for k in run_keys(manifest) if state(c, key(*k), runs, results)["status"]
                                != "completed"] for c in group}
        pending = {p: keys for p, keys in pending.items() if keys}
        if len({tuple(k) for k in pending.values()}) == 1:
            sets = [(list(pending), next(iter(pending.values())))]
        else:
            sets = [([p], keys) for p, keys in pending.items()]
        names = {c.protocol: c.name for c in group}
        for protocols, keys in sets:
            seeds = list(dict.fromkeys(seed for seed, _ in keys))
            folds = list(dict.fromkeys(fold for _, fold in keys))
            product = [(seed, fold) for seed in seeds for fold in folds]
            parts = [(seeds, folds)] if product == keys else [
                ([seed], [fold for s, fold in keys if s == seed]) for seed in seeds]
            for part_seeds, part_folds in parts:
                sweeps.append(Sweep(experiment, protocols, part_seeds,
                                    [(names[p], key(seed, fold)) for p in protocols for seed in part_seeds
                                     for fold in part_folds], group[0].overrides,
                                    part_folds if has_folds else None))
    return sweeps


def sweep_command(sweep: Sweep, manifest: Any, runs: Path, jobs: int, extra: list[str],
                  launcher: str = "joblib") -> list[str]:
    preset = sweep.overrides == (f"experiment={sweep.experiment}",)
    run = "s${seed}" if sweep.folds is None else "s${seed}_f${protocol.fold}"
    subdir = f"{PRESET_LABEL if preset else sweep.experiment}_${{protocol.name}}/{run}"
    folds = [] if sweep.folds is None else [f"protocol.fold={','.join(map(str, sweep.folds))}"]
    # the manifest's overrides first: an experiment's own (budget=cpu_fd002 over budget=cpu) come later and win
    return [sys.executable, "-m", "grace_lit.train", "--multirun", *manifest.overrides, *sweep.overrides,
            f"protocol={','.join(sweep.protocols)}", f"seed={','.join(map(str, sweep.seeds))}", *folds,
            *(o.format(jobs=min(jobs, len(sweep.runs))) for o in LAUNCHERS[launcher]),
            f"hydra.sweep.dir={runs}", f"hydra.sweep.subdir={subdir}", "resume=true", *extra]


def cost(manifest: Any, runs: Path, results: Path) -> dict[str, Any]:
    """What the pending runs need: per dataset, the median CPU time of its completed runs (their wall time where
    they predate ``cpu_time_s``) or, before any, the manifest's ``cpu_s_per_run``; a run left unfinished counts
    whole."""
    done: dict[str, list[float]] = {}
    pending: dict[str, int] = {}
    for cell in cells(manifest):
        dataset = composed_names(cell.overrides)[0]
        for seed, fold in run_keys(manifest):
            run = state(cell, key(seed, fold), runs, results)
            spent = run.get("cpu_time_s") or run.get("wall_time_s")
            if run["status"] == "completed" and spent:
                done.setdefault(dataset, []).append(spent)
            elif run["status"] != "completed":
                pending[dataset] = pending.get(dataset, 0) + 1
    guess = manifest.get("cpu_s_per_run", {})
    per_run = {d: statistics.median(done[d]) if d in done else guess.get(d, float("nan")) for d in pending}
    return {"pending": pending, "s_per_run": per_run, "total_s": sum(n * per_run[d] for d, n in pending.items())}


def cost_line(need: dict[str, Any], jobs: int) -> str:
    parts = ", ".join(f"{d} {n} x {need['s_per_run'][d] / 60:.1f} min" for d, n in need["pending"].items())
    return (f"campaign: {sum(need['pending'].values())} runs pending ({parts or 'none'}): about "
            f"{need['total_s'] / 3600:.1f} CPU-hours, {need['total_s'] / 3600 / jobs:.1f} h at --jobs {jobs}")


def run_until(cmds: list[list[str]], deadline: float, log: Path, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> list[int] | None:
    """Run ``cmds`` at once, each in its own process group, output appended to ``log``; at ``deadline``
    (monotonic clock) kill every group still running. Each child dies with this process too. Returns the exit
    codes, or None if stopped."""
    procs = []
    with open(log, "a") as out:
        try:
            for cmd in cmds:
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True, preexec_fn=partial(die_with_parent, os.getpid())))
            return [p.wait(timeout=max(deadline - time.monotonic(), 0)) for p in procs]
        except subprocess.TimeoutExpired:
            return None
        finally:
            for proc in procs:
                stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole group at once: SIGTERM would let Lightning turn a stopped run into a failed one, and
    every file a run writes is atomic, so its last.ckpt is whole."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def report(manifest: Any, runs: Path, results: Path) -> dict[str, Any]:
    table = [{"cell": c.name, "experiment": c.experiment, "protocol": c.protocol,
              "runs": {key(*k): state(c, key(*k), runs, results) for k in run_keys(manifest)}}
             for c in cells(manifest)]
    counts: dict[str, int] = {}
    for row in table:
        for run in row["runs"].values():
            counts[run["status"]] = counts.get(run["status"], 0) + 1
    return {"counts": counts, "cells": table}


def run_campaign(manifest: Any, runs: Path, results: Path, jobs: int, deadline: float, extra: list[str],
                 log: Path, min_start_s: float = 0.0, env: dict[str, str] | None = None,
                 launcher: str = "joblib") -> dict[str, Any]:
    """Run the pending sweeps in order until ``deadline`` (monotonic); a sweep starts only with at least
    ``min_start_s`` left. Returns the report after the last one, with the sweeps started and stopped."""
    runs.mkdir(parents=True, exist_ok=True)
    started, stopped = [], []
    for sweep in plan(manifest, runs, results):
        if deadline - time.monotonic() < max(min_start_s, 1.0):
            break
        folds = "" if sweep.folds is None else f" folds={sweep.folds}"
        started.append(f"{sweep.experiment} protocol={','.join(sweep.protocols)} seeds={sweep.seeds}{folds}")
        print(f"campaign: {started[-1]}", flush=True)
        if run_until([sweep_command(sweep, manifest, runs, jobs, extra, launcher)], deadline, log, env) is None:
            stopped.append(started[-1])
            break
    return {"sweeps_started": started, "sweeps_stopped": stopped, **report(manifest, runs, results)}


def collect(runs: Path, results: Path) -> list[str]:
    """Copy completed runs (without checkpoints) from ``runs`` into ``results``; existing ones stay."""
    copied = []
    for metrics in sorted(runs.glob("*/s*/metrics.json")):
        run, target = metrics.parent, results / metrics.parent.parent.name / metrics.parent.name
        if json.loads(metrics.read_text())["status"] != "completed" or (target / "metrics.json").is_file():
            continue
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
        copied.append(str(target))
    return copied


def summary_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    for row in rep["cells"]:
        parts = []
        for run_key, run in row["runs"].items():
            extra = (f" rmse={run['test/rmse_last']:.2f}" if run["status"] == "completed" else
                     f" epochs={run['epochs_done']}" if run["status"] == "unfinished" else "")
            parts.append(f"s{run_key}:{run['status']}{extra}")
        lines.append(f"{row['cell']:<28} " + " ".join(parts))
    return lines + [f"counts: {rep['counts']}"]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["run", "status", "collect"])
    parser.add_argument("source", nargs="?", type=Path, help="collect: the run directories to copy from")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--runs", type=Path, help="run directories (default: the manifest's runs)")
    parser.add_argument("--results", type=Path, help="completed runs (default: the manifest's results)")
    parser.add_argument("--jobs", type=int, default=4, help="runs at a time (joblib workers, SLURM array "
                                                               "parallelism)")
    parser.add_argument("--launcher", choices=list(LAUNCHERS), default="joblib",
                        help="Hydra launcher of each sweep (module docstring)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds; then stop, keep checkpoints")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--cells", nargs="+", metavar="PATTERN",
                        help="only the experiments whose name matches one of these (shell patterns: 'FD003_*')")
    args = parser.parse_args(argv)
    manifest = select(load_manifest(args.manifest), args.cells)
    runs, results = manifest_dirs(manifest)
    runs, results = (args.runs or runs).resolve(), (args.results or results).resolve()
    if args.mode == "collect":
        print("\n".join(collect(args.source or runs, results)) or "nothing new to collect")
        return
    print(cost_line(cost(manifest, runs, results), args.jobs), flush=True)
    if args.mode == "run":
        runs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **{k: str(v) for k, v in manifest.get("env", {}).items()}}
        rep = run_campaign(manifest, runs, results, args.jobs, time.monotonic() + args.budget, extra,
                           runs / "campaign.log", env=env, launcher=args.launcher)
    else:
        rep = report(manifest, runs, results)
    print("\n".join(summary_lines(rep)))
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
