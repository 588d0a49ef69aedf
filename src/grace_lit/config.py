"""OmegaConf resolvers used by conf/ (registered on import) and the checks run before any training."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

OmegaConf.register_new_resolver("len", lambda seq: len(seq), replace=True)
OmegaConf.register_new_resolver("n_states", lambda thresholds: len(thresholds) + 1, replace=True)


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any data is read or model built (extended by the reliability work)."""
