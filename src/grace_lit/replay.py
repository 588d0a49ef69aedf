"""Re-score a finished run's selected checkpoint on every window of a few test units.

``predictions.csv`` holds the last window per unit (what the NASA protocol scores); a full RUL trajectory needs
every window. This rebuilds the run's test set and model from the config Hydra saved, loads the selected
checkpoint with its EMA shadow swapped in (as ``trainer.test`` scores it) and predicts the chosen units.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from grace_lit.errors import GraceError
from grace_lit.results import named_units
from grace_lit.rundir import load_run_config

MODEL_PREFIX = "model."  # GraceModule keeps the network under .model


def selected_model(run_dir: Path, cfg: DictConfig) -> nn.Module:
    """The model of the selected checkpoint, with the EMA shadow (when the run used EMA) in its parameters."""
    checkpoint_cfg = cfg.callbacks.get("checkpoint")
    path = run_dir / "checkpoints" / f"{checkpoint_cfg.filename}.ckpt" if checkpoint_cfg else None
    if path is None or not path.is_file():
        raise GraceError(f"No selected checkpoint in {run_dir / 'checkpoints'}. Fix: re-run with the checkpoint "
                         f"callback (callbacks.checkpoint), or plot without trajectories (--trajectory-units 0).")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = instantiate(cfg.model)
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items()
                           if k.startswith(MODEL_PREFIX)})
    if cfg.callbacks.get("ema") is not None:
        ema = instantiate(cfg.callbacks.ema)
        ema.load_state_dict(ckpt["callbacks"][ema.state_key])
        with torch.no_grad():
            for param, shadow in zip(model.parameters(), ema.shadow):
                param.copy_(shadow)
    return model


def closest_to_failure(unit: torch.Tensor, rul: torch.Tensor, is_last: torch.Tensor, n_units: int) -> list[int]:
    """The ``n_units`` units whose last window has the smallest true RUL (ties: lower unit id)."""
    last = pd.DataFrame({"unit": unit[is_last].numpy(), "rul": rul[is_last].numpy()})
    return last.sort_values(["rul", "unit"]).head(n_units)["unit"].tolist()


@torch.no_grad()
def window_predictions(run_dir: Path, n_units: int) -> pd.DataFrame:
    """Columns unit, cycle (relative to the unit's last observed cycle, 0 = last), rul_true, rul_pred, is_last."""
    cfg = load_run_config(run_dir)
    model = selected_model(run_dir, cfg).eval()
    data = instantiate(cfg.data, source=instantiate(cfg.dataset))
    data.setup("test")
    test = data.splits.test
    units = closest_to_failure(test.unit, test.rul, test.is_last, n_units)
    index = torch.nonzero(torch.isin(test.unit, torch.tensor(units))).squeeze(1)
    parts = []
    for chunk in index.split(cfg.data.eval_batch_size):
        x, rul, _, unit, is_last = test.__getitems__(chunk.tolist())
        rul_pred, _ = model(x)
        parts.append(pd.DataFrame({"unit": unit.numpy(), "rul_true": rul.numpy(), "rul_pred": rul_pred.numpy(),
                                   "is_last": is_last.numpy()}))
    frame = pd.concat(parts, ignore_index=True)
    stride = cfg.dataset.eval_stride
    frame["cycle"] = -stride * frame.groupby("unit").cumcount(ascending=False)
    return named_units(frame, data.splits.unit_names)  # as predictions.csv names them
