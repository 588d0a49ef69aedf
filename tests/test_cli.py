"""The real CLI in a subprocess: Hydra composition, a lightning.Trainer, files on disk."""
from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, cli_env
from grace_lit.console import quiet

TINY = ["dataset=FD001", "model=small", "trainer.max_epochs=2", "trainer.limit_train_batches=5"]


def train(args: list[str], data_cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grace_lit.train", *args], cwd=REPO, env=cli_env(data_cache),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_cache) -> tuple[subprocess.CompletedProcess, Path]:
    """One tiny run, piped as in a log file, with its config printed."""
    out = tmp_path_factory.mktemp("single")
    run = train([*TINY, "print_config=true", f"hydra.run.dir={out}"], data_cache)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, out


def test_single_run_writes_metrics_predictions_checkpoints(single):
    run, tmp_path = single
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (metrics["protocol"], metrics["dataset"], metrics["loss"], metrics["seed"]) == ("paper", "FD001", "gaba", 42)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (0, 1)
    for key in ("test/rmse_last", "test/nasa", "test/health_acc", "wall_time_s", "cpu_time_s"):
        assert metrics[key] is not None and metrics[key] >= 0
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == 100 and predictions["unit"].tolist() == list(range(1, 101))
    rmse = ((predictions.rul_pred - predictions.rul_true) ** 2).mean() ** 0.5
    assert abs(rmse - metrics["test/rmse_last"]) < 1e-3  # the file holds what was scored
    # scored against the capped truth (recorded) and against the raw RUL_FD001 file beside it
    assert (metrics["cap_test_rul"], metrics["max_rul"]) == (True, 125)
    assert (predictions.rul_true == predictions.rul_true_raw.clip(upper=125)).all()
    assert (predictions.rul_true_raw > 125).sum() == 11  # FD001's test units above the cap
    raw_rmse = ((predictions.rul_pred - predictions.rul_true_raw) ** 2).mean() ** 0.5
    assert abs(raw_rmse - metrics["test/rmse_last_raw"]) < 1e-3 and metrics["test/nasa_raw"] > 0
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    log = pd.read_csv(tmp_path / "controller_log.csv")
    assert list(log.epoch) == [0, 1] and {"weight_rul", "weight_health"} <= set(log.columns)
    assert "protocol=paper" in run.stderr + run.stdout
    # protocol=paper: no held-out units, so no interval (empty columns, no calibration.csv) and the reason said
    assert predictions[["rul_lo", "rul_hi", "rul_hi_open", "nominal_coverage"]].isna().all().all()
    assert not (tmp_path / "calibration.csv").exists()
    assert metrics["interval/form"] is None and metrics["test/interval_coverage"] is None
    assert metrics["interval/note"].startswith("no interval: protocol=paper has no held-out units")
    assert metrics["interval/note"] in run.stderr + run.stdout
    # the environment that made the digits, read here independently of the run
    env = metrics["environment"]
    assert (env["python"], env["torch"], env["numpy"]) == (platform.python_version(), torch.__version__,
                                                          np.__version__)
    assert env["lightning"] == version("lightning") and env["hydra-core"] == version("hydra-core")
    assert env["kernels"] == f"cpu {torch.backends.cpu.get_cpu_capability()}"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: the processor's own name
        assert f"model name\t: {env['cpu']}" in cpuinfo.read_text()


def test_a_piped_run_prints_summary_config_one_line_per_epoch_and_result_without_noise(single):
    run, tmp_path = single
    out = run.stdout + run.stderr
    assert "model small: 40,868 parameters; controller gaba + wmse" in out and "fresh" in out
    assert " 1 threads), precision 32-true, up to 2 epochs; threads=1 (per process)" in out  # conf/train.yaml
    assert f"run directory: {tmp_path}" in out
    assert "optimizer" in out and "lr: 0.001" in out  # the config tree
    epochs = [line for line in out.splitlines() if "epoch " in line and " | " in line and "loss_rul=" in line]
    assert [line.split("epoch ")[1].split(" ")[0] for line in epochs] == ["1/2", "2/2"]
    for label in ("loss_health=", "test/rmse_last=", "weight_rul=", "weight_health=", "lr="):
        assert label in epochs[-1]
    assert "test rmse_last=" in out and f"files in {tmp_path}/: checkpoints/" in out
    for noise in ("litlogger", "LeafSpec", "was configured so", "sync_dist", "Seed set to", "GPU available",
                  "not writable"):
        assert noise not in out
    assert "cost estimate" not in out  # 2 epochs of 5 batches: under callbacks.progress.estimate.quiet_below_s


def seconds(text: str) -> int:
    """progress.duration's text back in seconds: 3s, 1m40s, 2h05m."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    hours, minutes, secs = (int(g or 0) for g in match.groups())
    return 3600 * hours + 60 * minutes + secs


def test_a_long_run_on_a_cpu_says_its_cost_and_the_fast_path_after_its_first_batches(tmp_path, data_cache):
    """500 epochs of 40 batches, the default thresholds: the estimate and the hint come after the 6th batch
    (read from the running process, which is then stopped: nothing waits for the run)."""
    run = subprocess.Popen([sys.executable, "-m", "grace_lit.train", "dataset=FD001", "model=small",
                            "trainer.max_epochs=500", "trainer.limit_train_batches=40", f"hydra.run.dir={tmp_path}"],
                           cwd=REPO, env=cli_env(data_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    lines = []
    try:
        for line in run.stdout:
            lines.append(line)
            if "loss_rul=" in line or len(lines) > 1 and "cost estimate" in lines[-2]:
                break  # the line after the estimate (or the first epoch's line, had it none)
    finally:
        run.kill()
        run.wait()
    estimate, hint = lines[-2], lines[-1]
    found = re.search(r"cost estimate: about (\w+) of training per epoch \(40 batches; timed on batches 2-6\); "
                      r"at most 500 epochs ≈ (\w+), early stopping may end it sooner", estimate)
    assert found, "".join(lines)[-3000:]
    per_epoch, total = seconds(found.group(1)), seconds(found.group(2))
    assert (per_epoch - 0.5) * 500 - 60 <= total <= (per_epoch + 0.5) * 500 + 60  # both rounded for display
    assert total >= 300  # conf/callbacks/default.yaml: quiet_below_s
    assert "the fast path on a CPU: budget=cpu" in hint


def test_the_fast_path_itself_gets_no_hint(tmp_path, data_cache):
    run = train(["dataset=FD001", "budget=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                 "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                 "callbacks.progress.estimate.quiet_below_s=0", f"hydra.run.dir={tmp_path}"], data_cache)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout + run.stderr
    # an epoch of 3 batches, fewer than skip_batches + batches (1 + 5): timed past the skipped one
    assert "(3 batches; timed on batches 2-3); at most 1 epoch ≈ " in out
    assert "fast path" not in out


def test_quiet_drops_the_listed_notices_only():
    quiet()
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    for name, message in [("lightning.pytorch.accelerators.cuda", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"),
                          ("lightning.pytorch.utilities.rank_zero", "`Trainer(limit_val_batches=1.0)` was configured"),
                          ("lightning.pytorch.utilities.rank_zero", "Running in `fast_dev_run` mode: 1 batch"),
                          ("lightning.fabric.utilities.seed", "Seed set to 42")]:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.info(message)
        logger.removeHandler(handler)
    assert seen == ["Running in `fast_dev_run` mode: 1 batch"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet()  # after "always": its filters come first
        warnings.warn("It is recommended to use `self.log('x', ..., sync_dist=True)` when logging on epoch level")
        warnings.warn("The number of training batches (2) is smaller than the logging interval Trainer(...)")
        warnings.warn("GPU available but not used.")
    assert [str(w.message) for w in caught] == ["GPU available but not used."]


def test_type_errors_in_overrides_get_one_message(tmp_path, data_cache):
    run = train(["trainer.max_epochs=abc", "seed=-3", "data.batch_size=1.5", "optimizer.lr=[1,2]",
                 f"hydra.run.dir={tmp_path / 'run'}"], data_cache)
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout
    for key in ("trainer.max_epochs='abc'", "seed=-3", "data.batch_size=1.5", "optimizer.lr=[1, 2]"):
        assert key in run.stdout + run.stderr
    assert not (tmp_path / "run").exists()  # refused before any data or model: no run directory left behind


def test_pytest_filters_the_leafspec_notice_as_training_does():
    """pyproject.toml's filterwarnings: Lightning's use of torch's pytree API warns on every training step."""
    with warnings.catch_warnings(record=True) as caught:  # the filters pytest set for this test stay in force
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                      "treespec.is_leaf()` instead.", FutureWarning)
    assert caught == []


