"""The engine's CPU paths (vmap over points, point by point, channels-last, fused Linear+ReLU, collected logits)
against the plain reference loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lossatlas.directions import DirectionSpec, Ignore, random_directions
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.engine import evaluate as evaluate_module
from lossatlas.engine.inference import PointModel, fuse_linear_relu, fused_matches
from lossatlas.engine.losses import cross_entropy_and_correct
from lossatlas.engine.passes import CPU_PASS_FLOATS as _CPU_PASS_FLOATS
from lossatlas.params import add_scaled, functional_forward, stack_points
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


def _plain_metrics(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of a plain ``nn.Module`` forward over all samples at once (no lossatlas code)."""
    with torch.no_grad():
        out = net(x)
    return float(torch.nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def test_fused_linear_relu_gives_the_plain_forward() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    point = PointModel(net, fuse=True)
    kinds = [(type(m).__name__, getattr(m, "relu", None)) for m in point.module]
    assert kinds == [("FusedLinear", True), ("Identity", None), ("FusedLinear", True), ("Identity", None),
                     ("FusedLinear", False)]
    x = torch.randn(50, 6)
    with torch.no_grad():
        torch.testing.assert_close(point(x), net(x), rtol=1e-6, atol=1e-6)
    # with autograd the fused copy falls back to F.linear + relu: the same values and a gradient
    out = point(x)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), net(x).detach(), rtol=1e-6, atol=1e-6)


def test_hooked_or_custom_modules_are_not_fused() -> None:
    class MyLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), MyLinear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    net[1].register_forward_hook(lambda *_: None)
    replaced = fuse_linear_relu(net)
    assert replaced == 2 and type(net[1]) is nn.ReLU and type(net[2]) is MyLinear
    assert not net[0].relu and not net[4].relu


def test_point_model_loads_parameters_and_buffers_by_name() -> None:
    net = bn_cnn()
    point = PointModel(net, fuse=True)
    moved = {k: v + 0.1 for k, v in net.state_dict().items() if v.is_floating_point()}
    point.load(moved)
    reference = copy.deepcopy(net)
    reference.load_state_dict(moved, strict=False)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(point(x), reference.eval()(x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), bn_cnn().state_dict().values(),
                                                 strict=True))  # the user's model is untouched


def test_cross_entropy_from_transposed_logits_equals_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, 7, generator=g) * 4
    logits[0, :5] = 2.0  # ties: argmax takes the first maximum
    logits[1, :5] = 990.0  # confident rows, large logits: the loss log(1 + 6e^-10) = 2.7e-4 computed as
    logits[1, :5, 2] = 1000.0  # (lse + m) - z_y would be 20% off (ulp(1000) = 6e-5)
    y = torch.randint(0, 7, (40,), generator=g)
    y[:5] = 2
    loss, correct = cross_entropy_and_correct(logits, y)
    flat = logits.reshape(-1, 7)
    expected = torch.nn.functional.cross_entropy(flat.double(), y.repeat(3), reduction="none").reshape(3, 40)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    exact = torch.full((5,), float(np.log1p(6 * np.exp(-10.0))), dtype=torch.float64)
    torch.testing.assert_close(loss[1, :5], exact, rtol=1e-6, atol=0.0)
    float32 = torch.nn.functional.cross_entropy(flat, y.repeat(3), reduction="none").reshape(3, 40)
    torch.testing.assert_close(loss.float(), float32, rtol=1e-3, atol=1e-6)  # torch's own, within float32
    assert torch.equal(correct, flat.argmax(-1).reshape(3, 40) == y)
    one = logits[:1, :1].clone()  # a batch of one sample: the transposed copy must not alias the logits
    loss, correct = cross_entropy_and_correct(one, y[:1])
    torch.testing.assert_close(loss.float(), torch.nn.functional.cross_entropy(one[0], y[:1], reduction="none")[None])
    assert torch.equal(one, logits[:1, :1])


