"""Bad input stops with one message naming the problem, where it is (key, file, line, step) and the fix.

Config values are checked on the composed Hydra config before any data is read; data faults use corrupted
copies of the real NASA files; the CLI turns either into one clean line and exit code 1. Non-finite training
steps are injected through the data (a NaN sensor row, an infinite target) into a real lightning.Trainer.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Subset

from conftest import REPO, cli_env, composed
from grace_lit.config import validate
from grace_lit.results import write_failure
from grace_lit.train import build, discard_run_dir
from grace_lit.data.archive import expected_checksums, verify
from grace_lit.data.windows import UnitSeries, WindowSet, batch_as_is
from grace_lit.errors import GraceError, Refused
from grace_lit.losses.gaba import GABA
from grace_lit.losses.rul import WMSE
from grace_lit.module import GraceModule
from test_data import reader
from test_module import tiny_model

FD001 = ("train_FD001.txt", "test_FD001.txt", "RUL_FD001.txt")
RESTORE = "Fix: restore the original NASA file"


# ----------------------------------------------------------------------------------------------- config values
def test_defaults_and_presets_are_valid():
    for overrides in ([], ["dataset=FD001", "model=small"], ["loss=gradnorm"], ["loss=uncertainty"],
                      ["protocol=holdout", "loss=amnl"]):
        validate(composed(overrides))


@pytest.mark.parametrize("override, key, allowed", [
    ("optimizer.lr=0", "optimizer.lr=0", "> 0"),
    ("optimizer.lr=-1e-3", "optimizer.lr=-0.001", "> 0"),
    ("loss.controller.beta=1.0", "loss.controller.beta=1.0", "in [0, 1)"),
    ("loss.controller.beta=-0.1", "loss.controller.beta=-0.1", "in [0, 1)"),
    ("loss.controller.min_weight=0.5", "loss.controller.min_weight=0.5", "in [0, 1/K) = [0, 0.5)"),
    ("dataset.window=0", "dataset.window=0", "an integer >= 1"),
    ("dataset.window=abc", "dataset.window='abc'", "an integer >= 1"),
    ("dataset.sensors=[s2,s99]", "dataset.sensors=", "names from s1..s21 (unknown: ['s99'])"),
    ("dataset.health_thresholds=[70,30]", "dataset.health_thresholds=", "strictly increasing"),
    ("dataset.health_thresholds=[30,30]", "dataset.health_thresholds=", "strictly increasing"),
    ("dataset.max_rul=0", "dataset.max_rul=0", "> 0"),
    ("protocol.name=oracle", "protocol.name='oracle'", "one of ['paper', 'holdout']"),
    ("data.batch_size=0", "data.batch_size=0", "an integer >= 1"),
    ("data.eval_batch_size=-5", "data.eval_batch_size=-5", "an integer >= 1"),
    ("accumulate=0", "accumulate=0", "an integer >= 1"),
    ("callbacks.progress.estimate.batches=0", "callbacks.progress.estimate.batches=0", "an integer >= 1"),
    ("callbacks.progress.estimate.skip_batches=-1", "callbacks.progress.estimate.skip_batches=-1", ">= 0"),
    ("callbacks.progress.estimate.quiet_below_s=-5", "callbacks.progress.estimate.quiet_below_s=-5", ">= 0"),
])
def test_bad_config_value_names_key_and_range(override, key, allowed):
    with pytest.raises(GraceError) as err:
        validate(composed([override]))
    message = str(err.value)
    assert f"{key}" in message and allowed in message and "Fix:" in message
    assert message.count(": must be") == 1  # only the bad key is reported


def test_gradnorm_controller_lr_is_checked_and_all_problems_reported_at_once():
    with pytest.raises(GraceError) as err:
        validate(composed(["loss=gradnorm", "loss.controller.lr=0", "optimizer.lr=-1", "dataset.max_rul=-3"]))
    message = str(err.value)
    assert message.count(": must be") == 3
    assert "loss.controller.lr=0" in message and "optimizer.lr=-1" in message and "dataset.max_rul=-3" in message


@pytest.mark.parametrize("overrides, expected", [
    # broadcast to both tasks, or a RuntimeError 54 lines long mid-training
    (["loss=fixed", "loss.controller.weights=[0.5]"], "loss.controller.weights=[0.5]: must be 2 numbers >= 0, one "
                                                      "per task (RUL, health state)"),
    (["loss=amnl", "loss.controller.weights=[0.3,0.3,0.4]"], "loss.controller.weights=[0.3, 0.3, 0.4]: must be 2"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0: must be a fraction in (0, 1]"),  # untrained
    (["dataset=table", "dataset.train=f.csv", "dataset.features=temperature"],  # not "column 't' is missing"
     "dataset.features='temperature': must be a list of column names, e.g. 'dataset.features=[temperature,"),
])
def test_values_that_would_change_results_or_fail_late_are_refused_up_front(overrides, expected):
    with pytest.raises(Refused) as err:
        validate(composed(overrides))
    assert expected in str(err.value) and "Fix:" in str(err.value) and str(err.value).count(": must be") == 1


def test_keys_added_with_plus_that_nothing_reads_are_refused():
    cfg = composed(["+optimiser.lr=1e-3", "+trainer.max_epoch=3"], hydra=True)
    with pytest.raises(Refused) as err:
        validate(cfg, cfg.hydra)
    lines = str(err.value).splitlines()
    assert lines[1:3] == [
        "  +optimiser.lr=1e-3: adds the key optimiser.lr, which nothing reads (did you mean optimizer.lr=1e-3, "
        "without '+'?)",
        "  +trainer.max_epoch=3: lightning.Trainer takes no argument 'max_epoch' (did you mean "
        "trainer.max_epochs=3, without '+'?)"]
    assert lines[3].startswith("Fix: drop each '+' key nothing reads")
    read = composed(["+trainer.profiler=simple", "+callbacks.extra={_target_:lightning.pytorch.callbacks.Timer}"],
                    hydra=True)  # a Trainer argument, a new callback: both read
    validate(read, read.hydra)


def test_a_base_config_chosen_alone_is_refused_with_the_options(tmp_path):
    cfg = composed(["dataset=_cmapss"], hydra=True)
    assert "_cmapss" in cfg.hydra.run.dir  # the run directory's name resolves (Hydra's traceback before)
    with pytest.raises(Refused) as err:
        validate(cfg, cfg.hydra)
    assert ("dataset=_cmapss: a base config the other dataset options build on, not one to choose; choose one "
            "whose name does not start with '_': DS02, FD001, FD002, FD003, FD004, table") in str(err.value)
    cfg.dataset.name = "???"  # a failure about an unset value still leaves its record
    write_failure(tmp_path, cfg, err.value)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_a_gpu_trainer_without_a_gpu_says_use_trainer_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(Refused, match=r"trainer.accelerator=gpu needs a CUDA GPU(.|\n)*\nFix: trainer=cpu"):
        build(composed(["dataset=FD001", "model=small", "trainer=gpu"]))


def test_a_refused_run_directory_goes_but_one_with_a_run_in_it_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = tmp_path / "outputs" / "2026-01-01" / "12-00-00_FD002"
    (made / ".hydra").mkdir(parents=True)
    (made / "train.log").write_text("")
    discard_run_dir(made)
    assert not (tmp_path / "outputs").exists()  # and the parents it alone filled
    resumed = tmp_path / "run"
    (resumed / ".hydra").mkdir(parents=True)
    (resumed / "checkpoints").mkdir()
    discard_run_dir(resumed)
    assert (resumed / "checkpoints").is_dir()


# ----------------------------------------------------------------------------------------------- data files
@pytest.fixture
def copy(cmapss_dir: Path, tmp_path: Path) -> Path:
    """A private copy of FD001's three files, to corrupt."""
    for name in FD001:
        shutil.copy(cmapss_dir / name, tmp_path / name)
    return tmp_path


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


