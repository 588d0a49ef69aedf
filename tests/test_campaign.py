"""The campaign runner (benchmarks/campaign.py) and its GPU and CPU manifests: the manifests' cells and order, which runs it skips, resumes and
reports, the sweeps it launches, and that neither a budget stop nor a killed runner leaves a process behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, cli_env, composed
from test_orphan_guard import alive, descendants, running_with, wait_for

sys.path.insert(0, str(REPO / "benchmarks"))
import campaign  # noqa: E402

SCRIPT = REPO / "benchmarks" / "campaign.py"
EPOCHS = 4
TINY = ["model=small", "trainer.accelerator=cpu", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


def test_manifest_runs_the_issues_cells_in_order():
    manifest = campaign.load_manifest()
    expected = [f"{dataset}_{loss}_{protocol}" for dataset in ("FD002", "FD001", "FD003", "FD004")
                for loss in ("gaba", "amnl", "gradnorm", "uncertainty") for protocol in ("paper", "holdout")]
    cells = campaign.cells(manifest)
    assert [c.name for c in cells] == expected
    assert cells[0].experiment == "paper_FD002_grace" and list(manifest.seeds) == [42, 123, 456, 789, 1024]
    cfg = composed([f"experiment={cells[3].experiment}", f"protocol={cells[3].protocol}", *manifest.overrides])
    assert (cfg.dataset.name, cfg.loss.name, cfg.protocol.name, cfg.model.backbone.hidden_size,
            cfg.trainer.accelerator, cfg.trainer.precision) == ("FD002", "amnl", "holdout", 256, "gpu", "32-true")


def test_cpu_manifest_runs_the_issues_cells():
    """Issue 21's cells: FD001 x eleven controllers and GABA on the cap's scale, FD002-FD004 x the first seven and
    GABA on the cap's scale; every run the CPU profile, five cuts, one thread; only the controller differs."""
    manifest = campaign.load_manifest(REPO / "benchmarks" / "cpu_campaign.yaml")
    first = ["grace", "amnl", "gradnorm", "uncertainty", "fixed_floor", "fixed_equal", "single_task"]
    expected = [f"FD001_{c}_holdout" for c in [*first, "upgrad", "pcgrad", "mgda", "dwa", "grace_scaled"]]
    expected += [f"{d}_{c}_holdout" for d in ("FD002", "FD003", "FD004") for c in [*first, "grace_scaled"]]
    cells = campaign.cells(manifest)
    assert [c.name for c in cells] == expected and list(manifest.seeds) == [42, 123, 456, 789, 1024]
    assert campaign.manifest_dirs(manifest) == (REPO / "multirun/cpu_campaign", REPO / "results/cpu_campaign")
    assert manifest.env.OMP_NUM_THREADS == 1
    wanted = ("FD001_grace_holdout", "FD001_fixed_floor_holdout", "FD001_grace_scaled_holdout",
              "FD002_grace_holdout", "FD003_grace_holdout", "FD004_single_task_holdout")
    configs = {c.name: composed([*manifest.overrides, *c.overrides, f"protocol={c.protocol}"]) for c in cells
               if c.name in wanted}  # the runner's order: the manifest's overrides, then the experiment's
    floor = configs["FD001_fixed_floor_holdout"]
    assert list(floor.loss.controller.weights) == [0.05, 0.95] and floor.protocol.val_cuts == 5
    assert (floor.model.backbone.hidden_size, floor.callbacks.ema.warmup) == (32, True)  # budget=cpu
    assert configs["FD001_grace_scaled_holdout"].rul_loss.fn.scale == configs["FD001_grace_holdout"].dataset.max_rul
    assert {cfg.rul_loss.name for cfg in configs.values()} == {"wmse"}
    # the six-condition subsets take the profile chosen on FD002's held-out units (batch 512), the others 256
    assert {n: cfg.data.batch_size for n, cfg in configs.items() if "grace_holdout" in n or "FD004" in n} == {
        "FD001_grace_holdout": 256, "FD002_grace_holdout": 512, "FD003_grace_holdout": 256,
        "FD004_single_task_holdout": 512}
    assert {cfg.optimizer.lr for cfg in configs.values()} == {2e-3}
    sweep = campaign.plan(manifest, REPO / "absent", REPO / "absent")[4]
    cmd = campaign.sweep_command(sweep, manifest, REPO / "runs", jobs=1, extra=[])
    assert "hydra.sweep.subdir=FD001_fixed_floor_${protocol.name}/s${seed}" in cmd
    fd002 = next(s for s in campaign.plan(manifest, REPO / "absent", REPO / "absent") if s.experiment == "FD002_grace")
    args = [a for a in campaign.sweep_command(fd002, manifest, REPO / "runs", jobs=1, extra=[])[4:]
            if not a.startswith("seed=")]
    assert composed([*args, "seed=42"]).data.batch_size == 512  # the experiment's budget wins over the manifest's


