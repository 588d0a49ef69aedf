"""Export a trained model to ONNX beside a JSON contract of what it expects (the run's preprocessing).

The ONNX graph takes standardised windows (batch, window, features) as float32 and returns the RUL (batch,)
and the health-state logits (batch, states); the contract says how to make those windows from raw rows.
Needs the optional ``export`` extra (onnx; onnxruntime to run the exported file).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from grace_lit.data.preprocess import Preprocessing
from grace_lit.errors import GraceError
from grace_lit.conformal import Calibration
from grace_lit.io import atomic_write_text

INPUT, OUTPUTS = "windows", ("rul", "health_logits")
INTERVAL_HOW = ("band = number of `edges` <= rul (form mondrian; band 0 otherwise); half = half_widths[band] "
                "(null: unbounded), times (spread + spread_floor) for form spread (an ensemble's standard "
                "deviation); for form monotone (half_widths[0] not null) half = the linear interpolation of "
                "`knot_half_widths` at rul over `knots` (constant beyond them); rul_lo = clip(rul - half), rul_hi = "
                "clip(rul + half), clip to [low, high] (high null: no upper bound); the true RUL lies in "
                "[rul_lo, rul_hi] with probability `coverage` (nominal), as calibrated on held-out units")
OPEN_END = ("rul_hi equal to `high` (or unbounded) is open: the interval says RUL >= rul_lo, shown as "
            "'<high>+' (e.g. 125+), since the truth it was calibrated on is capped at `high`")


def export_onnx(model: nn.Module, prep: Preprocessing, out_dir: Path, calibration: Calibration | None = None,
                interval_note: str | None = None) -> tuple[Path, Path]:
    """Write ``model.onnx`` (dynamic batch size) and ``contract.json`` into ``out_dir``; the contract's
    ``interval`` is the run's calibration (grace_lit.conformal.Calibration), or says why there is none."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as err:
        raise GraceError("--export onnx needs the onnx package. Fix: pip install 'grace-lit[export]'.") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = torch.zeros(1, prep.window, prep.n_inputs)
    dynamic = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
    with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is deprecated; it needs no
        warnings.simplefilter("ignore")  # onnxscript, which the dynamo exporter would
        torch.onnx.export(model, (example,), out_dir / "model.onnx", input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=dynamic, dynamo=False)
    contract = {
        "input": {"name": INPUT, "shape": ["batch", prep.window, prep.n_inputs], "dtype": "float32",
                  "what": "windows of the last `window` rows of a unit (oldest first), each feature standardised "
                          "as (value - mean[condition]) / std[condition], then, with `condition_input`, a one-hot "
                          "of the row's condition (its index in `keys`); units shorter than the window are "
                          "front-padded by `pad_mode`"},
        "outputs": {"rul": "remaining useful life at the window's last row (time units of the training table)",
                    "health_logits": "one logit per health state; softmax gives the probabilities; state k = "
                                     "the number of health_thresholds the RUL lies below"},
        "preprocessing": json.loads(prep.to_json()),
        "interval": {**calibration.to_dict(), "how": INTERVAL_HOW, "open_end": OPEN_END} if calibration is not None
        else {"form": None, "note": interval_note},
    }
    contract_path = out_dir / "contract.json"
    atomic_write_text(contract_path, json.dumps(contract, indent=1))
    return out_dir / "model.onnx", contract_path
