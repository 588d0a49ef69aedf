"""CNN-BiLSTM-Attention backbone shared by both tasks."""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Conv1d stack -> BiLSTM -> dropout -> multi-head self-attention with a residual connection -> LayerNorm ->
    pooling -> MLP (each layer followed by dropout).

    Input (batch, time, features); output (batch, fc_dims[-1]). ``dropout`` sits where spec 000 puts it, after
    the BiLSTM and after every FC layer; ``attention_dropout`` (on the attention weights) is this project's
    addition, off by default. ``pool``: ``last`` keeps the last time step (the state at the window's end, which
    the RUL target refers to), ``mean`` averages over time. ``layer_norm``: the LayerNorm after the attention is
    this project's addition too (the spec's backbone is Conv1d x3 -> BiLSTM -> attention -> FC).
    """

    def __init__(self, input_size: int, hidden_size: int, cnn_channels: list[int], kernel_size: int,
                 num_heads: int, fc_dims: list[int], dropout: float, lstm_layers: int = 1,
                 use_attention: bool = True, use_residual: bool = True, pool: str = "last",
                 attention_dropout: float = 0.0, layer_norm: bool = True):
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"model.backbone.pool={pool!r} is not one of 'last', 'mean'")
        self.pool = pool
        convs, prev = [], input_size
        for channels in cnn_channels:
            convs += [nn.Conv1d(prev, channels, kernel_size, padding=kernel_size // 2), nn.BatchNorm1d(channels),
                      nn.ReLU()]
            prev = channels
        self.cnn = nn.Sequential(*convs)
        self.lstm = nn.LSTM(prev, hidden_size, num_layers=lstm_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if lstm_layers > 1 else 0.0)
        self.lstm_dropout = nn.Dropout(dropout)
        width = 2 * hidden_size
        self.attention = nn.MultiheadAttention(width, num_heads, dropout=attention_dropout, batch_first=True) \
            if use_attention else None
        self.use_residual = use_residual
        self.norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        layers = []
        for dim in fc_dims:
            layers += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(dropout)]
            width = dim
        self.fc = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cnn(x.transpose(1, 2)).transpose(1, 2)
        h = self.lstm_dropout(self.lstm(h)[0])
        # pool=last reads one time step: attend from that query alone (the same numbers at 1/T of the cost)
        query = h[:, -1:] if self.pool == "last" else h
        if self.attention is not None:
            a, _ = self.attention(query, h, h, need_weights=False)
            query = query + a if self.use_residual else a
        return self.fc(self.norm(query).mean(dim=1))
