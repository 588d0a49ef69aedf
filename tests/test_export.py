"""--export onnx: the exported graph predicts what PyTorch predicts (within 1e-5) on real windows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import composed
from grace_lit.data.synthetic_table import generate
from grace_lit.export import export_onnx
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
    onnx_path, contract_path = export_onnx(model, splits.preprocessing, tmp_path / "export")
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
