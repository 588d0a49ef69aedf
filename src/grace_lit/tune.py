"""Entry point: ``python -m grace_lit.tune [overrides]`` (console script ``grace-tune``).

An Optuna study over a search space from ``conf/hparams_search/``, stored in SQLite so that re-running the
command resumes it. Each trial is a training run built by ``train.build`` that selects on held-out training
units and never sees the test set (no ``trainer.test``). When the study is complete, the best trial's selected
checkpoint (its ``best.ckpt``, reloaded, not retrained) is scored on the test set, once; with
``study.score_test=false`` (profile and check studies) never.
"""
from __future__ import annotations

import copy
import logging
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

try:
    import optuna
except ImportError as err:  # an optional extra
    raise SystemExit("grace_lit.tune needs Optuna. Fix: pip install -e '.[tune]'") from err
from optuna.trial import TrialState

from grace_lit.callbacks.pruning import OptunaPruning
from grace_lit.config import check_device, validate
from grace_lit.console import quiet, shown_path
from grace_lit.errors import Refused
from grace_lit.io import atomic_write_json, atomic_write_text
from grace_lit.results import TEST_KEYS, identity, write_scored
from grace_lit.train import build, discard_run_dir, refused, user_error

log = logging.getLogger("grace_lit")
SUGGEST_TYPES = ("float", "int", "categorical")  # Optuna's trial.suggest_<type>
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MISSING = object()


def check(cfg: DictConfig) -> None:
    """Refuse a study that would select on the test set or whose search space names no config key."""
    if cfg.protocol.name != "holdout":
        raise Refused(f"grace_lit.tune selects on held-out training units only, and protocol={cfg.protocol.name} "
                      f"selects on the test set: a tuned score would have seen it.\n"
                      f"Fix: drop protocol={cfg.protocol.name} (tuning runs protocol=holdout).")
    if cfg.callbacks.get("checkpoint") is None:
        raise Refused("A trial's score is its best checkpoint's selection metric, and callbacks.checkpoint is "
                      "dropped.\nFix: keep callbacks.checkpoint when tuning.")
    problems = [f"{key}: not a key of the composed config" for key in cfg.hparams_search.params
                if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING]
    problems += [f"{key}: type={spec.get('type')!r} is not one of {list(SUGGEST_TYPES)}"
                 for key, spec in cfg.hparams_search.params.items() if spec.get("type") not in SUGGEST_TYPES]
    if problems:
        raise Refused("Invalid search space (hparams_search.params):\n" + "\n".join(f"  {p}" for p in problems)
                      + "\nFix: name existing config keys (e.g. optimizer.lr), each with a type from "
                      f"{list(SUGGEST_TYPES)} and that type's trial.suggest_<type> arguments.")


def suggest(trial: optuna.Trial, space: DictConfig) -> dict[str, Any]:
    """One value per search-space key, drawn by ``trial.suggest_<type>(key, **arguments)``."""
    params = {}
    for key, spec in OmegaConf.to_container(space).items():
        kind = spec.pop("type")
        params[key] = getattr(trial, f"suggest_{kind}")(key, **spec)
    return params


def trial_config(cfg: DictConfig, params: dict[str, Any], out_dir: Path) -> DictConfig:
    """The study's training config with these parameter values, writing into ``out_dir``."""
    trial_cfg = copy.deepcopy(cfg)
    for key, value in params.items():
        OmegaConf.update(trial_cfg, key, value)
    trial_cfg.paths.output_dir = str(out_dir)
    return trial_cfg


def variants(cfg: DictConfig) -> dict[str, DictConfig]:
    """The runs each trial trains: the study's config alone (``{"": cfg}``) or, under ``hparams_search.variants``,
    one composed config per variant, the study's overrides followed by the variant's (a variant may change a
    config group, ``loss=fixed``, which only composition can)."""
    named = cfg.hparams_search.get("variants")
    if not named:
        return {"": cfg}
    task, name = list(HydraConfig.get().overrides.task), HydraConfig.get().job.config_name
    runs = {}
    for variant, overrides in named.items():
        try:
            runs[variant] = hydra.compose(config_name=name, overrides=[*task, *overrides])
        except HydraException as err:
            raise Refused(f"Variant {variant} ({' '.join(overrides)}) does not compose with the study's overrides: "
                          f"{err}\nFix: move an override that fits one variant only into that variant's list "
                          f"(hparams_search.variants.{variant}).") from err
        validate(runs[variant])
        check(runs[variant])
    return runs


