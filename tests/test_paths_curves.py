"""Mode-connecting curves (Garipov et al. 2018): the curve maths against closed forms and dense references,
one SGD step against a plain module's gradient, endpoints against an independent BN re-estimate, resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.params import parameters_of
from lossatlas.paths.barrier import loss_barrier
from lossatlas.paths.curves import (
    CurveKind,
    CurveSpec,
    bezier_curve,
    curve_coefficients,
    curve_length,
    curve_point,
    fit_control_points,
    initial_control_points,
    load_control_points,
    polygonal_chain,
    train_curve,
)
from tests.conftest import bn_cnn, make_classification, mlp


def _random_points(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(5, generator=g, dtype=torch.float64)} for _ in range(n)]


def test_bezier_one_bend_is_the_quadratic_of_the_paper() -> None:
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    c = curve_coefficients("bezier", 3, t)
    torch.testing.assert_close(c, torch.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], dim=1))
    p = _random_points(3)
    got = bezier_curve(p, 0.3)
    for k in p[0]:
        torch.testing.assert_close(got[k], 0.49 * p[0][k] + 0.42 * p[1][k] + 0.09 * p[2][k])


def test_polychain_is_piecewise_linear_through_its_bends() -> None:
    p = _random_points(4)  # 2 bends at t = 1/3 and 2/3
    for t, (i, s) in {0.0: (0, 0.0), 1 / 3: (1, 0.0), 0.5: (1, 0.5), 0.9: (2, 0.7), 1.0: (2, 1.0)}.items():
        got = polygonal_chain(p, t)
        for k in p[0]:
            torch.testing.assert_close(got[k], (1 - s) * p[i][k] + s * p[i + 1][k])


@pytest.mark.parametrize("kind", list(CurveKind))
def test_ends_are_exact_and_straight_initialisation_is_the_line(kind: CurveKind) -> None:
    a, b = _random_points(2, seed=3)
    points = initial_control_points(a, b, bends=3)
    c = curve_coefficients(kind, len(points), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(c, torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0]], dtype=torch.float64))
    for t in (0.13, 0.5, 0.77):
        got = curve_point(points, curve_coefficients(kind, len(points), torch.tensor([t], dtype=torch.float64))[0])
        for k in a:
            torch.testing.assert_close(got[k], (1 - t) * a[k] + t * b[k])


def _dense_curve(points: list[dict[str, torch.Tensor]], kind: CurveKind, ts: np.ndarray) -> np.ndarray:
    """(T, D) points on the curve by independent means: de Casteljau (Bézier), np.interp (polygonal chain)."""
    p = np.stack([np.concatenate([v.numpy().reshape(-1) for v in q.values()]) for q in points])  # (n, D)
    if kind is CurveKind.polychain:
        knots = np.linspace(0, 1, len(points))
        return np.stack([np.interp(ts, knots, p[:, j]) for j in range(p.shape[1])], axis=1)
    level = np.repeat(p[None], len(ts), axis=0)  # (T, n, D)
    while level.shape[1] > 1:
        level = (1 - ts)[:, None, None] * level[:, :-1] + ts[:, None, None] * level[:, 1:]
    return level[:, 0]


@pytest.mark.parametrize("kind", list(CurveKind))
def test_curve_length_matches_a_dense_chord_sum(kind: CurveKind) -> None:
    points = _random_points(4, seed=1)
    ts = np.linspace(0, 1, 3 * 20000 + 1)  # contains the polychain's knots 1/3 and 2/3
    dense = _dense_curve(points, kind, ts)
    chords = float(np.linalg.norm(np.diff(dense, axis=0), axis=1).sum())
    np.testing.assert_allclose(curve_length(points, kind), chords, rtol=1e-8)
    straight = initial_control_points(points[0], points[-1], 2)
    line = float(torch.sqrt(sum(((points[-1][k] - points[0][k]) ** 2).sum() for k in points[0])))
    np.testing.assert_allclose(curve_length(straight, kind), line, rtol=1e-10)


def test_loss_barrier_closed_form() -> None:
    t = np.linspace(0, 1, 5)
    got = loss_barrier(t, np.array([1.0, 2.0, 4.0, 3.5, 3.0]))
    assert got == {"max": 4.0, "barrier": 2.0, "barrier_mean": 2.0, "t_max": 0.5}


def test_one_sgd_step_equals_the_plain_module_gradient(blobs) -> None:
    """The bend moves by −lr · c₁(t) · ∇L(φ(t)), with ∇L from an ordinary module holding φ(t)."""
    a, b = mlp(seed=0), mlp(seed=1)
    points = initial_control_points(parameters_of(a), parameters_of(b), 1)
    n = blobs.x_train.shape[0]
    spec = CurveSpec(epochs=1, batch_size=n, lr=0.1, momentum=0.0, seed=7)
    new, _ = fit_control_points(a, blobs, points, spec, "cross_entropy")
    g = torch.Generator().manual_seed(7)
    torch.randperm(n, generator=g)
    t = float(torch.rand(1, generator=g, dtype=torch.float64))
    ref = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_((1 - t) ** 2 * points[0][name] + 2 * t * (1 - t) * points[1][name] + t ** 2 * points[2][name])
    nn.functional.cross_entropy(ref(blobs.x_train), blobs.y_train).backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(new[1][name], points[1][name] - 0.1 * 2 * t * (1 - t) * p.grad)
        assert torch.equal(new[0][name], points[0][name]) and torch.equal(new[2][name], points[2][name])


def _bn_reference_loss(model: nn.Module, data, batch_size: int) -> float:
    """Train loss after re-estimating BN statistics with a plain module (cumulative average over batches)."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, data.x_train.shape[0], batch_size):
            net(data.x_train[i:i + batch_size])
        net.eval()
        return float(nn.functional.cross_entropy(net(data.x_train).double(), data.y_train))


