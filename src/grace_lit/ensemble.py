"""A model made of runs: several finished runs opened together, checked to belong together, their predictions
combined. Two kinds: a **seed ensemble** (runs that share one split and differ in seed: calibrated on the
held-out units they share) and a **K-fold ensemble** (the K runs of ``protocol.folds=K``, one per
``protocol.fold``: every training unit is held out by exactly one of them, so CV+ calibrates on all of them,
each scored by the one fold model that never trained on it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from grace_lit.errors import GraceError
from grace_lit.rundir import load_preprocessing, load_run_config, read_held_out

SPLIT_KEYS = ("protocol.name", "dataset.name", "data.split_seed", "protocol.holdout_fraction", "protocol.folds",
              "protocol.fold", "protocol.val_cuts", "interval.calibration_cuts")
LOCAL_KEYS = ("data_dir", "cache_dir")  # where a machine keeps the files, not what they are
# fitted on each run's training units: the folds of one split differ in them by construction
FITTED_KEYS = ("keys", "setting_scale", "radius", "mean", "std", "setting_range")
HELD_OUT_KEYS = ["unit", "cut", "row", "rul_true", "is_last"]

Member = tuple[Path, DictConfig, dict[str, Any]]  # a run's directory, config and preprocessing.json as read


@dataclass
class Ensemble:
    members: list[Member]
    kind: str  # "seeds" | "folds"

    @property
    def dirs(self) -> list[Path]:
        return [d for d, _, _ in self.members]

    @property
    def cfg(self) -> DictConfig:
        return self.members[0][1]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ensemble_difference(runs: list[Member], folds: bool = False) -> str | None:
    """The first setting that two of ``runs`` do not share: split, then dataset, then preprocessing, as a
    message naming it; None when an ensemble of them is sound. ``folds``: the runs are the folds of one split,
    which differ in ``protocol.fold`` and in what each fitted on its own training units. A dataset or
    preprocessing key that only one of two runs records (one written before the key existed) is not compared."""
    def fields(cfg: DictConfig, prep: dict[str, Any]) -> dict[str, Any]:
        out = {key: OmegaConf.select(cfg, key) for key in SPLIT_KEYS if not (folds and key == "protocol.fold")}
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        out.update({f"dataset.{k}": v for k, v in dataset.items() if k not in LOCAL_KEYS})
        out.update({f"preprocessing.{k}": v for k, v in prep.items() if not (folds and k in FITTED_KEYS)})
        return out

    (first, _, _), reference = runs[0], fields(runs[0][1], runs[0][2])
    fix = ("pass the K runs of one protocol.folds=K sweep (protocol.fold=0,...,K-1, data.split_seed fixed)" if folds
           else "pass runs that differ only in seed (e.g. one sweep over seed=... with data.split_seed fixed)")
    for other, cfg, prep in runs[1:]:
        theirs = fields(cfg, prep)
        for key in dict.fromkeys([*reference, *theirs]):
            if key not in SPLIT_KEYS and (key not in reference or key not in theirs):
                continue
            if reference.get(key) != theirs.get(key):
                return (f"runs {first} and {other} differ in {key} ({_shown(reference.get(key))} vs "
                        f"{_shown(theirs.get(key))}): an ensemble averages runs that share preprocessing, features "
                        f"and split, and is calibrated on the held-out units they share. Fix: {fix}.")
    return None


def fold_difference(runs: list[Member]) -> str | None:
    """Why ``runs`` are not the K folds of one split, each once; None when they are."""
    folds = [OmegaConf.select(cfg, "protocol.fold") for _, cfg, _ in runs]
    k = OmegaConf.select(runs[0][1], "protocol.folds")
    if k == len(runs) and sorted(folds) == list(range(k)):
        return None
    return (f"runs {', '.join(str(d) for d, _, _ in runs)} hold out protocol.fold={folds} of protocol.folds={k}: a "
            f"K-fold ensemble needs each fold 0..K-1 exactly once, so that every training unit is held out by one "
            f"of them. Fix: pass the {k} runs of one sweep protocol.fold={','.join(map(str, range(k or 0)))}.")


def open_runs(run_dirs: list[Path]) -> Ensemble:
    """The runs as one model, refused unless they belong together: a K-fold ensemble when they hold out
    different folds, a seed ensemble otherwise."""
    members = []
    for d in run_dirs:
        load_preprocessing(d)  # the message for a run without one
        members.append((d, load_run_config(d), json.loads((d / "preprocessing.json").read_text())))
    kind = "folds" if len({OmegaConf.select(cfg, "protocol.fold") for _, cfg, _ in members}) > 1 else "seeds"
    difference = ensemble_difference(members, folds=kind == "folds")
    if difference is None and kind == "folds":
        difference = fold_difference(members)
    if difference:
        raise GraceError(difference)
    return Ensemble(members, kind)


def seed_held_out(run_dirs: list[Path]) -> pd.DataFrame | None:
    """A seed ensemble's calibration.csv rows averaged: rul_pred their mean, rul_spread their standard deviation
    (ddof=1); None when a run has none."""
    frames = [read_held_out(d) for d in run_dirs]
    if any(f is None for f in frames):
        return None
    first = frames[0]
    for d, frame in zip(run_dirs[1:], frames[1:]):
        if len(frame) != len(first) or not frame[HELD_OUT_KEYS].astype(str).equals(first[HELD_OUT_KEYS].astype(str)):
            raise GraceError(f"runs {run_dirs[0]} and {d} hold out different windows (calibration.csv). Fix: pass "
                             f"runs that share data.split_seed and protocol settings.")
    preds = np.stack([f["rul_pred"].to_numpy(dtype=np.float64) for f in frames])
    return first[HELD_OUT_KEYS].assign(rul_pred=preds.mean(axis=0), rul_spread=preds.std(axis=0, ddof=1))


def out_of_fold(ensemble: Ensemble) -> pd.DataFrame | None:
    """A K-fold ensemble's calibration.csv rows stacked, each scored by the fold model that held its unit out
    (``fold``); None when a run has none. Refused where one unit is held out by two folds."""
    frames = [read_held_out(d) for d in ensemble.dirs]
    if any(f is None for f in frames):
        return None
    stacked = pd.concat([f.assign(fold=int(cfg.protocol.fold)) for f, (_, cfg, _) in zip(frames, ensemble.members)],
                        ignore_index=True)
    shared = stacked.groupby("unit")["fold"].nunique()
    if (shared > 1).any():
        raise GraceError(f"unit {shared[shared > 1].index[0]} is held out by more than one fold run "
                         f"(calibration.csv). Fix: pass the fold runs of one split (one data.split_seed).")
    return stacked


def combine(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """The members' prediction tables as one: rul_pred their mean, rul_spread their standard deviation (ddof=1)
    right after it, p_health_<k> their mean probabilities and health_pred its most probable state; also every
    member's rul_pred, (members, rows)."""
    preds = np.stack([f["rul_pred"].to_numpy(dtype=np.float64) for f in frames])
    frame = frames[0].assign(rul_pred=preds.mean(axis=0))
    frame.insert(frame.columns.get_loc("rul_pred") + 1, "rul_spread", preds.std(axis=0, ddof=1))
    p_columns = [c for c in frame.columns if c.startswith("p_health_")]
    if p_columns and all(set(p_columns) <= set(f.columns) for f in frames):
        p = np.mean([f[p_columns].to_numpy() for f in frames], axis=0)
        frame[p_columns] = p
        frame["health_pred"] = p.argmax(axis=1)
    return frame, preds
