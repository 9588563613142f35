"""Sharpness measures against closed forms: ε-sharpness of diagonal quadratics (the box maximum is a vertex),
curve widths of piecewise-linear and quadratic curves, and the engine's f and ∇f against plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossatlas.curvature.sharpness import curve_width, engine_value_and_gradient, epsilon_sharpness
from lossatlas.data import load_data
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.models import build_model
from lossatlas.params import parameters_of


def _quadratic(h: dict[str, torch.Tensor], x: dict[str, torch.Tensor], c: float):
    def value_and_gradient(point):
        diff = {k: point[k].double() - x[k].double() for k in x}
        value = c + 0.5 * sum(float((h[k] * diff[k] ** 2).sum()) for k in x)
        return value, {k: (h[k] * diff[k]).to(point[k].dtype) for k in x}
    return value_and_gradient


@pytest.mark.parametrize("epsilon", [1e-3, 5e-4])
def test_epsilon_sharpness_of_a_diagonal_quadratic_is_the_vertex_value(epsilon: float) -> None:
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    x = {"w": torch.randn(4, 3, generator=g, dtype=f64), "b": torch.randn(5, generator=g, dtype=f64)}
    h = {"w": torch.rand(4, 3, generator=g, dtype=f64) * 10, "b": torch.rand(5, generator=g, dtype=f64)}
    c = 0.3
    result = epsilon_sharpness(_quadratic(h, x, c), x, epsilon=epsilon, seed=1)
    rise = 0.5 * sum(float((h[k] * (epsilon * (x[k].abs() + 1)) ** 2).sum()) for k in x)
    assert result.loss == pytest.approx(c, abs=1e-15)
    assert result.sharpness == pytest.approx(100 * rise / (1 + c), rel=1e-9)
    assert result.loss_max == pytest.approx(c + rise, rel=1e-12)


def test_epsilon_sharpness_is_zero_for_a_flat_loss() -> None:
    x = {"w": torch.ones(3, dtype=torch.float64)}
    result = epsilon_sharpness(lambda p: (2.0, {"w": torch.zeros(3, dtype=torch.float64)}), x)
    assert result.sharpness == 0.0 and result.loss == 2.0


def test_curve_width_of_a_v_shape_is_exact_off_grid() -> None:
    alpha = np.linspace(-1.0, 1.0, 23)  # 0 is a grid point (odd count); crossings fall between points
    values = np.where(alpha < 0, -3.0 * alpha, 5.0 * alpha) + 0.7
    w = curve_width(alpha, values, height=1.3)
    assert w.left == pytest.approx(1.3 / 3.0, abs=1e-14) and w.right == pytest.approx(1.3 / 5.0, abs=1e-14)
    assert w.width == pytest.approx(1.3 / 3 + 1.3 / 5, abs=1e-14) and not w.censored
    assert w.centre_value == pytest.approx(0.7)


def test_curve_width_of_a_parabola_within_the_interpolation_error() -> None:
    alpha = np.linspace(-2.0, 2.0, 401)
    k, h = 4.0, 0.5
    w = curve_width(alpha, 0.5 * k * alpha**2, height=h)
    exact = np.sqrt(2 * h / k)
    step = alpha[1] - alpha[0]
    assert abs(w.right - exact) <= k * step**2 / 8 / (k * exact) + 1e-12  # chord error / slope
    assert w.left == pytest.approx(w.right, abs=1e-12)


def test_curve_width_censored_and_nonfinite() -> None:
    alpha = np.linspace(-1.0, 1.0, 5)
    w = curve_width(alpha, np.array([0.1, 0.05, 0.0, np.inf, 9.0]), height=1.0)
    assert w.censored_left and w.left == 1.0
    assert not w.censored_right and w.right == 0.0  # the last finite point before the inf
    with pytest.raises(ValueError, match="centre"):
        curve_width(np.array([0.1, 0.2]), np.array([0.0, 1.0]), height=1.0)


def test_engine_value_and_gradient_is_the_full_batch_autograd_gradient() -> None:
    data = load_data("xor:n=37")
    model = build_model("zoo:mlp:widths=5", input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    evaluator = Evaluator(model, data, EvalSpec(batch_size=8, splits=("train",)))  # 5 batches, last one short
    theta = {k: v.detach().double() * 1.5 for k, v in parameters_of(model).items()}
    value, grad = engine_value_and_gradient(evaluator, dtype=torch.float64)(theta)
    x, y = data.split("train")
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model.double(), leaves, (x.double(),)), y)
    loss.backward()
    assert value == pytest.approx(float(loss.detach()), rel=1e-12)
    for k in theta:
        torch.testing.assert_close(grad[k].double(), leaves[k].grad, rtol=1e-10, atol=1e-12)
