"""OmegaConf resolvers used by conf/ (registered on import) and the checks run before any training."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, get_object
import omegaconf
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from grace_lit.data.datamodule import PROTOCOLS
from grace_lit.errors import Refused

# omegaconf 2.4 deprecates register_new_resolver for register_resolver, whose 2.3 namesake is the legacy API
_register = (OmegaConf.register_resolver if tuple(map(int, omegaconf.__version__.split(".")[:2])) >= (2, 4)
             else OmegaConf.register_new_resolver)
_register("len", lambda seq: len(seq), replace=True)  # the input width in runs saved before n_inputs (results/)


def _n_inputs(dataset: DictConfig) -> int:
    """The model's input width, known before any data is read: the sensors, plus the one-hot of the operating
    condition that ``Preprocessing`` appends with ``condition_input`` (N-CMAPSS has no such key: its continuous
    flight conditions are sensors already)."""
    return len(dataset.sensors) + (dataset.condition_count if dataset.get("condition_input") else 0)


_register("n_inputs", _n_inputs, replace=True)
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


def _some_batches(value: Any) -> bool:
    """limit_train_batches: as above, but at least one batch (0 would record an untrained model as completed)."""
    return _fraction_or_count(value) and value > 0


def _names(value: Any) -> bool:
    """A list of names (a bare string would be read letter by letter)."""
    return isinstance(value, (list, ListConfig)) and all(isinstance(v, str) for v in value)


_MISSING = object()
N_TASKS = 2  # the model's two heads: RUL and health state


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
    check("trainer.limit_train_batches", _some_batches,
          "a fraction in (0, 1] (1.0: all batches) or an integer number of batches >= 1 (0 trains nothing)")
    for split in ("val", "test"):
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
    check_present("callbacks.progress.estimate.skip_batches", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    check_present("callbacks.progress.estimate.batches", _count, "an integer >= 1")
    check_present("callbacks.progress.estimate.quiet_below_s", lambda v: _is_number(v) and v >= 0, ">= 0 (seconds)")
    controller = cfg.loss.controller
    check_present("loss.controller.n_tasks", lambda v: v == N_TASKS,
                  f"{N_TASKS}: the model has {N_TASKS} tasks (RUL, health state)")
    check_present("loss.controller.weights", lambda v: not isinstance(v, str) and len(v) == N_TASKS
                  and all(_is_number(w) and w >= 0 for w in v) and sum(v) > 0,
                  f"{N_TASKS} numbers >= 0, one per task (RUL, health state), not all 0, e.g. [0.5, 0.5]")
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
    for key in ("features", "conditions"):  # dataset=table's columns
        check_present(f"dataset.{key}", _names, f"a list of column names, e.g. 'dataset.{key}=[temperature,pressure]' "
                      f"(square brackets, quoted for the shell)")
    check_present("dataset.condition_decimals", lambda v: not isinstance(v, str) and all(_is_int(d) for d in v),
                  "a list of integers, one per condition column, e.g. [0, 2, 0] ([]: chosen from the data)")
    if "features" not in cfg.dataset:  # dataset=table's sensors repeat its features (checked above)
        check("dataset.sensors", _names, "a list of sensor names, e.g. 'dataset.sensors=[s2,s3]'")
    source = get_class(cfg.dataset._target_)
    known = getattr(source, "SENSORS", None)
    if known is not None and _names(cfg.dataset.sensors):
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
    name = OmegaConf.select(cfg, "protocol.name")
    check("protocol.test_trace", lambda v: v is False or (v is True and name == "holdout"),
          "false, or true with protocol=holdout (protocol=paper scores the test set every epoch already)")
    check("data.split_seed", _is_int, "an integer")
    check("dataset.cap_test_rul", lambda v: isinstance(v, bool), "true or false")
    check("data.batch_size", _count, "an integer >= 1")
    check("data.eval_batch_size", _count, "an integer >= 1")
    check("accumulate", _count, "an integer >= 1 (batches per optimizer step)")
    check_present("threads", lambda v: v is None or _count(v), "an integer >= 1 (torch's intra-op threads per "
                  "process), or null (torch's default)")
    return found


def _conf_dir(hydra: DictConfig) -> Path | None:
    for source in hydra.runtime.get("config_sources", []):
        if source.provider == "main" and source.schema == "file":
            return Path(source.path)
    return None


def _base_choices(hydra: DictConfig) -> list[str]:
    """``group=_name``: a base config the group's options share (conf/dataset/_cmapss.yaml), chosen on its own.
    Hydra 1.3 lists every file of a group among its choices and has no way to hide one, so it is refused here."""
    found = []
    for group, choice in hydra.runtime.choices.items():
        if isinstance(choice, str) and choice.startswith("_") and not group.startswith("hydra/"):
            conf = _conf_dir(hydra)
            options = sorted(p.stem for p in (conf / group).glob("*.yaml") if not p.stem.startswith("_")
                             ) if conf else []
            listed = f": {', '.join(options[:8])}{', ...' if len(options) > 8 else ''}" if options else ""
            found.append(f"{group}={choice}: a base config the other {group} options build on, not one to choose; "
                         f"choose one whose name does not start with '_'{listed}")
    return found


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Every key path of a plain container (OmegaConf.to_container), nested ones included."""
    if not isinstance(node, dict):
        return []
    return [path for key, value in node.items() for path in (f"{prefix}{key}", *_keys(value, f"{prefix}{key}."))]


