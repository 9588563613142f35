"""Two-parameter toys whose loss landscape is known in closed form (for string sampling and the CLI).

Each module has one parameter ``w`` (2,) and returns the same residual for every sample, so with regression
targets 0 and the ``mse`` loss the per-sample loss is a fixed function of w:

* :class:`Ring`:       L(w) = (‖w‖² − 1)²: a ring of global minima around a bump of height 1 at 0
                       (one connected sublevel set for every λ > 0 ... and a hole below λ = 1).
* :class:`DoubleWell`: L(w) = ((w₁² − 1)² + w₂²) / 2: minima at (±1, 0), separated by a ridge w₁ = 0 whose
                       lowest point is the saddle (0, 0) at height 1/2: {L ≤ λ} has two components for λ < 1/2.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lossatlas.data import Dataset


class Ring(nn.Module):
    def __init__(self, w: tuple[float, float] = (1.0, 0.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = (self.w ** 2).sum() - 1
        return r.expand(x.shape[0], 1)


class DoubleWell(nn.Module):
    def __init__(self, w: tuple[float, float] = (1.0, 0.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.stack([self.w[0] ** 2 - 1, self.w[1]])
        return r.expand(x.shape[0], 2)


def zeros(n: int = 8, outputs: int = 1) -> Dataset:
    """n dummy inputs with regression targets 0 (the toys ignore their input)."""
    return Dataset(name=f"zeros{outputs}", x_train=torch.zeros(n, 1), y_train=torch.zeros(n, outputs), x_test=None,
                   y_test=None, task="regression", num_classes=None)


def ring() -> nn.Module:
    return Ring()


def double_well() -> nn.Module:
    return DoubleWell()


def zeros1() -> Dataset:
    return zeros(8, 1)


def zeros2() -> Dataset:
    return zeros(8, 2)


class SlowDoubleWell(DoubleWell):
    """:class:`DoubleWell` that sleeps 5 ms per forward pass (for kill-and-resume tests)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return super().forward(x)


def slow_double_well() -> nn.Module:
    return SlowDoubleWell()
