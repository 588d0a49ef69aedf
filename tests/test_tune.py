"""Tuning (grace_lit.tune): a killed study resumes, trials never score the test set, the best trial is scored once;
protocol=paper is refused; the pruning callback stops a scripted bad trial."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from omegaconf import open_dict
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO, cli_env, composed

optuna = pytest.importorskip("optuna")
from grace_lit.callbacks.cpu_budget import CPUBudget  # noqa: E402
from grace_lit.callbacks.pruning import OptunaPruning  # noqa: E402  (needs optuna)
from grace_lit.errors import GraceError  # noqa: E402
from grace_lit.tune import (check, check_settings, enqueue_incumbent, enqueue_recheck, score_run,  # noqa: E402
                            trial_config)
from optuna.trial import TrialState  # noqa: E402

ARGS = ["dataset=FD001", "model=small", "trainer=cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "hparams_search.n_trials=2",
        "study.storage.heartbeat_interval=1", "study.storage.grace_period=2"]
SCORING = "Scoring trial"  # the log line of the one test-set evaluation


def tune_command(study_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "grace_lit.tune", *ARGS, f"study.dir={study_dir}", *extra]


def trials(study_dir: Path) -> list:
    return optuna.load_study(study_name="FD001_gaba", storage=f"sqlite:///{study_dir}/study.db").get_trials()


def test_killed_study_resumes_and_scores_the_best_trial_once(tmp_path: Path, data_cache: Path) -> None:
    study_dir, logs = tmp_path / "study", [tmp_path / f"run{i}.log" for i in range(3)]
    with open(logs[0], "w") as out:
        proc = subprocess.Popen(tune_command(study_dir), cwd=REPO, env=cli_env(data_cache), stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while "trial 1:" not in logs[0].read_text() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # trial 0 is complete and trial 1 (its heartbeat running) starts training
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, logs[0].read_text()[-3000:]
    assert [t.state.name for t in trials(study_dir)] == ["COMPLETE", "RUNNING"]
    assert not (study_dir / "metrics.json").exists()
    time.sleep(2.5)  # past grace_period since the killed trial's last heartbeat

    for log in logs[1:]:  # resume, then the same command once more on the finished study
        with open(log, "w") as out:
            done = subprocess.run(tune_command(study_dir), cwd=REPO, env=cli_env(data_cache), stdout=out,
                                  stderr=subprocess.STDOUT, timeout=300)
        assert done.returncode == 0, log.read_text()[-3000:]

    final = trials(study_dir)
    assert [t.state.name for t in final] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert final[2].params == final[1].params  # the killed trial's parameters ran again, first
    texts = [log.read_text() for log in logs]
    assert sum(text.count(SCORING) for text in texts) == 1 and SCORING in texts[1]
    # each trial announced once as it starts and once as it ends, by grace_lit alone (Optuna's logger is quiet)
    assert texts[0].count("- trial 0: {") == texts[0].count("- trial 0 done: val/rmse_last=") == 1
    assert texts[1].count("- trial 2: {") == texts[1].count("- trial 2 done: val/rmse_last=") == 1
    assert not any("Trial " in text or "A new study created" in text for text in texts)
    assert "scored already" in texts[2]
    best = min((t for t in final if t.state.name == "COMPLETE"), key=lambda t: t.value)
    result = json.loads((study_dir / "metrics.json").read_text())
    assert (result["protocol"], result["trial"], result["params"]) == ("holdout", best.number, best.params)
    assert result["selection_metric"] == "val/rmse_last" and result["selection_score"] == best.value
    assert math.isfinite(result["test/rmse_last"]) and (study_dir / "predictions.csv").is_file()
    assert result["cap_test_rul"] is True and math.isfinite(result["test/rmse_last_raw"])  # beside the capped truth
    predictions = pd.read_csv(study_dir / "predictions.csv")
    assert "rul_true_raw" in predictions.columns
    # the best trial's intervals, as a train run has them, calibrated on its held-out cut ends (calibration.csv)
    inside = (predictions.rul_lo <= predictions.rul_true) & (predictions.rul_true <= predictions.rul_hi)
    assert (study_dir / "calibration.csv").is_file() and predictions.rul_lo.notna().all()
    assert result["test/interval_coverage"] == pytest.approx(inside.mean())
    for trial in (final[0], final[2]):  # the finished trials logged held-out metrics only, never a test metric
        columns = pd.read_csv(Path(trial.user_attrs["run_dir"]) / "metrics.csv").columns
        assert "val/rmse_last" in columns and not any(c.startswith("test/") for c in columns)
    tested = pd.read_csv(study_dir / "metrics.csv")  # the study's own logger: the one test evaluation
    assert len(tested) == 1 and tested["test/rmse_last"].iloc[0] == pytest.approx(result["test/rmse_last"])


def test_paper_protocol_is_refused() -> None:
    """Checked before the study's storage is opened (``tune.tune``), so a refused study leaves no file."""
    with pytest.raises(GraceError, match="protocol=paper selects on the test set"):
        check(composed(["protocol=paper"], config_name="tune"))


