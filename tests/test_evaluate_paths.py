"""The engine's CPU paths (vmap over points, point by point, channels-last) against the plain reference loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lossatlas.directions import DirectionSpec, Ignore, random_directions
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.engine.passes import CPU_PASS_FLOATS as _CPU_PASS_FLOATS
from lossatlas.params import add_scaled
from tests.conftest import bn_cnn, make_classification, mlp, plain_metrics

COORDS = torch.tensor([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0]], dtype=torch.float64)


def _check_against_reference(ev: Evaluator, net: nn.Module, data) -> None:  # type: ignore[no-untyped-def]
    """Batched metrics equal the independent plain-module reference (the point loaded into a copy of the net,
    one ordinary forward pass of the whole split)."""
    theta = ev.theta()
    dirs = random_directions(theta, DirectionSpec(ignore=Ignore.none, seed=3), 2)
    batched = ev.evaluate_coords(theta, dirs, COORDS)
    for p in range(len(COORDS)):
        ref = plain_metrics(net, add_scaled(theta, dirs, COORDS[p].tolist()), data)
        for name, value in ref.items():
            np.testing.assert_allclose(float(batched[name][p]), value, rtol=1e-5, atol=1e-7, err_msg=name)


class ViewNet(nn.Module):
    """A LeNet-style net whose ``.view`` refuses a channels-last activation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.view(h.size(0), -1))


def test_conv_net_runs_point_by_point_in_channels_last() -> None:
    net, data = bn_cnn(), make_classification(image=True)
    ev = Evaluator(net, data, EvalSpec(batch_size=32))
    assert ev._channels_last and ev._one_point_per_pass(len(COORDS))
    _check_against_reference(ev, net, data)


def test_view_after_conv_falls_back_to_the_plain_layout() -> None:
    net, data = ViewNet().eval(), make_classification(image=True)
    ev = Evaluator(net, data, EvalSpec(batch_size=32))
    assert not ev._channels_last
    _check_against_reference(ev, net, data)


def test_small_points_share_cache_sized_vmapped_passes() -> None:
    net, data = mlp(), make_classification()
    ev = Evaluator(net, data, EvalSpec(batch_size=50))
    assert not ev._channels_last and not ev._one_point_per_pass(len(COORDS))
    assert 1 < ev.points_per_pass() <= _CPU_PASS_FLOATS // (ev._per_sample * 50)
    _check_against_reference(ev, net, data)


def test_a_point_that_fills_a_pass_runs_alone() -> None:
    data = make_classification(n=300, d=6)
    wide = mlp(hidden=4096)  # 3 x 4096 activations x 300 samples x 2 > the CPU pass budget
    ev = Evaluator(wide, data, EvalSpec(batch_size=300))
    assert ev._per_sample * 300 * 2 > _CPU_PASS_FLOATS and ev._one_point_per_pass(len(COORDS))
    _check_against_reference(ev, wide, data)