def test_cells_option_keeps_the_matching_experiments_in_order():
    manifest = campaign.load_manifest(REPO / "benchmarks" / "cpu_campaign.yaml")
    kept = campaign.select(manifest, ["FD003_*", "FD001_grace"])
    assert [c.name for c in campaign.cells(kept)] == ["FD001_grace_holdout"] + [
        f"FD003_{c}_holdout" for c in ("grace", "amnl", "gradnorm", "uncertainty", "fixed_floor", "fixed_equal",
                                       "single_task", "grace_scaled")]
    with pytest.raises(SystemExit, match=r"no experiment matches --cells FD009_\*; names are FD001_grace, "):
        campaign.select(manifest, ["FD009_*"])


def test_cost_counts_pending_runs_at_the_measured_time(tmp_path):
    manifest = OmegaConf.create({"seeds": [1, 2, 3], "protocols": ["holdout"], "overrides": [],
                                 "cpu_s_per_run": {"FD001": 100, "FD003": 50},
                                 "experiments": [{"name": "FD001_a", "overrides": ["dataset=FD001"]},
                                                 {"name": "FD003_a", "overrides": ["dataset=FD003"]}]})
    for seed, spent in [(1, {"wall_time_s": 60.0}), (2, {"wall_time_s": 200.0, "cpu_time_s": 80.0})]:
        write_run(tmp_path / "results" / "FD001_a_holdout" / f"s{seed}", "completed")
        metrics = tmp_path / "results" / "FD001_a_holdout" / f"s{seed}" / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), **spent}))  # CPU time, else wall time
    need = campaign.cost(manifest, tmp_path / "runs", tmp_path / "results")
    assert need["pending"] == {"FD001": 1, "FD003": 3}
    assert need["total_s"] == 70.0 + 3 * 50  # FD001 at its completed runs' median, FD003 at the manifest's guess
    assert campaign.cost_line(need, jobs=2).startswith("campaign: 4 runs pending")


def write_run(run_dir: Path, status: str | None, epochs: int = 0) -> None:
    run_dir.mkdir(parents=True)
    if status:
        (run_dir / "metrics.json").write_text(json.dumps({"status": status, "test/rmse_last": 12.5, "error": "x"}))
    if epochs:
        (run_dir / "controller_log.csv").write_text("epoch,weight_rul\n" + "".join(f"{e},0.5\n" for e in range(epochs)))


