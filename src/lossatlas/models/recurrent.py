"""Recurrent classifiers for 1-D signals: the MNIST-1D GRU of Greydanus 2020 and an LSTM of the same shape.

Greydanus 2020 ("Scaling down Deep Learning", ``GRUBase`` in github.com/greydanus/mnist1d,
``notebooks/models.py``) reads a signal of length L as a sequence of L scalars, runs a bidirectional GRU with
6 hidden units from a zero state, flattens *every* time step's output (L x 2 x 6 = 480 features for L = 40)
and puts one linear layer on top. ``lstm`` is the same network with LSTM cells (Hochreiter & Schmidhuber
1997), the recurrent net whose init -> solution profile Goodfellow, Vinyals & Saxe 2015 show to be monotone.

The cells are written out in plain tensor operations (the gate equations of ``torch.nn.GRU`` / ``torch.nn.LSTM``)
rather than calling the fused kernels, so that the engine can ``vmap`` them over parameter points and take
Hessian-vector products (second derivatives) through them; both directions run in one batched loop. Parameter
names and gate layouts are those of ``torch.nn.GRU`` / ``torch.nn.LSTM`` (``rnn.weight_ih_l0``,
``rnn.weight_hh_l0_reverse``, ...), so a state dict of the reference model loads unchanged (and the tests
compare the outputs with ``torch.nn.GRU`` / ``torch.nn.LSTM``). Initialisation is theirs too:
U(−1/√H, 1/√H) for every recurrent weight and bias.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lossatlas.models.resnet import require_positive

#: Gates per cell type, in the row order of ``torch.nn.GRU`` (r, z, n) and ``torch.nn.LSTM`` (i, f, g, o).
GATES = {"gru": 3, "lstm": 4}


class Recurrent(nn.Module):
    """A one-layer (bi)directional GRU or LSTM over ``(N, L, input_size)``, zero initial state.

    Returns every step's hidden state, ``(N, L, D * hidden)`` with D = 2 when bidirectional (forward
    direction first, as ``torch.nn.GRU(batch_first=True)`` returns it).
    """

    def __init__(self, cell: str, input_size: int, hidden: int, *, bidirectional: bool) -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {tuple(GATES)}, got {cell!r}")
        self.cell, self.hidden, self.bidirectional = cell, hidden, bidirectional
        rows = GATES[cell] * hidden
        for suffix in self.suffixes:
            self.register_parameter(f"weight_ih_l0{suffix}", nn.Parameter(torch.empty(rows, input_size)))
            self.register_parameter(f"weight_hh_l0{suffix}", nn.Parameter(torch.empty(rows, hidden)))
            self.register_parameter(f"bias_ih_l0{suffix}", nn.Parameter(torch.empty(rows)))
            self.register_parameter(f"bias_hh_l0{suffix}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters()

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """U(−1/√H, 1/√H) for every weight and bias, as ``torch.nn.RNNBase.reset_parameters``."""
        bound = 1.0 / math.sqrt(self.hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _stacked(self, kind: str) -> Tensor:
        return torch.stack([getattr(self, f"{kind}_l0{s}") for s in self.suffixes])

    def forward(self, x: Tensor) -> Tensor:
        n, length = x.shape[0], x.shape[1]
        h_size = self.hidden
        seq = torch.stack([x, x.flip(1)]) if self.bidirectional else x.unsqueeze(0)  # (D, N, L, in)
        w_ih, w_hh = self._stacked("weight_ih"), self._stacked("weight_hh")
        b_ih, b_hh = self._stacked("bias_ih"), self._stacked("bias_hh")
        d = w_ih.shape[0]
        # input contributions of every step at once: (D, N, L, G*H)
        gi = torch.matmul(seq, w_ih.unsqueeze(1).transpose(-1, -2)) + b_ih[:, None, None, :]
        w_hh_t = w_hh.transpose(1, 2)
        h = gi.new_zeros(d, n, h_size)
        c = gi.new_zeros(d, n, h_size)
        outs = []
        for t in range(length):
            gh = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh_t)  # (D, N, G*H)
            g_in = gi[:, :, t]
            if self.cell == "gru":
                rz = torch.sigmoid(g_in[..., :2 * h_size] + gh[..., :2 * h_size])
                r, z = rz[..., :h_size], rz[..., h_size:]
                candidate = torch.tanh(g_in[..., 2 * h_size:] + r * gh[..., 2 * h_size:])
                h = candidate + z * (h - candidate)  # (1 − z) n + z h
            else:
                gates = g_in + gh
                i_f = torch.sigmoid(gates[..., :2 * h_size])
                g = torch.tanh(gates[..., 2 * h_size:3 * h_size])
                o = torch.sigmoid(gates[..., 3 * h_size:])
                c = i_f[..., h_size:] * c + i_f[..., :h_size] * g
                h = o * torch.tanh(c)
            outs.append(h)
        out = torch.stack(outs, dim=2)  # (D, N, L, H)
        if self.bidirectional:
            out = torch.stack([out[0], out[1].flip(1)])
        return out.permute(1, 2, 0, 3).reshape(n, length, d * h_size)


class RecurrentClassifier(nn.Module):
    """Greydanus 2020's ``GRUBase`` (or its LSTM twin): input (N, *shape) read as L = prod(shape) scalar steps,
    a (bi)directional recurrent layer ``rnn``, every step's output flattened, ``linear`` to the classes."""

    def __init__(self, cell: str, length: int, hidden: int, num_classes: int, *, bidirectional: bool) -> None:
        super().__init__()
        self.rnn = Recurrent(cell, 1, hidden, bidirectional=bidirectional)
        directions = 2 if bidirectional else 1
        self.linear = nn.Linear(length * directions * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        steps = self.rnn(x.reshape(x.shape[0], -1, 1))
        return self.linear(steps.reshape(x.shape[0], -1))


def gru(*, input_shape: tuple[int, ...], output_dim: int, hidden: int = 6, bidirectional: bool = True) -> nn.Module:
    """The MNIST-1D GRU of Greydanus 2020: bidirectional, 6 hidden units, all steps to a linear layer."""
    require_positive(hidden, "hidden", "gru")
    return RecurrentClassifier("gru", math.prod(input_shape), hidden, output_dim, bidirectional=bidirectional)


def lstm(*, input_shape: tuple[int, ...], output_dim: int, hidden: int = 6, bidirectional: bool = True
         ) -> nn.Module:
    """Greydanus 2020's GRU classifier with LSTM cells (same hidden size, directions and read-out)."""
    require_positive(hidden, "hidden", "lstm")
    return RecurrentClassifier("lstm", math.prod(input_shape), hidden, output_dim, bidirectional=bidirectional)


__all__ = ["GATES", "Recurrent", "RecurrentClassifier", "gru", "lstm"]