def test_bn_curve_endpoints_reproduce_the_models(tmp_path, image_blobs) -> None:
    a, b = bn_cnn(seed=0), bn_cnn(seed=1)
    ds = train_curve(a, b, image_blobs, CurveSpec(epochs=1, points=3, batch_size=32), out=tmp_path / "c",
                     eval_batch_size=103)
    for path in ("curve", "line"):
        np.testing.assert_allclose(ds[f"{path}_train_loss"].values[0], _bn_reference_loss(a, image_blobs, 103),
                                   rtol=1e-5)
        np.testing.assert_allclose(ds[f"{path}_train_loss"].values[-1], _bn_reference_loss(b, image_blobs, 103),
                                   rtol=1e-5)
    assert ds.attrs["kind"] == "curve" and ds.attrs["has_batchnorm"]


def _minimum(data, seed: int) -> nn.Module:
    """A small MLP trained full-batch to near-zero loss on the blobs (from its own seed)."""
    net = mlp(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def two_minima() -> tuple[nn.Module, nn.Module, object]:
    data = make_classification()
    return _minimum(data, 0), _minimum(data, 1), data


def test_trained_curve_avoids_the_line_barrier(tmp_path, two_minima) -> None:
    a, b, data = two_minima
    ds = train_curve(a, b, data, CurveSpec(epochs=20, points=11, batch_size=16), out=tmp_path / "c")
    ev = Evaluator(a, data, EvalSpec())
    np.testing.assert_allclose(ds["curve_train_loss"].values[[0, -1]],
                               [ev.evaluate_one(parameters_of(a))["train_loss"],
                                ev.evaluate_one(parameters_of(b))["train_loss"]], rtol=1e-5)
    line_max, curve_max = ds.attrs["line_train_loss_max"], ds.attrs["curve_train_loss_max"]
    assert line_max > 0.3 and curve_max < 0.1 * line_max, (line_max, curve_max)
    assert ds.attrs["curve_train_loss_barrier"] == pytest.approx(
        loss_barrier(ds["t"].values, ds["curve_train_loss"].values)["barrier"])
    assert ds.attrs["curve_length"] > ds.attrs["line_length"] > 0


def test_interrupted_training_resumes_bit_identically(tmp_path, two_minima) -> None:
    a, b, data = two_minima
    spec = CurveSpec(epochs=4, points=3, batch_size=16, kind="polychain", bends=2)
    full = train_curve(a, b, data, spec, out=tmp_path / "full")

    def stop_after_two(done: int, _total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_curve(a, b, data, spec, out=tmp_path / "cut", progress=stop_after_two)
    assert not (tmp_path / "cut" / "control_points.safetensors").exists()
    resumed = train_curve(a, b, data, spec, out=tmp_path / "cut")
    p_full = load_control_points(tmp_path / "full" / "control_points.safetensors")
    p_cut = load_control_points(tmp_path / "cut" / "control_points.safetensors")
    for x, y in zip(p_full, p_cut, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k])
    np.testing.assert_array_equal(resumed["curve_train_loss"].values, full["curve_train_loss"].values)
    assert resumed.attrs["training_loss_history"] == full.attrs["training_loss_history"]


def test_bad_input_is_one_line(tmp_path, blobs) -> None:
    with pytest.raises(UserInputError, match="architecture"):
        train_curve(mlp(), mlp(hidden=9), blobs, out=tmp_path / "x")
    with pytest.raises(UserInputError, match="--kind"):
        CurveSpec(kind="spline")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="--points"):
        CurveSpec(points=2)
    train_curve(mlp(), mlp(seed=1), blobs, CurveSpec(epochs=0, points=3), out=tmp_path / "y")
    with pytest.raises(UserInputError, match="different configuration"):
        train_curve(mlp(), mlp(seed=1), blobs, CurveSpec(epochs=1, points=3), out=tmp_path / "y")


@pytest.mark.slow
def test_mnist1d_bezier_curve_is_far_below_the_line(tmp_path) -> None:
    """Garipov et al. 2018 on MNIST-1D: two MLPs from different seeds; the trained Bézier curve's highest train
    loss is far below the straight line's (the quick variant on blobs is test_trained_curve_avoids_the_line_barrier)."""
    from lossatlas.data import load_data
    from lossatlas.models import build_model
    from lossatlas.training import TrainSpec, train

    data = load_data("mnist1d")
    a, b = (train(build_model("zoo:mlp:widths=64-64", input_shape=data.input_shape, output_dim=data.output_dim,
                              seed=s), data, TrainSpec(epochs=30, seed=s), tmp_path / f"m{s}") for s in (1, 2))
    ds = train_curve(a, b, data, CurveSpec(epochs=30, points=21), out=tmp_path / "c")
    line, curve = ds.attrs["line_train_loss_barrier"], ds.attrs["curve_train_loss_barrier"]
    print(f"line max {ds.attrs['line_train_loss_max']:.4f} barrier {line:.4f}; "
          f"curve max {ds.attrs['curve_train_loss_max']:.4f} barrier {curve:.4f}")
    assert curve < 0.25 * line