def fit_run(cfg: DictConfig, trial: optuna.Trial, variant: str, first_step: int) -> float:
    """One training run; its value is the selection metric of its best checkpoint. The test set is not scored.
    Each epoch is reported to the pruner as step ``first_step + epoch``; the run's CPU seconds and epochs go into
    the trial's attributes."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    data, module, trainer = build(cfg)
    warmup = cfg.callbacks.lr_warmup.epochs if cfg.callbacks.get("lr_warmup") else 0
    pruning = OptunaPruning(trial, cfg.monitor, first_step, warmup + cfg.study.prune_after_warmup)
    trainer.callbacks.append(pruning)
    suffix = f"_{variant}" if variant else ""
    try:
        trainer.fit(module, datamodule=data)
    finally:  # a pruned run too: what the study spent
        trial.set_user_attr(f"cpu_s{suffix}", round(module.cpu_time_s(), 1))
        trial.set_user_attr(f"epochs{suffix}", pruning.reported)
    score = float(trainer.checkpoint_callback.best_model_score)
    trial.set_user_attr(f"score{suffix}", score)
    return score


def fit_trial(cfg: DictConfig, runs: dict[str, DictConfig], trial: optuna.Trial, study_dir: Path) -> float:
    """Train the trial's runs (``variants``); its value is the mean of their selection metrics. Run k reports its
    epochs from step k * max_epochs on: the pruner compares GRACE with GRACE and fixed with fixed, each at its
    own epoch, and may stop a trial in any of its runs."""
    params, trial_dir = suggest(trial, cfg.hparams_search.params), study_dir / f"trial_{trial.number:03d}"
    trial.set_user_attr("run_dir", str(trial_dir))
    log.info("trial %d: %s -> %s", trial.number, params, shown_path(trial_dir))
    scores = []
    for k, (variant, variant_cfg) in enumerate(runs.items()):
        run_cfg = trial_config(variant_cfg, params, trial_dir / variant)
        scores.append(fit_run(run_cfg, trial, variant, k * run_cfg.trainer.max_epochs))
        if variant:
            log.info("trial %d, %s: %s=%.4f", trial.number, variant, cfg.monitor, scores[-1])
    return sum(scores) / len(scores)


def trial_done(study: optuna.Study, trial: optuna.trial.FrozenTrial, monitor: str, study_dir: Path) -> None:
    """One line when a trial ends (Optuna's own logger is quieted: it would repeat the trial's parameters), and
    ``trials.csv``: every trial so far, a row each (parameters, state, score, the runs' attributes), readable
    without Optuna."""
    atomic_write_text(study_dir / "trials.csv", study.trials_dataframe().to_csv(index=False))
    if trial.state == TrialState.COMPLETE:
        best = study.best_trial
        log.info("trial %d done: %s=%.4f (best so far: trial %d, %.4f)", trial.number, monitor, trial.value,
                 best.number, best.value)
    elif trial.state == TrialState.PRUNED:
        log.info("trial %d pruned after %d epochs", trial.number, len(trial.intermediate_values))


def settings(cfg: DictConfig) -> dict[str, Any]:
    """What every trial of a study shares: its training config but for the searched values, the files' places
    and the trial budget."""
    shared = OmegaConf.to_container(trial_config(cfg, {}, Path("trial")), resolve=True)
    for key in ("study", "worker", "paths", "print_config", "resume"):
        shared.pop(key)
    shared["hparams_search"].pop("n_trials")
    return shared


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.backbone.hidden_size": 64, ...}``: every leaf of a plain container under its dotted key."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def check_settings(study: optuna.Study, cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """A resumed study runs with the settings it started with: other settings would mix two studies in one.
    ``overrides``: the command's, kept with the settings so that a refusal can say which ones it started with."""
    stored, current = study.user_attrs.get("settings"), settings(cfg)
    if stored is None:
        study.set_user_attr("settings", current)
        study.set_user_attr("overrides", list(overrides or []))
    elif stored != current:
        before, now = _flat(stored), _flat(current)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k, _MISSING) != now.get(k, _MISSING))
        value = lambda flat, key: "unset" if key not in flat else repr(flat[key])  # noqa: E731
        shown = "".join(f"\n  {key}: {value(before, key)} when it started, now {value(now, key)}"
                        for key in changed[:10])
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        started = study.user_attrs.get("overrides")
        command = (f" (it started as: python -m grace_lit.tune {' '.join(started)})" if started
                   else " (it started with no overrides)" if started is not None else "")
        raise Refused(f"Study {study.study_name} ({cfg.study.storage.url}) was started with other settings:"
                      f"{shown}{more}\nFix: resume it with the overrides it started with{command}; only "
                      f"hparams_search.n_trials may change. Or start another study with study.name=<new name>.")


