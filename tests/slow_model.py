"""A deliberately slow model for kill-and-resume tests (loaded through the file.py:function spec)."""

import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)  # long enough that a kill lands mid-run even when a pass evaluates many points
        return self.body(x)


def build() -> nn.Module:
    torch.manual_seed(0)
    return Slow()


class SlowTokens(nn.Module):
    """A slow per-token model on int64 token ids: (B, T) -> (B, T, 7) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return self.head(torch.tanh(self.embed(ids)))


def build_tokens() -> nn.Module:
    torch.manual_seed(0)
    return SlowTokens()