def test_plan_skips_completed_runs_and_groups_the_rest(tmp_path):
    manifest = OmegaConf.create({"seeds": [1, 2], "protocols": ["paper", "holdout"], "overrides": [],
                                 "experiments": ["paper_FD001_grace", "paper_FD001_amnl", "paper_FD003_amnl"]})
    results, runs = tmp_path / "results", tmp_path / "runs"
    write_run(results / "FD001_gaba_paper" / "s1", "completed")
    write_run(runs / "FD001_gaba_holdout" / "s1", "completed")
    write_run(runs / "FD001_gaba_holdout" / "s2", None, epochs=3)
    write_run(runs / "FD001_amnl_paper" / "s1", "failed")
    write_run(results / "FD003_amnl_paper" / "s1", "completed")
    sweeps = campaign.plan(manifest, runs, results)
    assert [(s.experiment, s.protocols, s.seeds) for s in sweeps] == [
        ("paper_FD001_grace", ["paper", "holdout"], [2]),          # s1 done in results/ and in runs/
        ("paper_FD001_amnl", ["paper", "holdout"], [1, 2]),        # a failed run runs again
        ("paper_FD003_amnl", ["paper"], [2]), ("paper_FD003_amnl", ["holdout"], [1, 2])]
    assert sweeps[0].runs == [("FD001_gaba_paper", "2"), ("FD001_gaba_holdout", "2")]
    report = campaign.report(manifest, runs, results)
    states = {(row["cell"], seed): run for row in report["cells"] for seed, run in row["runs"].items()}
    assert states[("FD001_gaba_holdout", "2")] == {"status": "unfinished", "epochs_done": 3, "has_checkpoint": False}
    assert states[("FD001_amnl_paper", "1")]["status"] == "failed"
    assert states[("FD001_gaba_paper", "1")]["test/rmse_last"] == 12.5
    assert report["counts"] == {"completed": 3, "unfinished": 1, "failed": 1, "absent": 7}


def test_sweep_command_names_each_run_as_the_runner_looks_for_it(tmp_path):
    manifest = campaign.load_manifest()
    sweep = campaign.plan(manifest, tmp_path / "runs", tmp_path / "results")[0]
    cmd = campaign.sweep_command(sweep, manifest, tmp_path / "runs", jobs=8, extra=["model=small"])
    assert cmd[1:4] == ["-m", "grace_lit.train", "--multirun"] and "hydra.launcher.n_jobs=8" in cmd
    args = cmd[4:]
    for cell, seed in [sweep.runs[0], sweep.runs[-1]]:  # one job of the sweep: its own protocol and seed
        protocol = cell.rsplit("_", 1)[1]
        job = [a for a in args if not a.startswith(("protocol=", "seed="))] + [f"protocol={protocol}", f"seed={seed}"]
        cfg = composed(job, hydra=True)
        assert cfg.hydra.sweep.subdir == f"{cell}/s{seed}"
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.resume is True


def test_budget_stop_kills_the_whole_process_group(tmp_path):
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
            "time.sleep(60)"
    start = time.monotonic()
    codes = campaign.run_until([[sys.executable, "-c", child], [sys.executable, "-c", "pass"]], start + 2,
                               tmp_path / "log")
    assert codes is None and time.monotonic() - start < 15
    assert wait_for(lambda: not running_with("time.sleep(60)"), 5)  # SIGKILL is delivered at once, death soon after