def within(value: Any, spec: DictConfig) -> bool:
    """Whether a composed value lies in a search-space entry: among its choices, or in [low, high]."""
    if spec.type == "categorical":
        return value in spec.choices
    return spec.low <= value <= spec.high


def enqueue_incumbent(study: optuna.Study, cfg: DictConfig) -> None:
    """The composed config's own values of the searched keys, as the next trial, once per study: the profile a
    search starts from, scored like any other trial, so that the study shows what the search gained over it."""
    if "incumbent" in study.user_attrs:
        return
    params = {key: OmegaConf.select(cfg, key) for key in cfg.hparams_search.params}
    outside = [f"{key}={value!r}" for key, value in params.items() if not within(value, cfg.hparams_search.params[key])]
    if outside:
        log.warning("No incumbent trial: the composed %s lie outside the search space. Fix: widen the space to "
                    "hold them, or study.incumbent=false.", ", ".join(outside))
        return
    study.enqueue_trial(params, user_attrs={"incumbent": True})
    study.set_user_attr("incumbent", params)
    log.info("Queued the composed values as the incumbent trial: %s", params)


def enqueue_recheck(study: optuna.Study, cfg: DictConfig) -> None:
    """An earlier study's best finished trials (``study.recheck``: its ``trials.csv`` and how many, or which) as
    the next trials, once per study: what one split seed chose, scored again on another before it ships."""
    recheck = cfg.study.recheck
    if not recheck or "recheck" in study.user_attrs:
        return
    if not Path(recheck.trials).is_file():
        raise Refused(f"study.recheck.trials={recheck.trials} is not a file, so there are no trials to check.\n"
                      f"Fix: name an earlier study's trials.csv (grace_lit.tune writes one beside its study.db).")
    table = pd.read_csv(recheck.trials)
    differ = sorted({c.removeprefix("params_") for c in table if c.startswith("params_")}
                    ^ set(cfg.hparams_search.params))
    if differ:
        raise Refused(f"{recheck.trials} and this study's space (hparams_search={cfg.hparams_search.name}) differ "
                      f"in {', '.join(differ)}: a check draws nothing, so it must set the keys its trials set.\n"
                      f"Fix: check with the earlier study's own space (profile_check for a profile study, "
                      f"profile_conditions_check for a profile_conditions one).")
    complete = table[table.state == "COMPLETE"]
    numbers = recheck.get("numbers")
    best = complete[complete.number.isin(numbers)] if numbers else complete.nsmallest(recheck.top, "value")
    if numbers and len(best) < len(numbers):
        raise Refused(f"study.recheck.numbers={list(numbers)}: {sorted(set(numbers) - set(best.number))} not among "
                      f"the complete trials of {recheck.trials}.\nFix: name complete trials (its state column).")
    for row in best.to_dict("records"):
        params = {key: _native(row[f"params_{key}"]) for key in cfg.hparams_search.params}
        study.enqueue_trial(params, user_attrs={"recheck_of": int(row["number"])})
    study.set_user_attr("recheck", {"trials": recheck.trials, "numbers": [int(n) for n in best.number]})
    log.info("Queued trials %s of %s to score again", list(best.number), recheck.trials)


def _native(value: Any) -> Any:
    """A value read by pandas as Python's own type: Optuna stores enqueued values as JSON."""
    return value.item() if hasattr(value, "item") else value


