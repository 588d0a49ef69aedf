"""Every benchmark script runs on a CPU at a tiny size and prints its result line: a benchmark that no longer
matches the code fails here, not when someone next measures. (The GPU benchmarks and the campaign have their
own tests.)"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, cli_env
from grace_lit.data.synthetic_ncmapss import generate

sys.path.insert(0, str(REPO / "benchmarks"))
from plain_reference import Epoch, chosen  # noqa: E402

NUMBER = r"[0-9]+\.[0-9]+"


def bench(script: str, args: list[str], data_cache: Path) -> str:
    run = subprocess.run([sys.executable, script, *args], cwd=REPO / "benchmarks", env=cli_env(data_cache),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("script, args, last", [
    ("gaba_step.py", ["--rounds", "1", "--steps", "1", "--model", "small", "--threads", "1", "--clock", "cpu"],
     rf"fused_vs_single={NUMBER} reference_vs_single={NUMBER}"),
    ("lightning_overhead.py", ["--rounds", "1", "--epochs", "2", "--batches", "2", "--threads", "1"],
     rf"lightning_vs_plain={NUMBER}"),
    ("data_prep.py", ["--rounds", "1", "--threads", "1"], rf"fd004_cold_s={NUMBER} fd004_prep_s={NUMBER}"),
    ("plain_reference.py", ["--max-epochs", "2", "--max-batches", "2", "--threads", "1"],
     rf"plain_reference budgets_min=0.5,1,2,5 test_rmse_best=({NUMBER},){{3}}{NUMBER} "
     rf"test_rmse_last=({NUMBER},){{3}}{NUMBER} cpu_s={NUMBER} epochs=2"),
    # the framework variant only (the plain loop has its own line above; a baseline worktree adds nothing here)
    ("cpu_epoch.py", ["--variants", "current", "--rounds", "1", "--short", "1", "--long", "2", "--batches", "1"],
     r"baseline_vs_current=nan current_vs_plain=nan"),
])
def test_benchmark_runs_and_prints_its_result(script, args, last, data_cache):
    assert re.fullmatch(last, bench(script, args, data_cache))


def test_the_plain_curve_chooses_the_best_held_out_epoch_finished_within_each_budget():
    epochs = [Epoch(1, 10.0, 5.0), Epoch(2, 20.0, 3.0), Epoch(3, 30.0, 4.0), Epoch(4, 40.0, 3.0), Epoch(5, 50.0, 2.0)]
    assert chosen(epochs, 5.0) == (None, None)  # no epoch finished within it
    assert chosen(epochs, 20.0) == (2, 2)  # an epoch ending exactly at the budget counts
    assert chosen(epochs, 35.0) == (2, 3)  # the best, not the last
    assert chosen(epochs, 45.0) == (2, 4)  # a tie keeps the earlier epoch, as the framework's checkpoint does
    assert chosen(epochs, 60.0) == (5, 5)


def test_the_plain_reference_gives_the_same_digits_twice_and_names_its_environment(tmp_path, data_cache):
    """Two runs of one seed: the same held-out score every epoch, the same chosen epochs and test scores."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        bench("plain_reference.py", ["--max-epochs", "3", "--max-batches", "3", "--threads", "1", "--seed", "7",
                                     "--budgets", "1", "2", "--out", str(out)], data_cache)
        runs.append(json.loads(out.read_text()))
    first, second = runs
    assert [e["val_rmse_last"] for e in first["epochs"]] == [e["val_rmse_last"] for e in second["epochs"]]
    assert first["curve"] == second["curve"] and len(first["curve"]) == 2
    assert (first["split_seed"], first["val_cuts"], first["protocol"]) == (7, 5, "holdout")
    assert first["environment"]["torch"] == torch.__version__ and first["environment"]["kernels"].startswith("cpu")
    assert first["command"].startswith("python benchmarks/plain_reference.py ") and first["git_commit"]