def read_error(directory: Path, data_cache: Path) -> str:
    with pytest.raises(GraceError) as err:
        reader(data_cache, "FD001", data_dir=str(directory))
    return str(err.value)


def with_field(line: str, index: int, value: str) -> str:
    fields = line.split()
    fields[index] = value
    return " ".join(fields) + "\n"


@pytest.mark.parametrize("name, edit, expected", [
    # the last line cut mid-row (no newline): 10 of 26 fields remain
    ("train_FD001.txt", lambda ls: ls[:-1] + [" ".join(ls[-1].split()[:10])], "line 20631: 10 columns, expected 26"),
    ("test_FD001.txt", lambda ls: ls[:4] + [with_field(ls[4], 7, "abc")] + ls[5:], "line 5: non-numeric field 'abc'"),
    ("train_FD001.txt", lambda ls: ls[:9] + [ls[9].rstrip() + " 1.0\n"] + ls[10:], "line 10: 27 columns, expected 26"),
    ("train_FD001.txt", lambda ls: ls[:9] + [" ".join(ls[9].split()[:-1]) + "\n"] + ls[10:],
     "line 10: 25 columns, expected 26"),
    ("train_FD001.txt", lambda ls: ls[:2] + ls[3:], "line 3: unit 1 cycle 4 breaks the order"),  # cycle 3 missing
    ("train_FD001.txt", lambda ls: ls[:3] + ls[2:], "line 4: unit 1 cycle 3 breaks the order"),  # cycle 3 twice
    ("test_FD001.txt", lambda ls: ls[:31] + [with_field(ls[31], 1, "32.5")] + ls[32:],
     "line 32: unit and cycle must be integers"),
    ("train_FD001.txt", lambda ls: ls[:6] + [with_field(ls[6], 12, "nan")] + ls[7:], "line 7: non-finite value 'nan'"),
    ("train_FD001.txt", lambda ls: ls[:6] + [with_field(ls[6], 12, "inf")] + ls[7:], "line 7: non-finite value 'inf'"),
    ("train_FD001.txt", lambda ls: [], "is empty"),
    ("RUL_FD001.txt", lambda ls: ls[:-1], "RUL_FD001.txt has 99 lines but"),
    ("RUL_FD001.txt", lambda ls: ls + ["12\n"], "RUL_FD001.txt has 101 lines but"),
])
def test_corrupted_file_names_file_line_and_fix(copy, data_cache, name, edit, expected):
    edit_lines(copy / name, edit)
    message = read_error(copy, data_cache)
    assert str(copy / name) in message and expected in message and "Fix: restore the original NASA file" in message


