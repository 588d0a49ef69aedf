"""What a finished run directory holds, read back: its composed config, its fitted preprocessing and the held-out
cut ends it scored (``calibration.csv``). Reading only: nothing here builds a model or calibrates."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

import grace_lit.config  # noqa: F401  (registers the resolvers the saved config uses)
from grace_lit.data.preprocess import Preprocessing
from grace_lit.errors import GraceError


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise GraceError(f"{path} is missing. Fix: pass a Hydra run directory of grace_lit.train.")
    return OmegaConf.load(path)


def load_preprocessing(run_dir: Path) -> Preprocessing:
    path = run_dir / "preprocessing.json"
    if not path.is_file():
        raise GraceError(f"{path} is missing. Fix: pass the directory of a run that finished (grace_lit.train "
                         f"writes preprocessing.json beside metrics.json).")
    return Preprocessing.from_json(path.read_text())


def read_held_out(run_dir: Path) -> pd.DataFrame | None:
    """calibration.csv (protocol=holdout runs), None where the run has none."""
    path = run_dir / "calibration.csv"
    return pd.read_csv(path) if path.is_file() else None