def test_unknown_dataset_lists_choices(tmp_path, data_cache):
    run = train(["dataset=FD009", f"hydra.run.dir={tmp_path}"], data_cache)
    assert run.returncode != 0
    assert "FD001" in run.stderr and "FD009" in run.stderr


def test_multirun_sweep_reports_each_job_and_a_failing_job_does_not_stop_it(tmp_path, data_cache):
    """Two bad jobs run first; the two good ones (seeds 1 and 2) still run, each announced as it ends, and the report
    lists the bad ones with their error."""
    run = train(["--multirun", "optimizer.lr=-1,1e-3", "seed=1,2", *TINY, "trainer.max_epochs=1",
                 f"hydra.sweep.dir={tmp_path}"], data_cache)
    assert run.returncode != 0  # Hydra reports the sweep as failed once every job has run
    assert "optimizer.lr" in run.stdout + run.stderr
    assert all(f"({k} of 4 done)" in run.stdout for k in range(1, 5))
    results = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")}
    assert {name.split("_")[0]: m["status"] for name, m in results.items()} == {
        "0": "failed", "1": "failed", "2": "completed", "3": "completed"}
    assert sorted(m["seed"] for m in results.values() if m["status"] == "completed") == [1, 2]
    report = subprocess.run([sys.executable, "-m", "grace_lit.report", str(tmp_path), "--no-plots"], cwd=REPO,
                            env=cli_env(data_cache), capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "runs.csv")
    failed = runs[runs.status == "failed"]
    assert len(failed) == 2 and all("optimizer.lr" in error for error in failed.error)
    assert "failed" in (tmp_path / "report.md").read_text()
