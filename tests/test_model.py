"""The composed model configs: parameter counts, shared parameters, and the forward against the architecture
written out by hand from the weights."""
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
    names = {id(p): n for n, p in model.named_parameters()}
    shared = {names[id(p)] for p in model.shared_parameters()}
    assert shared == {n for n in names.values() if n.startswith("backbone.")}
    # GradNorm's default scope: the backbone's last layer, the second Linear of its MLP (fc_dims [64, 32])
    assert {names[id(p)] for p in model.last_shared_parameters()} == {"backbone.fc.3.weight", "backbone.fc.3.bias"}


def by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, max_rul: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The small model's forward in evaluation, written out from its weights: 3 x (Conv1d k=3 -> BatchNorm with its
    running statistics -> ReLU), BiLSTM (gates i, f, g, o), 2-head self-attention plus the residual, LayerNorm,
    the last time step, MLP 64 -> 32 with ReLUs, then each head Linear -> ReLU -> Linear; RUL in units of max_rul."""
    def linear(h, name):
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = x.transpose(1, 2)
    for conv, norm in ((0, 1), (3, 4), (6, 7)):
        padded = torch.nn.functional.pad(h, (1, 1))
        w = state[f"backbone.cnn.{conv}.weight"]
        h = sum(torch.einsum("oc,bct->bot", w[:, :, k], padded[:, :, k:k + h.shape[2]]) for k in range(3))
        h = h + state[f"backbone.cnn.{conv}.bias"][:, None]
        n = f"backbone.cnn.{norm}"
        h = (h - state[f"{n}.running_mean"][:, None]) / torch.sqrt(state[f"{n}.running_var"][:, None] + 1e-5)
        h = torch.relu(h * state[f"{n}.weight"][:, None] + state[f"{n}.bias"][:, None])
    h = h.transpose(1, 2)  # (batch, time, 16)

    def lstm(seq, suffix):
        hidden = torch.zeros(seq.shape[0], 32, dtype=seq.dtype)
        cell, out = torch.zeros_like(hidden), []
        w_ih, w_hh, b_ih, b_hh = (state[f"backbone.lstm.{n}_l0{suffix}"] for n in ("weight_ih", "weight_hh",
                                                                                  "bias_ih", "bias_hh"))
        for t in range(seq.shape[1]):
            gates = seq[:, t] @ w_ih.T + b_ih + hidden @ w_hh.T + b_hh
            i, f, g, o = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            hidden = torch.sigmoid(o) * torch.tanh(cell)
            out.append(hidden)
        return torch.stack(out, 1)

    h = torch.cat([lstm(h, ""), lstm(h.flip(1), "_reverse").flip(1)], dim=2)  # (batch, time, 64)
    q, k, v = (h @ w.T + b for w, b in zip(state["backbone.attention.in_proj_weight"].chunk(3),
                                           state["backbone.attention.in_proj_bias"].chunk(3)))
    heads = []
    for j in range(2):
        part = slice(32 * j, 32 * (j + 1))
        scores = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / 32 ** 0.5, dim=-1)
        heads.append(scores @ v[..., part])
    h = h + linear(torch.cat(heads, dim=2), "backbone.attention.out_proj")
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5) * state["backbone.norm.weight"] + state["backbone.norm.bias"]
    z = torch.relu(linear(torch.relu(linear(h[:, -1], "backbone.fc.0")), "backbone.fc.3"))
    rul = linear(torch.relu(linear(z, "rul_head.0")), "rul_head.3").squeeze(-1) * max_rul
    return rul, linear(torch.relu(linear(z, "health_head.0")), "health_head.3")


def test_forward_matches_the_architecture_written_out():
    """Every weight and BatchNorm statistic randomised (none left at an identity initialisation), float64."""
    model = composed_model("model=small").double().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.3)
    x = torch.randn(5, 30, 14, dtype=torch.float64)
    rul, logits = model(x)
    assert rul.shape == (5,) and logits.shape == (5, 3)
    want_rul, want_logits = by_hand(model.state_dict(), x, max_rul=125.0)  # dataset.max_rul, FD002's default
    torch.testing.assert_close(rul, want_rul, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-12)