def start_runner(manifest: Path, runs: Path, results: Path, data_cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), "run", "--manifest", str(manifest), "--runs", str(runs),
                             "--results", str(results), "--jobs", "2", "--json", str(runs / "report.json")],
                            cwd=REPO, env=cli_env(data_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_killed_runner_leaves_nothing_and_its_runs_resume(tmp_path, data_cache):
    """Kill the runner while two runs train: nothing survives, the runs are reported unfinished; the next
    command resumes them to the end; the one after finds nothing to do."""
    manifest, runs, results = tmp_path / "campaign.yaml", tmp_path / "runs", tmp_path / "results"
    OmegaConf.save(OmegaConf.create({"seeds": [1, 2], "protocols": ["paper"], "experiments": ["paper_FD001_grace"],
                                     "overrides": [*TINY, f"trainer.max_epochs={EPOCHS}",
                                                   "trainer.limit_train_batches=10"]}), manifest)
    runner, workers = start_runner(manifest, runs, results, data_cache), set()
    try:
        # an epoch counts once both its log row and its checkpoint are written (the checkpoint comes second)
        ends = [runs / "FD001_gaba_paper" / f"s{s}" / f for s in (1, 2) for f in ("controller_log.csv",
                                                                                  "checkpoints/last.ckpt")]
        assert wait_for(lambda: all(p.is_file() for p in ends) or runner.poll() is not None, 300), runner.stdout
        assert runner.poll() is None, runner.communicate()[0][-3000:]
        workers = descendants(runner.pid)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        wait_for(lambda: not any(alive(p) for p in workers), 10)
        assert {p for p in workers if alive(p)} == set()
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    states = campaign.report(OmegaConf.load(manifest), runs, results)["cells"][0]["runs"]
    assert [s["status"] for s in states.values()] == ["unfinished", "unfinished"]
    assert all(1 <= s["epochs_done"] < EPOCHS and s["has_checkpoint"] for s in states.values())

    resumed = start_runner(manifest, runs, results, data_cache)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    report = json.loads((runs / "report.json").read_text())
    assert report["sweeps_started"] == ["paper_FD001_grace protocol=paper seeds=[1, 2]"]
    assert report["counts"] == {"completed": 2}
    for seed in (1, 2):
        run = runs / "FD001_gaba_paper" / f"s{seed}"
        assert json.loads((run / "metrics.json").read_text())["epochs_run"] == EPOCHS
        epochs = [line.split(",")[0] for line in (run / "controller_log.csv").read_text().splitlines()[1:]]
        assert epochs == [str(e) for e in range(EPOCHS)]  # the epochs before the kill kept, none done twice

    again = campaign.run_campaign(campaign.load_manifest(manifest), runs, results, 2, time.monotonic() + 60, [],
                                  runs / "campaign.log")  # the runner's own call, in this process: nothing to run
    assert (again["sweeps_started"], again["counts"]) == ([], {"completed": 2})
    assert [Path(p).relative_to(results).as_posix() for p in campaign.collect(runs, results)] == \
        ["FD001_gaba_paper/s1", "FD001_gaba_paper/s2"]
    assert not list(results.glob("*/*/checkpoints")) and (results / "FD001_gaba_paper/s1/metrics.json").is_file()


def test_fold_manifest_runs_each_subsets_five_folds_of_one_split_in_one_sweep(tmp_path):
    """benchmarks/fold_ensemble.yaml: GRACE x FD001-FD004 x protocol.fold 0-4 (protocol.folds=5, one split seed),
    the CPU campaign's profiles; each subset's five folds go to one sweep, each run named s<seed>_f<fold>, and a
    fold completed is not run again."""
    manifest = campaign.load_manifest(REPO / "benchmarks" / "fold_ensemble.yaml")
    assert [c.name for c in campaign.cells(manifest)] == [f"FD00{i}_grace_holdout" for i in range(1, 5)]
    sweeps = campaign.plan(manifest, tmp_path / "runs", tmp_path / "results")
    assert [(s.experiment, s.seeds, s.folds) for s in sweeps] == [(f"FD00{i}_grace", [42], [0, 1, 2, 3, 4])
                                                                  for i in range(1, 5)]
    cmd = campaign.sweep_command(sweeps[1], manifest, tmp_path / "runs", jobs=5, extra=[])
    assert "protocol.fold=0,1,2,3,4" in cmd and "hydra.launcher.n_jobs=5" in cmd
    job = [a for a in cmd[4:] if not a.startswith(("protocol=", "seed=", "protocol.fold="))]
    cfg = composed([*job, "protocol=holdout", "seed=42", "protocol.fold=3"], hydra=True)
    assert (cfg.dataset.name, cfg.loss.name, cfg.protocol.folds, cfg.protocol.fold, cfg.data.split_seed,
            cfg.protocol.val_cuts, cfg.data.batch_size) == ("FD002", "gaba", 5, 3, 42, 5, 512)  # budget=cpu_fd002
    assert cfg.hydra.sweep.subdir == "FD002_grace_holdout/s42_f3"
    write_run(tmp_path / "results" / "FD001_grace_holdout" / "s42_f1", "completed")
    first = campaign.plan(manifest, tmp_path / "runs", tmp_path / "results")[0]
    assert first.folds == [0, 2, 3, 4] and first.runs[0] == ("FD001_grace_holdout", "42_f0")
    row = campaign.report(manifest, tmp_path / "runs", tmp_path / "results")["cells"][0]
    assert list(row["runs"]) == [f"42_f{k}" for k in range(5)] and row["runs"]["42_f1"]["status"] == "completed"


@pytest.mark.parametrize("launcher, target, parallel", [
    ("joblib", "JoblibLauncher", "hydra.launcher.n_jobs=3"),
    ("submitit_local", "LocalLauncher", None),
    ("submitit_slurm", "SlurmLauncher", "hydra.launcher.array_parallelism=3")])
def test_each_launcher_composes_the_sweep_it_is_given(tmp_path, launcher, target, parallel):
    """--launcher: the sweep's command names Hydra's launcher (no cluster here: the command is composed, not run)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    manifest = campaign.load_manifest(REPO / "benchmarks" / "fold_ensemble.yaml")
    sweep = campaign.plan(manifest, tmp_path / "runs", tmp_path / "results")[0]
    cmd = campaign.sweep_command(sweep, manifest, tmp_path / "runs", jobs=3, extra=[], launcher=launcher)
    assert f"hydra/launcher={launcher}" in cmd and (parallel is None or parallel in cmd)
    job = [a for a in cmd[4:] if not a.startswith(("protocol=", "seed=", "protocol.fold="))]
    cfg = composed([*job, "protocol=holdout", "seed=42", "protocol.fold=0"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.hydra.sweep.subdir == "FD001_grace_holdout/s42_f0"


def test_tuned_manifest_runs_the_issues_controllers_under_the_tuned_profiles():
    """Issue 30's rerun: GRACE, fixed 0.5/0.5, fixed at GABA's floor, single-task, AMNL and Uncertainty, each subset
    under its tuned budget= preset (5 CPU-minutes a run), five cuts, one thread; only the controller differs."""
    manifest = campaign.load_manifest(REPO / "benchmarks" / "tuned_campaign.yaml")
    controllers = ["grace", "fixed_equal", "fixed_floor", "single_task", "amnl", "uncertainty"]
    cells = campaign.cells(manifest)
    datasets = sorted({c.name.split("_")[0] for c in cells})
    assert [c.name for c in cells] == [f"{d}_{c}_holdout" for d in datasets for c in controllers]
    assert list(manifest.seeds) == [42, 123, 456, 789, 1024] and manifest.env.OMP_NUM_THREADS == 1
    for dataset in datasets:
        configs = {c.name: composed([*manifest.overrides, *c.overrides, f"protocol={c.protocol}"]) for c in cells
                   if c.name.startswith(dataset)}
        profile = {OmegaConf.to_yaml(cfg.model) + OmegaConf.to_yaml(cfg.optimizer) + OmegaConf.to_yaml(cfg.callbacks)
                   + str(cfg.data.batch_size) + str(cfg.dataset.window) for cfg in configs.values()}
        assert len(profile) == 1  # one profile per subset, whatever the controller
        cfg = configs[f"{dataset}_grace_holdout"]
        assert (cfg.dataset.name, cfg.loss.name, cfg.rul_loss.name) == (dataset, "gaba", "wmse")
        assert (cfg.protocol.val_cuts, cfg.callbacks.cpu_budget.minutes) == (5, 5)
        assert list(configs[f"{dataset}_fixed_floor_holdout"].loss.controller.weights) == [0.05, 0.95]
        assert configs[f"{dataset}_single_task_holdout"].loss.name == "single_task"
