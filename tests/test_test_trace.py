"""The test trace (protocol.test_trace=true) audits selection and changes nothing: two runs of one command, one with
the trace, end with the same metrics.json numbers, metrics.csv and checkpoint contents, digit for digit (real CLI,
subprocesses, one thread). The trace at the selected epoch is the run's own final test score."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, cli_env
from grace_lit.callbacks.test_trace import TestTrace

ARGS = ["dataset=FD001", "model=small", "protocol=holdout", "protocol.val_cuts=2", "trainer.max_epochs=4",
        "trainer.limit_train_batches=15", "data.batch_size=64", "loss.controller.warmup_steps=4",
        "callbacks.lr_warmup.epochs=1", "callbacks.plateau.patience=0", "callbacks.ema.decay=0.5",
        "callbacks.early_stopping.patience=2", "interval.calibration_cuts=2"]
# what may differ between the two runs: clocks, the command line and the trace's own note
UNEQUAL = {"wall_time_s", "cpu_time_s", "command", "test_trace"}


def train(run_dir: Path, data_cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grace_lit.train", *ARGS, f"hydra.run.dir={run_dir}", *extra],
                            cwd=REPO, env=cli_env(data_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> dict:
    base = tmp_path_factory.mktemp("trace")
    procs = {"plain": train(base / "plain", data_cache), "traced": train(base / "traced", data_cache,
                                                                          "protocol.test_trace=true")}
    out = {}
    for name, proc in procs.items():
        log = proc.communicate(timeout=400)[0]
        assert proc.returncode == 0, log[-3000:]
        out[name] = (base / name, log)
    return out


def test_the_trace_changes_no_number_of_the_run(runs):
    (plain, _), (traced, _) = runs["plain"], runs["traced"]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (plain, traced))
    assert {k: v for k, v in a.items() if k not in UNEQUAL} == {k: v for k, v in b.items() if k not in UNEQUAL}
    assert a["test_trace"] is None and b["test_trace"].startswith("test_trace.csv: ")
    pd.testing.assert_frame_equal(pd.read_csv(plain / "metrics.csv"), pd.read_csv(traced / "metrics.csv"))
    for name in ("predictions.csv", "calibration.csv", "controller_log.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(plain / name), pd.read_csv(traced / name))
    assert not (plain / "test_trace.csv").exists()


def same(a, b) -> bool:
    """Digit-for-digit equality of nested checkpoint contents (tensors, arrays, containers, plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("checkpoint", ["best.ckpt", "last.ckpt"])
def test_the_trace_leaves_the_checkpoints_as_they_were(runs, checkpoint):
    a, b = (torch.load(runs[n][0] / "checkpoints" / checkpoint, map_location="cpu", weights_only=False)
            for n in ("plain", "traced"))
    for key in ("epoch", "global_step", "state_dict", "optimizer_states", "loops", "rng_states"):
        assert same(a[key], b[key]), key
    assert a["callbacks"].keys() == b["callbacks"].keys()  # the trace keeps no state of its own
    for key, state in a["callbacks"].items():  # the EMA shadow; the checkpoints' scores (their paths differ)
        assert same(without_paths(state), without_paths(b["callbacks"][key])), key


def without_paths(state: dict) -> dict:
    """A callback's state without the run directory in it (ModelCheckpoint keys its scores by file path)."""
    kept = {k: v for k, v in state.items() if "path" not in k and k != "best_k_models"}
    return {**kept, "best_k_scores": list(state.get("best_k_models", {}).values())}


def test_the_trace_scores_the_test_set_each_epoch_and_says_it_chose_nothing(runs):
    traced, log = runs["traced"]
    metrics = json.loads((traced / "metrics.json").read_text())
    text = (traced / "test_trace.csv").read_text()
    assert text.startswith("# test_trace.csv: ") and "chose nothing" in text.splitlines()[0]
    trace = pd.read_csv(traced / "test_trace.csv", comment="#")
    assert trace["epoch"].tolist() == list(range(metrics["epochs_run"]))
    # the selected epoch's trace row is the final test, scored by trainer.test from best.ckpt (other batches)
    row = trace.set_index("epoch").loc[metrics["best_epoch"]]
    assert row["test/rmse_last"] == pytest.approx(metrics["test/rmse_last"], rel=1e-6)
    assert row["test/nasa"] == pytest.approx(metrics["test/nasa"], rel=1e-5)
    assert "test trace: test_trace.csv" in log and "chose nothing" in log


def test_a_resumed_run_keeps_the_trace_rows_before_its_checkpoint(tmp_path):
    (tmp_path / "test_trace.csv").write_text("# note\nepoch,test/rmse_last,test/nasa\n0,20,9\n1,18,8\n2,17,7\n")
    callback = TestTrace(enabled=True, filename="test_trace.csv")
    callback.on_train_start(SimpleNamespace(default_root_dir=str(tmp_path), current_epoch=2), None)
    assert [r["epoch"] for r in callback.rows] == [0, 1]


def test_a_trace_under_the_paper_protocol_is_refused(data_cache, tmp_path):
    done = subprocess.run([sys.executable, "-m", "grace_lit.train", "dataset=FD001", "protocol.test_trace=true",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=cli_env(data_cache),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert ("protocol.test_trace=True: must be false, or true with protocol=holdout"
            in done.stdout + done.stderr)