def study_state(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    best = study.best_trial if counts["complete"] else None
    return {"study": study.study_name, **counts, "best_trial": best and best.number, "best_value": best and best.value,
            "best_params": best and best.params}


def score_best(runs: dict[str, DictConfig], study: optuna.Study, study_dir: Path) -> None:
    """The test set, once per run of the best trial: its selected weights (each run's best.ckpt with the EMA
    shadow), reloaded, into ``study_dir`` (under variants, ``study_dir/<variant>``)."""
    best = study.best_trial
    for variant, variant_cfg in runs.items():
        score = best.user_attrs[f"score_{variant}"] if variant else best.value
        score_run(variant_cfg, study, best, score, study_dir / variant, Path(best.user_attrs["run_dir"]) / variant)


def score_run(cfg: DictConfig, study: optuna.Study, best: optuna.trial.FrozenTrial, score: float, out_dir: Path,
              run_dir: Path) -> None:
    result = out_dir / "metrics.json"
    if result.is_file():
        log.info("The test set was scored already (%s); it is not scored again.", shown_path(result))
        return
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        raise Refused(f"The best trial's checkpoint {shown_path(ckpt)} is missing (the study was copied or resumed "
                      f"without its trial directories), so trial {best.number} cannot be scored on the test set.\n"
                      f"Fix: put the trial directories back beside study.db, or study.score_test=false and train the "
                      f"best trial's values with grace_lit.train, which scores them once.")
    best_cfg = trial_config(cfg, best.params, out_dir)
    L.seed_everything(best_cfg.seed, workers=True)
    data, module, trainer = build(best_cfg)
    log.info("Scoring trial %d (%s=%.4f) on the test set: %s", best.number, cfg.monitor, score,
             shown_path(ckpt))
    with warnings.catch_warnings():  # the checkpoint's trainer wrote into the trial's directory, this one the study's
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        trainer.test(module, datamodule=data, ckpt_path=str(ckpt), weights_only=False, verbose=False)
    metrics = trainer.callback_metrics
    summary = {"status": "completed", **identity(best_cfg),
               "command": " ".join(["python -m grace_lit.tune", *HydraConfig.get().overrides.task]),
               "study": study.study_name, "trial": best.number, "params": best.params, "checkpoint": str(ckpt),
               "selection_metric": cfg.monitor, "selection_score": score,
               **{key: float(metrics[key]) if key in metrics else None for key in TEST_KEYS}}
    write_scored(out_dir, best_cfg, summary, module, data.splits)  # as a train run's: the same files
    log.info("[%s | %s | protocol=%s] best trial %d: test rmse_last=%.3f rmse_all=%.3f nasa=%.1f -> %s",
             cfg.dataset.name, cfg.loss.name, cfg.protocol.name, best.number, summary["test/rmse_last"],
             summary["test/rmse_all"], summary["test/nasa"], shown_path(result))


def tune(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg, HydraConfig.get())  # before a study is made: every value but the searched ones
    check(cfg)
    runs = variants(cfg)
    check_device(cfg)
    study_dir = Path(cfg.study.dir)
    study_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    study = optuna.create_study(study_name=cfg.study.name, storage=instantiate(cfg.study.storage),
                                sampler=instantiate(cfg.study.sampler), pruner=instantiate(cfg.study.pruner),
                                direction="minimize", load_if_exists=True)
    check_settings(study, cfg, list(HydraConfig.get().overrides.task))
    enqueue_recheck(study, cfg)
    if cfg.study.incumbent:
        enqueue_incumbent(study, cfg)
    n_trials = cfg.hparams_search.n_trials
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < n_trials:
        study.optimize(lambda trial: fit_trial(cfg, runs, trial, study_dir), gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
                                  partial(trial_done, monitor=cfg.monitor, study_dir=study_dir)])
    optuna.storages.fail_stale_trials(study)  # a trial of a killed process, so it does not count as running
    state = study_state(study)
    atomic_write_json(Path(cfg.paths.output_dir) / "tuning.json", state)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.info("Worker %s done. When every worker is, the same command without --multirun and worker= scores "
                 "the best trial on the test set.", cfg.worker)
    elif state["running"]:
        log.info("%d trials still run in other processes (or in one killed less than study.storage.grace_period "
                 "seconds ago): the test set is scored by a run after they finish.", state["running"])
    elif state["best_trial"] is not None and cfg.study.score_test:
        score_best(runs, study, study_dir)
    return state


@hydra.main(version_base="1.3", config_path="../../conf", config_name="tune")
def main(cfg: DictConfig) -> float | None:
    quiet()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trial_done says how a trial ended, once
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat options
    try:
        return tune(cfg)["best_value"]
    except Exception as err:
        user = user_error(err)
        if refused(user):
            discard_run_dir(HydraConfig.get().runtime.output_dir)  # the study's directory, unless it holds a study
        if user is None or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        log.error("%s", user)
        sys.exit(1)


if __name__ == "__main__":
    main()