def test_missing_file_names_the_setting_to_check(copy, data_cache):
    (copy / "test_FD001.txt").unlink()
    message = read_error(copy, data_cache)
    assert str(copy / "test_FD001.txt") in message and "does not exist" in message and "dataset.data_dir" in message


def test_tampered_extraction_fails_its_checksum(copy):
    sums = {name: digest for name, digest in expected_checksums().items() if name in FD001}
    verify(copy, sums)  # the untouched copy passes
    edit_lines(copy / "train_FD001.txt", lambda ls: ls[:100] + [ls[100].replace("1", "2", 1)] + ls[101:])
    with pytest.raises(GraceError) as err:
        verify(copy, sums)
    message = str(err.value)
    assert str(copy / "train_FD001.txt") in message and "SHA-256" in message and f"delete {copy}" in message
    (copy / "RUL_FD001.txt").unlink()
    with pytest.raises(GraceError, match="RUL_FD001.txt is missing"):
        verify(copy, sums)


# ----------------------------------------------------------------------------------------------- the CLI
def train(args: list[str], data_cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grace_lit.train", *args], cwd=REPO, env=cli_env(data_cache),
                          capture_output=True, text=True, timeout=300)


def test_cli_data_fault_prints_one_message_and_exits_1(copy, data_cache, tmp_path):
    edit_lines(copy / "train_FD001.txt", lambda ls: ls[:2] + ls[3:])
    out = tmp_path / "run"
    run = train(["dataset=FD001", "model=small", f"dataset.data_dir={copy}", f"hydra.run.dir={out}"], data_cache)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in (run.stderr + run.stdout).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{copy / 'train_FD001.txt'}, line 3" in errors[0] and RESTORE in errors[0]
    failed = json.loads((out / "metrics.json").read_text())
    assert failed["status"] == "failed" and "line 3" in failed["error"]



