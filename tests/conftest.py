"""Shared fixtures: the real C-MAPSS files, extracted once per session into a temporary cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import grace_lit.config  # noqa: F401  (registers the resolvers conf/ uses)
from grace_lit.data.archive import ensure_extracted

REPO = Path(__file__).resolve().parents[1]
SENSORS = ["s2", "s3", "s4", "s7", "s8", "s9", "s11", "s12", "s13", "s14", "s15", "s17", "s20", "s21"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ.get("GRACE_LIT_DATA_DIR") or tmp_path_factory.mktemp("data-cache"))
    ensure_extracted(cache)
    return cache


@pytest.fixture(scope="session")
def cmapss_dir(data_cache: Path) -> Path:
    return data_cache / "cmapss"


def cli_env(data_cache: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: the session's data cache, the checkout's sources first (then the caller's
    PYTHONPATH: a machine may hold packages only there), one thread (on 2 shared cores a 2-thread LSTM runs up to
    40x slower than a 1-thread one)."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "GRACE_LIT_DATA_DIR": str(data_cache), "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1"}


def composed(overrides: list[str] = (), config_name: str = "train", hydra: bool = False) -> DictConfig:
    """The config the CLI would compose from conf/ with these overrides (``hydra``: with the hydra node)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)