def test_a_refused_command_leaves_no_directory_and_no_traceback(tmp_path: Path, data_cache: Path) -> None:
    """The README's command as a user types it, in an empty directory: Hydra makes tuning/FD002_gaba/ before the
    study is checked; the refusal removes it again."""
    run = subprocess.run([sys.executable, "-m", "grace_lit.tune", "protocol=paper"], cwd=tmp_path,
                         env=cli_env(data_cache), capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in out and "Fix: drop protocol=paper" in out
    assert list(tmp_path.iterdir()) == []


def test_search_space_names_config_keys() -> None:
    cfg = composed([], config_name="tune")
    check(cfg)  # the shipped search space is valid
    with open_dict(cfg):
        cfg.hparams_search.params["optimizer.lrr"] = {"type": "float", "low": 0.1, "high": 1.0}
        cfg.hparams_search.params["optimizer.lr"].type = "loguniform"
    with pytest.raises(GraceError, match=r"optimizer.lrr: not a key(.|\n)*optimizer.lr: type='loguniform'"):
        check(cfg)


@pytest.mark.parametrize(("space", "dataset"), [("gaba", "FD002"), ("profile", "FD001"), ("profile", "FD003"),
                                              ("profile_conditions", "FD002"), ("profile_conditions", "FD004")])
def test_every_search_space_names_keys_of_the_subsets_it_is_for(space: str, dataset: str, tmp_path: Path) -> None:
    cfg = composed([f"hparams_search={space}", f"dataset={dataset}"], config_name="tune")
    check(cfg)
    if "dataset.condition_input" in cfg.hparams_search.params:  # a drawn value reaches the model's input width
        wide = trial_config(cfg, {"dataset.condition_input": True}, tmp_path)
        assert (wide.model.backbone.input_size, cfg.model.backbone.input_size) == (14 + 6, 14)


def test_a_study_resumes_only_with_its_own_settings() -> None:
    study = optuna.create_study()
    check_settings(study, composed(["dataset=FD001", "model=small"], config_name="tune"))  # records them
    check_settings(study, composed(["dataset=FD001", "model=small", "hparams_search.n_trials=50", "worker=3",
                                    "study.dir=elsewhere"], config_name="tune"))  # budget, process, place
    with pytest.raises(GraceError) as err:
        check_settings(study, composed(["dataset=FD001", "model=small", "optimizer.eps=1e-6"], config_name="tune"))
    assert "other settings:\n  optimizer.eps: 1e-08 when it started, now 1e-06\nFix:" in str(err.value)
    again = optuna.create_study()
    check_settings(again, composed(["dataset=FD001"], config_name="tune"), ["dataset=FD001"])
    with pytest.raises(GraceError) as err:
        check_settings(again, composed(["dataset=FD001", "model=small"], config_name="tune"), ["dataset=FD001"])
    assert "model.backbone.hidden_size: " in str(err.value)  # each changed key, with both values
    assert "it started as: python -m grace_lit.tune dataset=FD001" in str(err.value)


class Scripted(L.LightningModule):
    """Logs a given validation metric per epoch (the pruner sees only these numbers)."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.values, self.layer = values, torch.nn.Linear(1, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("val/rmse_last", self.values[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)

    val_dataloader = train_dataloader


def test_pruning_callback_prunes_a_bad_trial() -> None:
    # MedianPruner with one finished trial: from epoch 1 on, a trial whose best value so far is above the
    # finished trial's value at that epoch is pruned
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))

    def run(values: list[float], from_epoch: int = 0) -> None:
        def objective(trial: optuna.Trial) -> float:
            pruning = OptunaPruning(trial, "val/rmse_last", from_epoch=from_epoch)
            trainer = L.Trainer(max_epochs=len(values), accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[pruning])
            try:
                trainer.fit(Scripted(values))
            finally:
                trial.set_user_attr("epochs", pruning.reported)
            return values[-1]
        study.optimize(objective, n_trials=1)

    run([5.0, 4.0, 3.0, 2.0])  # the reference
    run([5.0, 6.0, 7.0, 8.0])  # epoch 1: best so far 5 > 4
    run([5.0, 3.0, 3.5, 1.5])  # its best so far never above the reference at that epoch
    run([5.0, 6.0, 2.5, 1.0], from_epoch=2)  # epoch 1 would prune it; from epoch 2 on its best stays below the median
    run([5.0, 6.0, 7.0, 8.0], from_epoch=3)  # stopped at the first epoch it may be, 3
    reference, bad, good, late, later = study.trials
    assert reference.state.name == "COMPLETE"
    assert bad.state.name == "PRUNED" and bad.intermediate_values == {0: 5.0, 1: 6.0}  # stopped at epoch 1
    assert good.state.name == "COMPLETE" and good.intermediate_values == {0: 5.0, 1: 3.0, 2: 3.5, 3: 1.5}
    assert late.state.name == "COMPLETE" and len(late.intermediate_values) == 4
    assert later.state.name == "PRUNED" and len(later.intermediate_values) == 4
    assert later.user_attrs["epochs"] == 4  # what a pruned run spent is kept


class Clocked(Scripted):
    """Scripted, with the CPU seconds the budget reads after each epoch given: ``cpu[k]`` after epoch k."""

    def __init__(self, cpu: list[float]):
        super().__init__([1.0] * len(cpu))
        self.clock = cpu

    def cpu_time_s(self) -> float:
        return self.clock[self.current_epoch]


@pytest.mark.parametrize(("cpu", "epochs"), [
    ([50.0, 100.0, 150.0, 200.0, 250.0, 300.0], 4),  # after epoch 2: 150 + 50 <= 240; after epoch 3: 200 + 50 > 240
    ([60.0, 120.0, 180.0, 195.0, 200.0, 205.0], 4),  # the mean so far, not the last epoch: 195 + 48.75 > 240
    ([250.0, 260.0], 1),  # the first epoch alone passed the cap: it stops there
    ([50.0, 100.0, 150.0], 3),  # within the cap: max_epochs ends it
])
def test_cpu_budget_stops_before_the_epoch_that_would_pass_it(cpu: list[float], epochs: int) -> None:
    """A cap of 4 CPU-minutes (240 s); ``epochs``: the epochs trained."""
    module = Clocked(cpu)
    trainer = L.Trainer(max_epochs=len(cpu), accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[CPUBudget(minutes=4)])
    trainer.fit(module)
    assert trainer.current_epoch == epochs


def test_a_trial_of_variants_trains_each_and_scores_their_mean(tmp_path: Path, data_cache: Path) -> None:
    """hparams_search=profile: each trial trains GRACE and fixed 0.5/0.5 with the same drawn values, and the test
    set is scored only on request (study.score_test=true), once per variant. GRACE's GABA
    warmup is cut to 1 step, in its variant's overrides, so that the two runs differ within the 2 batches; as
    one of the study's overrides it would not compose with loss=fixed, and the study is refused before it starts."""
    study_dir, args = tmp_path / "study", ["hparams_search=profile", "hparams_search.n_trials=1"]
    refused = subprocess.run(tune_command(study_dir, *args, "loss.controller.warmup_steps=1"), cwd=REPO,
                             env=cli_env(data_cache), capture_output=True, text=True, timeout=300)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in out and not study_dir.exists()
    assert "Variant fixed (loss=fixed) does not compose" in out and "hparams_search.variants.fixed" in out
    args.append("hparams_search.variants.grace=['loss=gaba','loss.controller.warmup_steps=1']")
    done = subprocess.run(tune_command(study_dir, *args), cwd=REPO, env=cli_env(data_cache), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert SCORING not in done.stdout + done.stderr and not (study_dir / "grace").exists()  # profile: no test score
    scored = subprocess.run(tune_command(study_dir, *args, "study.score_test=true"), cwd=REPO,  # trained already
                            env=cli_env(data_cache), capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0 and (scored.stdout + scored.stderr).count(SCORING) == 2
    (trial,) = optuna.load_study(study_name="FD001_profile", storage=f"sqlite:///{study_dir}/study.db").get_trials()
    scores = {v: trial.user_attrs[f"score_{v}"] for v in ("grace", "fixed")}
    assert scores["grace"] != scores["fixed"] and trial.value == pytest.approx(sum(scores.values()) / 2)
    assert all(trial.user_attrs[f"epochs_{v}"] == 2 and trial.user_attrs[f"cpu_s_{v}"] > 0 for v in scores)
    # each run reported its epochs to the pruner from its own first step (run k: k * max_epochs), its score the best
    steps = trial.intermediate_values
    assert sorted(steps) == [0, 1, 2, 3]
    assert (min(steps[0], steps[1]), min(steps[2], steps[3])) == (scores["grace"], scores["fixed"])
    (row,) = pd.read_csv(study_dir / "trials.csv").to_dict("records")  # the study's record, without Optuna
    assert (row["value"], row["user_attrs_score_grace"], row["params_data.batch_size"]) == (
        trial.value, scores["grace"], trial.params["data.batch_size"])
    for variant, loss in (("grace", "gaba"), ("fixed", "fixed")):
        run = study_dir / "trial_000" / variant
        weights = pd.read_csv(run / "controller_log.csv")
        # the drawn values and the study's seed reached both runs; each scored the test set once, in its folder
        assert (weights.weight_rul != 0.5).any() if loss == "gaba" else (weights.weight_rul == 0.5).all()
        result = json.loads((study_dir / variant / "metrics.json").read_text())
        assert (result["loss"], result["seed"], result["params"]) == (loss, 1001, trial.params)
        assert result["selection_score"] == scores[variant]
        columns = pd.read_csv(run / "metrics.csv").columns
        assert "val/rmse_last" in columns and not any(c.startswith("test/") for c in columns)


def test_the_composed_values_are_the_first_trial_once_and_only_inside_the_space(caplog) -> None:
    """study.incumbent: the budget= profile's own values of the searched keys, queued once per study."""
    study = optuna.create_study()
    cfg = composed(["hparams_search=profile", "budget=cpu", "dataset=FD001"], config_name="tune")
    enqueue_incumbent(study, cfg)
    enqueue_incumbent(study, cfg)  # a resumed study: not again
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.params == {} and queued.system_attrs["fixed_params"] == {
        "optimizer.lr": 2.0e-3, "optimizer.weight_decay": 1.0e-4, "data.batch_size": 256,
        "model.backbone.dropout": 0.1, "model.backbone.hidden_size": 32, "dataset.window": 30,
        "callbacks.early_stopping.patience": 5, "callbacks.plateau.patience": 2, "callbacks.ema.decay": 0.999}
    other = optuna.create_study()
    enqueue_incumbent(other, composed(["budget=cpu_fd002", "dataset=FD002"], config_name="tune"))
    assert not other.get_trials() and "data.batch_size=512" in caplog.text  # gaba.yaml's choices: 64, 128, 256


def test_a_check_study_queues_the_best_trials_of_another_once(tmp_path: Path) -> None:
    """study.recheck: an earlier study's best complete trials, read from its trials.csv, queued once; pruned and
    failed trials are not among them."""
    space = composed(["hparams_search=profile", "budget=cpu", "dataset=FD001"], config_name="tune").hparams_search
    earlier = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {}
    for value, state in [(3.0, TrialState.COMPLETE), (1.0, TrialState.PRUNED), (2.0, TrialState.COMPLETE),
                         (0.5, TrialState.FAIL), (4.0, TrialState.COMPLETE)]:
        trial = earlier.ask()
        drawn[trial.number] = {key: getattr(trial, f"suggest_{spec.type}")(
            key, **{k: v for k, v in spec.items() if k != "type"}) for key, spec in space.params.items()}
        earlier.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    (tmp_path / "trials.csv").write_text(earlier.trials_dataframe().to_csv(index=False))
    cfg = composed(["hparams_search=profile_check", "budget=cpu", "dataset=FD001",
                    f"study.recheck.trials={tmp_path / 'trials.csv'}", "study.recheck.top=2"], config_name="tune")
    assert (cfg.seed, cfg.study.score_test, cfg.study.pruner.n_startup_trials) == (1002, False, 5)
    study = optuna.create_study()
    enqueue_recheck(study, cfg)
    enqueue_recheck(study, cfg)  # a resumed check: not again
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["recheck_of"] for t in queued] == [2, 0]
    for trial in queued:
        expected = drawn[trial.user_attrs["recheck_of"]]
        got = trial.system_attrs["fixed_params"]
        assert got.keys() == expected.keys()
        assert all(got[k] == pytest.approx(expected[k], rel=1e-12) and type(got[k]) is type(expected[k])
                   for k in expected)
    cfg.study.recheck.numbers = [4, 0]  # which, not how many
    chosen = optuna.create_study()
    enqueue_recheck(chosen, cfg)
    assert [t.user_attrs["recheck_of"] for t in chosen.get_trials(states=(TrialState.WAITING,))] == [0, 4]
    cfg.study.recheck.numbers = [4, 1]
    with pytest.raises(GraceError, match=r"(?s)numbers=\[4, 1\]: \[1\] not among the complete trials.*Fix"):
        enqueue_recheck(optuna.create_study(), cfg)
    narrower = composed(["hparams_search=profile_check", "budget=cpu", "dataset=FD001",
                         f"study.recheck.trials={tmp_path / 'trials.csv'}"], config_name="tune")
    with open_dict(narrower):
        del narrower.hparams_search.params["dataset.window"]
    with pytest.raises(GraceError, match=r"(?s)differ in dataset.window: a check draws nothing.*Fix: check with"):
        enqueue_recheck(optuna.create_study(), narrower)
    cfg.study.recheck.trials = str(tmp_path / "absent.csv")
    with pytest.raises(GraceError, match=r"(?s)absent.csv is not a file.*Fix: name an earlier study's trials.csv"):
        enqueue_recheck(optuna.create_study(), cfg)


def test_the_six_condition_check_keeps_the_condition_input_it_checks() -> None:
    """profile_conditions_check.yaml: profile_check's study over profile_conditions' space, so FD002's trials
    are checked with the condition input they were scored with."""
    cfg = composed(["hparams_search=profile_conditions_check", "budget=cpu_fd002", "dataset=FD002"],
                   config_name="tune")
    conditions = composed(["hparams_search=profile_conditions", "budget=cpu_fd002", "dataset=FD002"],
                          config_name="tune")
    assert cfg.hparams_search.params == conditions.hparams_search.params
    assert "dataset.condition_input" in cfg.hparams_search.params
    assert (cfg.seed, cfg.study.name, cfg.study.score_test, cfg.study.recheck.trials) == (
        1002, "FD002_profile_check_s1002", False, "results/profile_tuning/FD002/trials.csv")


def test_a_best_trial_without_its_checkpoint_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A study resumed from its study.db alone: its best trial's weights are not there to score."""
    cfg = composed(["dataset=FD001"], config_name="tune")
    best = optuna.trial.create_trial(value=1.0, params={}, distributions={})
    with pytest.raises(GraceError, match=r"(?s)checkpoint .*trial_023.* is missing.*Fix: .*study.score_test=false"):
        score_run(cfg, optuna.create_study(), best, 1.0, tmp_path / "out", tmp_path / "trial_023")
    assert not (tmp_path / "out").exists()
