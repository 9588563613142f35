"""A tiny transformer classifier (one ``nn.TransformerEncoder`` layer over T tokens of F features, mean-pooled):
its attention goes through ``F.scaled_dot_product_attention``, whose default CPU kernel has no second derivative.
Loaded through the ``file.py:function`` spec by the curvature tests."""

import torch
from torch import nn


class TinyEncoderClassifier(nn.Module):
    def __init__(self, features: int, classes: int, width: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def build(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoderClassifier(input_shape[-1], output_dim)


class HandWrittenAttention(nn.Module):
    """Two heads written out (q, k, v projections, softmax(q kᵀ / √d) v), a residual, mean-pooled."""

    def __init__(self, features: int, classes: int, width: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(features, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        h = self.embed(x)
        b, t, w = h.shape
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (w // self.heads) ** 0.5, dim=-1) @ v
        return self.head((h + a.transpose(1, 2).reshape(b, t, w)).mean(dim=1))


def build_hand_written(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    torch.manual_seed(0)
    return HandWrittenAttention(input_shape[-1], output_dim)
