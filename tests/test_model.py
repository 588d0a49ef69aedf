"""The composed model configs: parameter counts, shared parameters, output shapes."""
from __future__ import annotations

import torch
from hydra.utils import instantiate

from conftest import composed


def composed_model(*overrides: str):
    return instantiate(composed(overrides).model)


def lstm_params(inp: int, hidden: int) -> int:
    return 2 * 4 * (hidden * inp + hidden * hidden + 2 * hidden)  # two directions, 4 gates, two biases


def test_cmapss_model_parameter_count():
    model = composed_model("dataset=FD002")
    cnn = (14 * 32 * 3 + 32) + (32 * 64 * 3 + 64) + (64 * 32 * 3 + 32) + 2 * (32 + 64 + 32)  # convs + batchnorms
    lstm = lstm_params(32, 256)
    attention = 4 * (512 * 512 + 512)  # q, k, v and output projections
    norm = 2 * 512
    fc = (512 * 256 + 256) + (256 * 128 + 128)
    heads = (128 * 64 + 64 + 64 * 1 + 1) + (128 * 64 + 64 + 64 * 3 + 3)
    assert sum(p.numel() for p in model.backbone.parameters()) == cnn + lstm + attention + norm + fc
    assert sum(p.numel() for p in model.parameters()) == cnn + lstm + attention + norm + fc + heads == 1_840_580


def test_shared_parameters_are_the_backbone_only():
    model = composed_model("model=small")
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.backbone.parameters()}
    assert not shared & {id(p) for p in [*model.rul_head.parameters(), *model.health_head.parameters()]}
    assert {id(p) for p in model.last_shared_parameters()} <= shared


def test_output_shapes_and_rul_scale():
    model = composed_model("model=small").eval()
    x = torch.randn(5, 30, 14)
    rul, logits = model(x)
    assert rul.shape == (5,) and logits.shape == (5, 3)
    z = model.backbone(x)
    torch.testing.assert_close(rul, model.rul_head(z).squeeze(-1) * 125.0)