# ----------------------------------------------------------------------------------------------- non-finite steps
BATCH = 4  # 16 windows (2 units x 8), 4 batches per epoch, in order


def series(nan_row: int | None = None, inf_rul_row: int | None = None) -> WindowSet:
    """Unit 1's row ``nan_row`` (sensors) or ``inf_rul_row`` (target) made non-finite. Windows end at rows
    4..11 of each unit (window 5; window i ends at row i + 4 and is its target): a row r of unit 1 is inside
    windows max(0, r - 4)..min(r, 7)."""
    rng = np.random.default_rng(1)
    units = [UnitSeries(u, rng.normal(size=(12, 3)).astype(np.float32),
                        np.linspace(100, 0, 12).astype(np.float32)) for u in (1, 2)]
    if nan_row is not None:
        units[0].features[nan_row, 1] = np.nan
    if inf_rul_row is not None:
        units[0].rul[inf_rul_row] = np.inf
    return WindowSet(units, window=5, stride=1, pad_mode="edge", health_thresholds=[30, 70])


def fit(data, on_nonfinite: str, tmp_path: Path, max_epochs: int = 3,
        callbacks: tuple[L.Callback, ...] = ()) -> tuple[GraceModule, L.Trainer]:
    """Train with the project's own epoch-end ``last.ckpt`` callback (conf/callbacks/default.yaml)."""
    module = GraceModule(tiny_model(), GABA(beta=0.5, warmup_steps=0, min_weight=0.05), WMSE(125.0),
                         partial(torch.optim.AdamW, lr=1e-2), grad_clip=1.0, on_nonfinite=on_nonfinite)
    last = instantiate(composed([f"paths.output_dir={tmp_path}"]).callbacks.last_checkpoint)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, precision="64-true", logger=False,
                        callbacks=[last, *callbacks], enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=BATCH, collate_fn=batch_as_is))
    return module, trainer


@pytest.mark.parametrize("corrupt, first_bad", [(dict(nan_row=9), 1), (dict(inf_rul_row=7), 0)])
def test_nonfinite_step_stops_with_step_and_checkpoint(tmp_path, corrupt, first_bad):
    # NaN sensor row 9: windows 5-7 (batch 1); infinite target at row 7: window 3's target (batch 0)
    with pytest.raises(GraceError) as err:
        fit(series(**corrupt), "raise", tmp_path)
    message = str(err.value)
    assert f"at step {first_bad} (epoch 0" in message
    assert "Last good checkpoint: none written yet" in message and "on_nonfinite=skip" in message
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # no checkpoint of non-finite weights


class PoisonAtEpoch(L.Callback):
    """Turns the first parameter into NaN when the given epoch starts."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, module: GraceModule) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(module.model.parameters()).fill_(float("nan"))


def test_nonfinite_error_names_the_last_epoch_checkpoint(tmp_path):
    with pytest.raises(GraceError) as err:
        fit(series(), "raise", tmp_path, callbacks=(PoisonAtEpoch(1),))
    steps_per_epoch = -(-len(series()) // BATCH)
    assert f"at step {steps_per_epoch} (epoch 1" in str(err.value)
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}." in str(err.value)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0


def test_skip_leaves_no_trace_and_counts_the_skips(tmp_path):
    # NaN sensor row 6 of unit 1: windows 2..6, i.e. batches 0 and 1 of every epoch (BatchNorm spreads a NaN
    # over its whole batch); only batches 2 and 3 (unit 2) are finite
    module, trainer = fit(series(nan_row=6), "skip", tmp_path / "skip")
    clean, _ = fit(Subset(series(), range(8, 16)), "raise", tmp_path / "clean")  # unit 2 only, same batches
    assert module.nonfinite.skips == 2 * 3 and trainer.global_step == 2 * 3
    # every parameter, BatchNorm statistic, controller EMA and counter equals training on the clean batches alone
    reference = clean.state_dict()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)
    assert module.controller._steps == 6
    saved = torch.load(tmp_path / "skip" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["nonfinite_skips"] == 6  # metrics.json reports module.nonfinite.skips; a resume keeps counting
