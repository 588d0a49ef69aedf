"""The backbone's dropout sits where spec 000 puts it (after the BiLSTM and after every FC layer), attention
dropout and the LayerNorm are config values, and the parameter counts did not move."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import composed
from grace_lit.models.backbone import Backbone


def backbone(dropout: float = 0.0, attention_dropout: float = 0.0, layer_norm: bool = True) -> Backbone:
    torch.manual_seed(0)
    return Backbone(input_size=14, hidden_size=8, cnn_channels=[4], kernel_size=3, num_heads=2, fc_dims=[12, 6],
                    dropout=dropout, attention_dropout=attention_dropout, layer_norm=layer_norm)


def captured(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The BiLSTM's output, the attention's key input (the whole sequence) and output, each FC Linear's input and
    output, and the backbone's output."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, arg: int | None = None):  # arg: which input to keep; None keeps the output
        def hook(module, args, out):
            seen[name] = (out[0] if isinstance(out, tuple) else out) if arg is None else args[arg]
        return hook

    hooks = [model.lstm.register_forward_hook(keep("lstm")),
             model.attention.register_forward_hook(keep("attention_in", arg=1)),
             model.attention.register_forward_hook(keep("attention_out"))]
    for i, lin in enumerate(m for m in model.fc if isinstance(m, nn.Linear)):
        hooks += [lin.register_forward_hook(keep(f"fc{i}_in", arg=0)), lin.register_forward_hook(keep(f"fc{i}"))]
    seen["out"] = model(x)
    for h in hooks:
        h.remove()
    return seen


def assert_dropped_or_doubled(after: torch.Tensor, before: torch.Tensor) -> None:
    """Dropout 0.5: each element is zeroed or scaled by 1 / (1 - 0.5), and about half are zeroed."""
    live = before != 0
    dropped = after == 0
    assert 0.25 < (dropped & live).sum() / live.sum() < 0.75
    torch.testing.assert_close(after[~dropped], 2 * before[~dropped])


X = torch.randn(16, 30, 14, generator=torch.Generator().manual_seed(1))


def test_dropout_after_the_bilstm():
    torch.manual_seed(2)
    seen = captured(backbone(dropout=0.5).train(), X)
    assert_dropped_or_doubled(seen["attention_in"], seen["lstm"])
    seen = captured(backbone(dropout=0.5).eval(), X)
    torch.testing.assert_close(seen["attention_in"], seen["lstm"])  # identity at evaluation


def test_dropout_after_every_fc_layer():
    torch.manual_seed(3)
    seen = captured(backbone(dropout=0.5).train(), X)
    assert_dropped_or_doubled(seen["fc1_in"], torch.relu(seen["fc0"]))
    assert_dropped_or_doubled(seen["out"], torch.relu(seen["fc1"]))
    seen = captured(backbone(dropout=0.5).eval(), X)
    torch.testing.assert_close(seen["out"], torch.relu(seen["fc1"]))


def test_no_dropout_on_the_attention_weights_by_default():
    """Dropout 0 everywhere: two training-mode passes are identical (no hidden dropout); attention dropout 1 drops
    every attention weight, so the attention returns its output projection's bias alone."""
    model = backbone().train()
    torch.testing.assert_close(model(X), model(X), rtol=0, atol=0)
    assert captured(model, X)["attention_out"].abs().sum() > 0
    model = backbone(attention_dropout=1.0).train()
    out = captured(model, X)["attention_out"]
    torch.testing.assert_close(out, model.attention.out_proj.bias.expand_as(out))


def test_spec_placement_is_the_default_config():
    model = instantiate(composed(["dataset=FD002"]).model)
    assert model.backbone.attention.dropout == 0.0
    assert [m.p for m in model.backbone.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]  # BiLSTM, 2 FC


@pytest.mark.parametrize(("overrides", "count"), [
    (["dataset=FD002"], 1_840_580),                                        # the spec's model, as before
    (["dataset=FD002", "model.backbone.layer_norm=false"], 1_840_580 - 2 * 512),
    (["model=small"], 40_868),                                             # model=small, as before
])
def test_parameter_counts(overrides, count):
    model = instantiate(composed(overrides).model)
    assert sum(p.numel() for p in model.parameters()) == count


def test_without_layer_norm_the_pooled_state_is_the_attention_residual():
    model = backbone(layer_norm=False).eval()
    seen = captured(model, X)
    torch.testing.assert_close(seen["fc0_in"], (seen["lstm"] + seen["attention_out"])[:, -1])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_last_pooling_attends_from_the_last_step_as_full_attention_would(layer_norm):
    """pool=last attends from the last query only; the attention over every query, read at the last step, is the
    same state (what the spec's backbone computes at T times the cost)."""
    model = backbone(layer_norm=layer_norm).eval()
    seen = captured(model, X)
    h = seen["lstm"]
    full, _ = model.attention(h, h, h, need_weights=False)
    torch.testing.assert_close(seen["fc0_in"], model.norm(h + full)[:, -1])
    assert seen["attention_out"].shape[1] == 1
