"""OmegaConf resolvers used by conf/ (registered on import) and the checks run before any training."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.utils import get_class
import omegaconf
from omegaconf import DictConfig, OmegaConf

from grace_lit.data.datamodule import PROTOCOLS
from grace_lit.errors import GraceError

# omegaconf 2.4 deprecates register_new_resolver for register_resolver, whose 2.3 namesake is the legacy API
_register = (OmegaConf.register_resolver if tuple(map(int, omegaconf.__version__.split(".")[:2])) >= (2, 4)
             else OmegaConf.register_new_resolver)
_register("len", lambda seq: len(seq), replace=True)
# health states: one per RUL-threshold interval, or healthy/degraded from N-CMAPSS's hs flag
_register("n_states", lambda thresholds, labels="rul": 2 if labels == "hs" else len(thresholds) + 1, replace=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _fraction_or_count(value: Any) -> bool:
    """Lightning's limit_*_batches: a float fraction of the batches, or an integer count."""
    return _is_int(value) and value >= 0 or isinstance(value, float) and 0 <= value <= 1


_MISSING = object()


def _problems(cfg: DictConfig) -> list[str]:
    """One line per bad value: the key, the value and the allowed range."""
    unset = [key for key in cfg.dataset if OmegaConf.is_missing(cfg.dataset, key)]
    if unset:  # dataset=table names its files and columns on the command line; nothing else can be checked yet
        return [f"dataset.{key}: not set; must be given (dataset=table: e.g. dataset.train=fleet.csv "
                f"'dataset.features=[temperature,pressure]'; conf/dataset/table.yaml)" for key in unset]
    found = []

    def check(key: str, ok: Callable[[Any], bool], allowed: str) -> None:
        value = OmegaConf.select(cfg, key)
        try:
            good = ok(value)
        except TypeError:  # a value of another type altogether (a list where a number belongs, or the reverse)
            good = False
        if not good:
            found.append(f"{key}={value!r}: must be {allowed}")

    def check_present(key: str, ok: Callable[[Any], bool], allowed: str) -> None:
        if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:  # a preset may drop the stage
            check(key, ok, allowed)

    check("seed", lambda v: _is_int(v) and 0 <= v < 2 ** 32, "an integer in [0, 2**32)")
    check("trainer.max_epochs", _count, "an integer >= 1")
    for split in ("train", "val", "test"):
        check(f"trainer.limit_{split}_batches", _fraction_or_count,
              "a fraction in [0, 1] (1.0: all batches) or an integer number of batches")
    check_present("trainer.overfit_batches", _fraction_or_count, "a fraction in [0, 1] or an integer number of batches")
    check("trainer.log_every_n_steps", _count, "an integer >= 1")
    check("grad_clip", _positive, "> 0 (the global gradient-norm clip)")
    check("optimizer.lr", _positive, "a number > 0")
    check("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, ">= 0")
    check("optimizer.betas", lambda v: not isinstance(v, str) and len(v) == 2
          and all(_is_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.999]")
    check_present("loss.controller.warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    check_present("callbacks.lr_warmup.epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    check_present("callbacks.lr_warmup.start_factor", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]")
    check_present("callbacks.ema.decay", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")
    check_present("callbacks.plateau.factor", lambda v: _is_number(v) and 0 < v < 1, "in (0, 1)")
    check_present("callbacks.plateau.patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (epochs)")
    check_present("callbacks.plateau.min_lr", lambda v: _is_number(v) and v >= 0, ">= 0")
    check_present("callbacks.early_stopping.patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (epochs)")
    check_present("callbacks.progress.every_n_epochs", _count, "an integer >= 1")
    controller = cfg.loss.controller
    if "lr" in controller:  # a learnable controller's own parameter group
        check("loss.controller.lr", _positive, "> 0")
    if controller._target_.endswith(".GABA"):
        check("loss.controller.beta", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")
        k = controller.n_tasks
        check("loss.controller.min_weight", lambda v: _is_number(v) and 0 <= v < 1 / k,
              f"in [0, 1/K) = [0, {1 / k:.4g}) for K={k} tasks (a floor of 1/K or more forces every weight to 1/K)")
    check("dataset.window", _count, "an integer >= 1 and at most the shortest training unit")
    check("dataset.stride", _count, "an integer >= 1")
    check("dataset.eval_stride", _count, "an integer >= 1")
    check("dataset.max_rul", _positive, "> 0 (cycles)")
    check("dataset.health_thresholds",
          lambda v: all(_is_number(t) for t in v) and all(a < b for a, b in zip(v, v[1:])),
          "strictly increasing RUL values, e.g. [30, 70]")
    source = get_class(cfg.dataset._target_)
    known = getattr(source, "SENSORS", None)
    if known is not None:
        unknown = [s for s in cfg.dataset.sensors if s not in known]
        names = getattr(source, "SENSORS_HELP", f"{known[0]}..{known[-1]}")
        check("dataset.sensors", lambda v: not unknown, f"names from {names} (unknown: {unknown})")
    labels = getattr(source, "HEALTH_LABELS", None)  # N-CMAPSS: where the health states come from
    if labels is not None:
        check("dataset.health_labels", lambda v: v in labels, f"one of {list(labels)}")
    for key in ("downsample", "chunk_rows"):  # N-CMAPSS reading
        if key in cfg.dataset:
            check(f"dataset.{key}", _count, "an integer >= 1")
    check("protocol.name", lambda v: v in PROTOCOLS, f"one of {list(PROTOCOLS)} (or choose protocol=<name>)")
    check("protocol.val_cuts", _count, "an integer >= 1 (cuts per held-out unit)")
    check("protocol.folds", _count, "an integer >= 1 (1: no k-fold)")
    folds = OmegaConf.select(cfg, "protocol.folds")
    check("protocol.fold", lambda v: _is_int(v) and _is_int(folds) and 0 <= v < max(folds, 1),
          f"an integer in [0, protocol.folds={folds})")
    check("data.split_seed", _is_int, "an integer")
    check("dataset.cap_test_rul", lambda v: isinstance(v, bool), "true or false")
    check("data.batch_size", _count, "an integer >= 1")
    check("data.eval_batch_size", _count, "an integer >= 1")
    check("accumulate", _count, "an integer >= 1 (batches per optimizer step)")
    return found


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any data is read or model built: one GraceError listing every bad key."""
    found = _problems(cfg)
    if found:
        lines = "\n".join(f"  {line}" for line in found)
        raise GraceError(f"Invalid configuration:\n{lines}\nFix: set each key to a value of the allowed type and range "
                         f"(a command-line override key=value, or the file under conf/).")
