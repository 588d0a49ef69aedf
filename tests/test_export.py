"""--export onnx: the exported graph predicts what PyTorch predicts (within 1e-5) on real windows, and its contract
reproduces the run's interval."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import composed
from grace_lit.data.synthetic_table import generate
from grace_lit.export import export_onnx
from grace_lit.conformal import calibrate
from test_table import PUMP_FEATURES, table

ort = pytest.importorskip("onnxruntime")  # the optional `export` extra (in `dev`, so CI runs this)


def test_onnx_predictions_equal_pytorch(tmp_path):
    pumps = generate(tmp_path / "pumps", units=6, test_units=2, seed=1)
    source = table(pumps / "fleet.csv", window=30)
    splits = source.build(source.train_units(), np.array([], dtype=np.int64), seed=0)
    cfg = composed(["dataset=table", "dataset.train=x", f"dataset.features=[{','.join(PUMP_FEATURES)}]",
                    "model=small"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    rng = np.random.default_rng(0)
    calibration = calibrate(rng.uniform(0, 125, 100), rng.uniform(0, 125, 100), "mondrian", 0.9, [30.0, 70.0],
                            low=0.0, high=125.0)
    onnx_path, contract_path = export_onnx(model, splits.preprocessing, tmp_path / "export", calibration)
    x = splits.test.series[splits.test.starts[:, None] + torch.arange(30)]  # every test window, batch of ~100
    assert x.shape[0] > 50
    with torch.no_grad():
        rul, logits = model(x)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_rul, onnx_logits = session.run(None, {"windows": x.numpy()})
    np.testing.assert_allclose(onnx_rul, rul.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(onnx_logits, logits.numpy(), rtol=0, atol=1e-5)
    assert float(rul.abs().max()) > 1  # a real output scale (cycles), not near-zero outputs
    contract = json.loads(contract_path.read_text())
    assert contract["input"]["shape"] == ["batch", 30, 3]
    assert contract["preprocessing"]["features"] == PUMP_FEATURES
    # the contract's interval, applied as its "how" says, is the run's
    interval = contract["interval"]
    half = np.array([np.inf if h is None else h for h in interval["half_widths"]])
    half = half[np.searchsorted(interval["edges"], onnx_rul, side="right")]
    lo, hi = (np.clip(onnx_rul + sign * half, interval["low"], interval["high"]) for sign in (-1, 1))
    expected = calibration.interval(onnx_rul)
    np.testing.assert_allclose(lo, expected[0])
    np.testing.assert_allclose(hi, expected[1])
    assert interval["coverage"] == 0.9 and interval["form"] == "mondrian" and "band" in interval["how"]
    assert "open" in interval["open_end"] and "125+" in interval["open_end"]  # rul_hi at the cap: RUL >= rul_lo