def _arguments(target: str) -> list[str] | None:
    """The keyword arguments ``target`` takes (None: it takes any, or it cannot be inspected)."""
    try:
        parameters = inspect.signature(get_object(target)).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters]


def _unread_additions(cfg: DictConfig, hydra: DictConfig) -> list[str]:
    """``+key=value`` overrides that add a key nothing reads: a misspelt key (Hydra suggests '+' for a key it does
    not know), or an argument the object built from that node does not take. A new entry of callbacks or logger
    (each entry is built) and a new search-space key are read; so are config groups and hydra's own keys."""
    overrides = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    added = [o for o in overrides if o.is_add() and o.key_or_group not in hydra.runtime.choices
             and o.key_or_group.split(".")[0] != "hydra"]
    keys = [o.key_or_group for o in added]
    known = [k for k in _keys(OmegaConf.to_container(cfg, resolve=False)) if k.split(".")[0] != "hydra"
             and not any(k == a or k.startswith(a + ".") or a.startswith(k + ".") for a in keys)]
    found = []
    for override, key in zip(added, keys):
        parent, _, name = key.rpartition(".")
        if parent in ("callbacks", "logger") or key.startswith("hparams_search.params.") or (
                name.startswith("_") and name.endswith("_")):  # _target_, _partial_, ...: instantiate's own keys
            continue
        value = override.input_line.split("=", 1)[1] if "=" in override.input_line else ""
        node = OmegaConf.select(cfg, parent) if parent else cfg
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if target is not None:
            arguments = _arguments(target)
            if arguments is None or name in arguments:
                continue
            close = difflib.get_close_matches(name, arguments, n=1)
            meant = f" (did you mean {parent}.{close[0]}={value}, without '+'?)" if close else ""
            found.append(f"{override.input_line}: {target} takes no argument {name!r}{meant}")
            continue
        close = difflib.get_close_matches(key, known, n=1)
        meant = f" (did you mean {close[0]}={value}, without '+'?)" if close else ""
        found.append(f"{override.input_line}: adds the key {key}, which nothing reads{meant}")
    return found


def validate(cfg: DictConfig, hydra: DictConfig | None = None) -> None:
    """Reject bad values before any data is read or model built: one Refused error listing every bad key.
    ``hydra`` (the Hydra node, HydraConfig.get()) adds the checks of how the command composed the config: a base
    config chosen on its own, and '+' overrides that add a key nothing reads."""
    chosen = _base_choices(hydra) if hydra is not None else []
    added = _unread_additions(cfg, hydra) if hydra is not None else []
    found = [*chosen, *added, *_problems(cfg)]
    if found:
        lines = "\n".join(f"  {line}" for line in found)
        fixes = ["set each key to a value of the allowed type and range (a command-line override key=value, or the "
                 "file under conf/)"] if len(found) > len(chosen) + len(added) else []
        if chosen:
            fixes.append("choose one of the options listed instead")
        if added:
            fixes.append("drop each '+' key nothing reads, or set the existing key it meant, without '+'")
        raise Refused(f"Invalid configuration:\n{lines}\nFix: {'; '.join(fixes)}.")


# Here, not in train.py: python -m grace_lit.train runs that module as __main__, whose functions joblib's launcher
# pickles by value, and torch.backends.mps does not pickle.
def check_device(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one is refused before anything is built (Lightning's own error names
    no way out)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's "gpu" is CUDA or Apple's MPS
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not mps:
        raise Refused(f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none on this machine "
                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}).\n"
                      f"Fix: trainer=cpu (or trainer.accelerator=auto: a GPU when there is one), or install a CUDA "
                      f"build of torch on a machine with a GPU.")
