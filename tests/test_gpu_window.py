"""The prepared GPU command's CPU dry run (benchmarks/gpu_window.py --dry-run): every phase on the same code
path as on a GPU, one archive without checkpoints plus summary.json, and a second command on the same machine
that redoes nothing finished."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import REPO, cli_env
from test_orphan_guard import running_with

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_window  # noqa: E402


def window(tmp_path: Path, data_cache: Path) -> dict:
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_window.py"), "--dry-run", "--budget", "240",
                          "--out", str(out), "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
                         cwd=REPO, env=cli_env(data_cache), capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_window.tar.gz", "summary.json"]
    return json.loads((out / "summary.json").read_text())


def test_dry_run_runs_every_phase_and_packs_one_archive(tmp_path, data_cache):
    summary = window(tmp_path, data_cache)
    assert summary["finished_phases"] == ["concurrency", "epochs", "launch", "tests"]
    assert summary["tests"]["tests"] == summary["tests"]["skipped"] > 0  # the CUDA cases, skipped on a CPU
    assert summary["tests"]["failures"] == summary["tests"]["errors"] == 0
    assert set(summary["epoch_s"]) == {"gaba-float32", "gaba-bf16-fused"}
    assert all(isinstance(t, float) and t > 0 for t in summary["epoch_s"].values())
    alone, two = summary["concurrency"]
    assert (alone["processes"], alone["median_epoch_s"]) == (1, summary["epoch_s"]["gaba-float32"])
    assert two["processes"] == 2 and two["slowdown"] == two["median_epoch_s"] / alone["median_epoch_s"]
    assert summary["launch"]["b1024_over_b256"] > 0
    assert summary["campaign"]["counts"] == {"completed": 2}  # FD002 GRACE, seed 42, both protocols
    with tarfile.open(tmp_path / "out" / "gpu_window.tar.gz") as tar:
        names = tar.getnames()
    assert not [n for n in names if "checkpoints" in n or n.endswith(".ckpt")]
    for name in ("tests/junit.xml", "measure/epochs.jsonl", "measure/profile_gaba-float32-b256.txt",
                 "runs/FD002_gaba_paper/s42/metrics.json", "runs/FD002_gaba_holdout/s42/predictions.csv"):
        assert f"gpu_window/{name}" in names
    assert (tmp_path / "work" / "runs" / "FD002_gaba_paper" / "s42" / "checkpoints" / "last.ckpt").is_file()

    # the same machine, a later command (the script's own function, in this process): nothing finished is redone
    again = gpu_window.window(argparse.Namespace(budget=240.0, out=tmp_path / "out", work=tmp_path / "work",
                                                 results=tmp_path / "results", jobs=None, dry_run=True))
    assert list(again["phase_s"]) == ["campaign"]
    assert again["campaign"]["counts"] == {"completed": 2} and again["epoch_s"] == summary["epoch_s"]
    assert running_with(str(tmp_path)) == []  # nothing the commands started with the work folder in its arguments


GPU_MACHINE_LACKS = ("mlflow", "submitit", "optuna", "torchjd", "crepes", "sklearn")
IMPORTS = f"""
import sys
for name in {GPU_MACHINE_LACKS!r}:
    sys.modules[name] = None  # import fails, as on the GPU machine
sys.path[:0] = ["benchmarks", "tests"]
import campaign, gpu_window, test_gpu  # noqa: F401
from common import compose_config
from grace_lit.train import build
for loss in ("gaba", "amnl", "gradnorm", "uncertainty", "fixed", "single_task"):
    build(compose_config("loss=" + loss, "model=small", "trainer=cpu", "paths.output_dir=" + sys.argv[1]))
print("imported")
"""


def test_the_gpu_path_needs_no_package_the_gpu_machine_lacks(tmp_path, data_cache):
    """The window's scripts, the GPU tests and every built controller, with those packages unimportable: an
    optional package must stay imported where it is used, never on this path."""
    run = subprocess.run([sys.executable, "-c", IMPORTS, str(tmp_path)], cwd=REPO, env=cli_env(data_cache),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "imported" in run.stdout, run.stderr[-3000:]
