"""A model whose Hessian-vector products are slow (for the kill-and-resume tests of ``lossatlas hessian``).

Its forward pass goes through :class:`Tap`, an identity whose backward is :class:`Echo`, an identity whose own
backward sleeps. A gradient never sleeps; every Hessian-vector product (a backward sweep through the gradient's
graph) does, once per batch. Loaded through the ``file.py:function`` spec.
"""

import time

import torch
from torch import nn

DELAY = 0.05


class Echo(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(g: torch.Tensor) -> torch.Tensor:
        return g.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch's signature
        pass

    @staticmethod
    def backward(ctx, gg: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        time.sleep(DELAY)
        return gg.clone()


class Tap(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        pass

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return Echo.apply(g)


class SlowProducts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Tap.apply(self.body(x))


def build() -> nn.Module:
    torch.manual_seed(0)
    return SlowProducts()
