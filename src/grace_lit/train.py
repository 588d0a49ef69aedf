"""Entry point: ``python -m grace_lit.train [overrides]`` (console script ``grace-train``)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from grace_lit.config import check_device, validate
from grace_lit.console import closing, opening, print_config, quiet
from grace_lit.errors import GraceError, Refused
from grace_lit.calibration import check_settings as check_interval_settings
from grace_lit.io import AtomicCheckpointIO, atomic_write_text
from grace_lit.module import GraceModule
from grace_lit.results import run_summary, write_failure, write_scored

log = logging.getLogger("grace_lit")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, GraceModule, L.Trainer]:
    """Instantiate data, model, controller, callbacks, loggers and trainer from a composed config."""
    check_device(cfg)
    set_threads(cfg.get("threads"))
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]  # null drops a stage (presets)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    # in the precision's dtype from the start: Lightning loads a resumed checkpoint before it converts the module,
    # so a float32-built module would round a 64-true checkpoint's weights and controller state through float32
    with trainer.init_module():
        model = instantiate(cfg.model)
        module = GraceModule(model=model, controller=instantiate(cfg.loss.controller),
                             rul_loss=instantiate(cfg.rul_loss.fn), optimizer=instantiate(cfg.optimizer),
                             grad_clip=cfg.grad_clip, grad_mode=cfg.grad_mode, on_nonfinite=cfg.on_nonfinite,
                             eval_prefix=cfg.protocol.eval_prefix, accumulate=cfg.accumulate)
    if cfg.compile:
        model.backbone.compile()  # in place: parameter names and the module's calls stay as they are
    return data, module, trainer


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (config ``threads``; None: torch's default). OMP_NUM_THREADS
    follows, so that Lightning's DDP launcher, which sets both when that variable is unset, keeps the value and
    the ranks it starts inherit it: under DDP on CPU each process gets ``threads``."""
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def run(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg, HydraConfig.get())
    check_interval_settings(cfg)  # before training: the interval is calibrated after it
    if cfg.print_config:
        print_config(cfg)
    start, cpu_start = time.time(), time.process_time()
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    data, module, trainer = build(cfg)
    n_params = sum(p.numel() for p in module.model.parameters())
    last = out_dir / "checkpoints" / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if cfg.resume and resume_from is None:
        log.warning("resume=true but %s does not exist: starting from scratch", last)
    log.info("%s", opening(cfg, trainer, HydraConfig.get().runtime.choices.model, n_params, resume_from))
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=False)  # our own file (RNG states)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=data, ckpt_path=best or None, weights_only=False, verbose=False)
    # a resumed run adds the time before its checkpoint; CPU time counts every thread of this process
    wall_time_s = time.time() - start + module.prior_wall_time_s
    cpu_time_s = time.process_time() - cpu_start + module.prior_cpu_time_s
    summary = run_summary(cfg, trainer, module, n_params=n_params, wall_time_s=wall_time_s, cpu_time_s=cpu_time_s)
    if not trainer.is_global_zero:  # DDP: every rank scored the whole test set with the same weights
        return summary
    write_scored(out_dir, cfg, summary, module, data.splits)
    atomic_write_text(out_dir / "preprocessing.json", data.splits.preprocessing.to_json())  # for grace_lit.predict
    log.info("%s", closing(cfg, summary, out_dir))
    return summary


def user_error(err: BaseException) -> GraceError | None:
    """The GraceError behind ``err``, if any (Hydra's instantiate wraps what a constructor raises)."""
    while err is not None and not isinstance(err, GraceError):
        err = err.__cause__
    return err


def discard_run_dir(path: str | Path) -> None:
    """Remove the directory Hydra made for a refused command, when it holds nothing but Hydra's own files
    (.hydra/ and the job's .log); a directory with anything else in it (a resumed run, a study) stays. Parents
    left empty below the working directory (outputs/<date>/) go too."""
    path = Path(path).resolve()
    if not (path / ".hydra").is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in path.iterdir()):
        return
    shutil.rmtree(path, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in path.parents:
        if parent == cwd or not parent.is_relative_to(cwd):
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def refused(err: BaseException | None) -> bool:
    """A single run refused before it started: its run directory is removed (a sweep's job keeps its record)."""
    return isinstance(err, Refused) and HydraConfig.get().mode != RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet()
    try:
        return run(cfg)["selection_score"]
    except Exception as err:  # a failure leaves a metrics.json with status "failed" (the sweep report lists it)
        user = user_error(err)
        if refused(user):
            discard_run_dir(HydraConfig.get().runtime.output_dir)  # nothing ran: nothing to keep
        else:
            write_failure(Path(cfg.paths.output_dir), cfg, user or err)
        if user is None or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # multirun: Hydra records this job as failed, runs the others, then exits non-zero
        log.error("%s", user)
        sys.exit(1)


if __name__ == "__main__":
    main()