def test_ncmapss_reader_benchmark_on_a_small_generated_file(tmp_path, data_cache):
    path = generate(tmp_path / "ds02.h5", cycles=10, flight_rows=150, seed=0)
    args = ["--rounds", "1", "--file", str(path), "--presets", "ncmapss_20feat"]
    assert re.fullmatch(rf"peak_vs_selected={NUMBER}", bench("ncmapss_reader.py", args, data_cache))


def test_every_benchmark_script_is_smoke_tested_here_or_beside_its_owner():
    here = {"gaba_step.py", "lightning_overhead.py", "data_prep.py", "ncmapss_reader.py", "common.py",
            "plain_reference.py", "cpu_epoch.py"}
    elsewhere = {"gpu_window.py", "gpu_throughput.py", "campaign.py"}  # tests/test_campaign.py, the GPU tests
    assert {p.name for p in (REPO / "benchmarks").glob("*.py")} <= here | elsewhere


def test_the_plain_curve_table_sets_framework_runs_beside_the_first_budget_not_below_their_cpu_time(tmp_path, capsys):
    """Fabricated files: plain runs of seeds 1 and 2 at budgets 1 and 2 CPU-minutes; framework cells at 1.5 and
    3 CPU-minutes (the second beyond every budget), seed 3 of the first known to the framework only."""
    sys.path.insert(0, str(REPO / "results" / "plain_curve"))
    import table

    for seed, (at1, at2) in {1: (16.0, 15.0), 2: (18.0, 13.0)}.items():
        curve = [{"budget_min": b, "epochs": 2 * b, "best_epoch": b, "last_epoch": 2 * b, "test_rmse_best": r,
                  "test_rmse_last": r + 1.0, "val_rmse_last": 1.0} for b, r in ((1, at1), (2, at2))]
        (tmp_path / f"FD001_s{seed}.json").write_text(json.dumps({"dataset": "FD001", "seed": seed, "curve": curve}))
    runs = tmp_path / "runs"
    for cell, seed, cpu_s, rmse in [("FD001_grace_holdout", 1, 80.0, 12.0), ("FD001_grace_holdout", 2, 100.0, 13.0),
                                    ("FD001_grace_holdout", 3, 999.0, 99.0), ("FD001_slow_holdout", 1, 180.0, 11.0)]:
        (runs / cell / f"s{seed}").mkdir(parents=True)
        (runs / cell / f"s{seed}" / "metrics.json").write_text(json.dumps({
            "status": "completed", "protocol": "holdout", "dataset": "FD001", "seed": seed, "cpu_time_s": cpu_s,
            "test/rmse_last": rmse}))
    other = tmp_path / "tuned" / "FD001_grace_holdout" / "s1"  # a cell of the same name in another folder
    other.mkdir(parents=True)
    (other / "metrics.json").write_text((runs / "FD001_slow_holdout" / "s1" / "metrics.json").read_text())
    rows = table.matched(table.curve(tmp_path), table.framework([runs, tmp_path / "tuned"])).set_index("cell")
    grace, slow = rows.loc["runs/FD001_grace_holdout"], rows.loc["runs/FD001_slow_holdout"]
    assert rows.loc["tuned/FD001_grace_holdout"].test_rmse == 11.0
    # seeds 1 and 2: 1.5 CPU-minutes, so the 2-minute budget, where the plain loop scores (15 + 13) / 2
    assert (grace.seeds, grace.cpu_min, grace.test_rmse, grace.plain_budget_min) == (2, 1.5, 12.5, 2)
    assert grace.plain_rmse == 14.0 and grace.ratio == pytest.approx(12.5 / 14.0)
    assert pd.isna(slow.plain_rmse) and pd.isna(slow.ratio)  # 3 CPU-minutes: no budget that large
    table.main([str(tmp_path), "--against", str(runs), "--plot", str(tmp_path / "curve.png")])
    printed = capsys.readouterr().out
    assert "| FD001 | runs/FD001_grace_holdout | 2 | 1.50 | 12.50 | 2 CPU-min | 14.00 | 0.89 |" in printed
    assert "| FD001 | runs/FD001_slow_holdout | 1 | 3.00 | 11.00 | — | — | — |" in printed
    assert (tmp_path / "curve.png").stat().st_size > 0
