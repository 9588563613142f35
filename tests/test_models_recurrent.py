"""The MNIST-1D reference models (Greydanus 2020): GRU / LSTM against torch's own cells, the residual MLP and
logistic regression against hand-written forwards, and the engine's needs (vmap over points, HVPs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from lossatlas.models import build_model
from lossatlas.params import parameters_of


class ReferenceRecurrent(nn.Module):
    """Greydanus' ``GRUBase`` (notebooks/models.py) with torch's fused cell, and the same with an LSTM."""

    def __init__(self, cell: str, length: int, hidden: int, classes: int, bidirectional: bool) -> None:
        super().__init__()
        kind = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = kind(input_size=1, hidden_size=hidden, batch_first=True, bidirectional=bidirectional)
        self.linear = nn.Linear(length * hidden * (2 if bidirectional else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], -1, 1))
        return self.linear(out.reshape(out.shape[0], -1))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_recurrent_matches_torch_cells(cell: str, bidirectional: bool) -> None:
    ours = build_model(f"zoo:{cell}:hidden=5,bidirectional={str(bidirectional).lower()}", input_shape=(12,),
                       output_dim=4, seed=3).double()
    ref = ReferenceRecurrent(cell, 12, 5, 4, bidirectional).double()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


def test_gru_default_is_greydanus_shape() -> None:
    net = build_model("zoo:gru", input_shape=(40,), output_dim=10)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["rnn.weight_ih_l0"] == (18, 1) and shapes["rnn.weight_hh_l0_reverse"] == (18, 6)
    assert shapes["linear.weight"] == (10, 480)  # 40 steps x 2 directions x 6 units, as GRUBase
    bound = 1 / 6 ** 0.5
    assert all(float(v.abs().max()) <= bound for k, v in net.state_dict().items() if k.startswith("rnn."))


def test_residual_mlp_is_greydanus_mlpbase() -> None:
    net = build_model("zoo:mlp:residual=true", input_shape=(40,), output_dim=10, seed=1).double()
    p = {k: v.detach() for k, v in net.state_dict().items()}
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = torch.relu(x @ p["layers.0.weight"].T + p["layers.0.bias"])
    h = h + torch.relu(h @ p["layers.1.weight"].T + p["layers.1.bias"])
    torch.testing.assert_close(net(x), h @ p["layers.2.weight"].T + p["layers.2.bias"], rtol=0, atol=1e-13)


def test_logistic_is_one_affine_map() -> None:
    net = build_model("zoo:logistic", input_shape=(1, 4, 4), output_dim=3, seed=0).double()
    (w, b) = (net.state_dict()["layers.0.weight"], net.state_dict()["layers.0.bias"])
    assert w.shape == (3, 16) and b.shape == (3,)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(net(x), x.reshape(6, 16) @ w.T + b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_vmaps_over_points_and_takes_hvps(cell: str) -> None:
    net = build_model(f"zoo:{cell}:hidden=3", input_shape=(6,), output_dim=2, seed=0).double()
    theta = {k: v.detach() for k, v in parameters_of(net).items()}
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0])
    stacked = {k: torch.stack([v, 0.5 * v, -v]) for k, v in theta.items()}
    batched = vmap(lambda p: functional_call(net, p, (x,)))(stacked)
    loop = torch.stack([functional_call(net, {k: v[i] for k, v in stacked.items()}, (x,)) for i in range(3)])
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-12)

    names = list(theta)
    flat = torch.cat([theta[k].reshape(-1) for k in names])

    def loss_flat(v: torch.Tensor) -> torch.Tensor:
        parts, start = {}, 0
        for k in names:
            parts[k] = v[start:start + theta[k].numel()].reshape(theta[k].shape)
            start += theta[k].numel()
        return nn.functional.cross_entropy(functional_call(net, parts, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_flat, flat)
    v = torch.randn(flat.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    hv = jvp(grad(loss_flat), (flat,), (v,))[1]  # forward-over-reverse, as the curvature package does
    torch.testing.assert_close(hv, dense @ v, rtol=1e-9, atol=1e-11)
