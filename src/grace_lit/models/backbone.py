"""CNN-BiLSTM-Attention backbone shared by both tasks."""
from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Conv1d stack -> BiLSTM -> multi-head self-attention with a residual connection -> pooling -> MLP.

    Input (batch, time, features); output (batch, fc_dims[-1]). ``pool``: ``last`` keeps the last time step
    (the state at the window's end, which the RUL target refers to), ``mean`` averages over time.
    """

    def __init__(self, input_size: int, hidden_size: int, cnn_channels: list[int], kernel_size: int,
                 num_heads: int, fc_dims: list[int], dropout: float, lstm_layers: int = 1,
                 use_attention: bool = True, use_residual: bool = True, pool: str = "last"):
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
        width = 2 * hidden_size
        self.attention = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True) \
            if use_attention else None
        self.use_residual = use_residual
        self.norm = nn.LayerNorm(width)
        layers = []
        for dim in fc_dims:
            layers += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(dropout)]
            width = dim
        self.fc = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cnn(x.transpose(1, 2)).transpose(1, 2)
        h, _ = self.lstm(h)
        if self.attention is not None:
            a, _ = self.attention(h, h, h, need_weights=False)
            h = h + a if self.use_residual else a
        h = self.norm(h)
        h = h[:, -1] if self.pool == "last" else h.mean(dim=1)
        return self.fc(h)