def test_cross_entropy_of_a_sample_does_not_depend_on_its_position_in_the_pass() -> None:
    """The same logits alone or in a pass of 21 points: the same loss to 1e-12 (float64 exp/log; in float32 the
    vectorised and scalar ``exp`` differ by an ulp, 1e-7, which made surfaces depend on how points were grouped)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(21, 37, 10, generator=g) * 3
    y = torch.randint(0, 10, (37,), generator=g)
    together, _ = cross_entropy_and_correct(logits, y)
    for p in (0, 5, 20):
        alone, _ = cross_entropy_and_correct(logits[p:p + 1], y)
        torch.testing.assert_close(alone[0], together[p], rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("collect", [True, False])
def test_point_by_point_chunkings_give_the_plain_numbers(collect: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits of the whole split reduced once per point, or batch by batch (batch 7 vs 1000): plain-model numbers."""
    data = make_classification(n=300, d=6)
    wide = mlp(hidden=512)
    budget = 1 << 21 if collect else 512  # 300 samples x 3 logits = 900 floats: collected, or not
    monkeypatch.setattr(evaluate_module, "POINT_LOGITS_FLOATS", budget)
    results = []
    for batch_size in (7, 1000):
        ev = Evaluator(wide, data, EvalSpec(batch_size=batch_size))
        monkeypatch.setattr(ev, "_one_point_per_pass", lambda points=0: True)
        assert ev._fuse and ev._fast_cross_entropy
        theta = ev.theta()
        dirs = random_directions(theta, DirectionSpec(ignore=Ignore.none, seed=3), 2)
        results.append(ev.evaluate_coords(theta, dirs, COORDS))
        for p in range(len(COORDS)):
            net = copy.deepcopy(wide)
            torch.nn.utils.vector_to_parameters(
                torch.cat([v.reshape(-1) for v in add_scaled(theta, dirs, COORDS[p].tolist()).values()]),
                net.parameters())
            for split in ("train", "test"):
                loss, acc = _plain_metrics(net, *data.split(split))
                np.testing.assert_allclose(float(results[-1][f"{split}_loss"][p]), loss, rtol=1e-5)
                np.testing.assert_allclose(float(results[-1][f"{split}_accuracy"][p]), acc, rtol=1e-12)
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("model", ["wide_mlp", "bn_cnn"])
def test_points_built_on_the_fly_equal_stacked_points(model: str) -> None:
    """evaluate_coords builds each point when it runs (θ + c₁d₁ + c₂d₂ into a reused buffer); evaluate_stacked
    reads it from stack_points: the same metrics, and the same as the plain reference."""
    image = model == "bn_cnn"
    net, data = (bn_cnn() if image else mlp(hidden=4096)), make_classification(n=300, image=image)
    ev = Evaluator(net, data, EvalSpec(batch_size=300))
    assert ev._one_point_per_pass(len(COORDS))
    theta = ev.theta()
    dirs = random_directions(theta, DirectionSpec(ignore=Ignore.none, seed=4), 2)
    built = ev.evaluate_coords(theta, dirs, COORDS)
    stacked = ev.evaluate_stacked(stack_points(theta, dirs, COORDS))
    for name in built:
        torch.testing.assert_close(built[name], stacked[name], rtol=1e-6, atol=1e-9)
    _check_against_reference(ev, net, data)


def test_a_linear_used_twice_stays_shared() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.Linear(8, 3)).eval()
    point = PointModel(net, fuse=True)
    assert point.fused == 2 and point.module[2] is point.module[4] and type(point.module[2]) is nn.Linear
    moved = {k: v * 1.1 for k, v in net.named_parameters()}
    point.load(moved)
    x = torch.randn(9, 6)
    with torch.no_grad():
        torch.testing.assert_close(point(x), functional_forward(net, moved, {}, x), rtol=1e-6, atol=1e-6)


def test_the_fused_copy_is_refused_when_a_parameter_does_not_reach_it() -> None:
    net = mlp(hidden=16)
    theta = dict(net.named_parameters())
    x = torch.randn(4, 6)
    assert fused_matches(net, PointModel(net, fuse=True), theta, {}, x)
    broken = PointModel(net, fuse=True)
    del broken._slots["2.weight"]  # a load that misses one tensor: right at θ, wrong anywhere else
    assert not fused_matches(net, broken, theta, {}, x)
