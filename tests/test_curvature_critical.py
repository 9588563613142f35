"""Seed 004's critical points, verbatim: the Hessian decides minimum / maximum / saddle / degenerate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lossatlas.curvature.critical import CriticalKind, Tolerances, classify, critical_point
from lossatlas.curvature.hvp import FunctionHessian, HessianOperator
from lossatlas.data import Dataset
from lossatlas.engine import EvalSpec, Evaluator


def w(t: dict) -> torch.Tensor:
    return t["w"]


# (f, λmin, λmax, kind, exact index): all at (x, y) = (0, 0)
EXAMPLES = {
    "x² + 3y²": (lambda t: w(t)[0] ** 2 + 3 * w(t)[1] ** 2, 2.0, 6.0, CriticalKind.minimum, 0.0),
    "−x² + 3y²": (lambda t: -w(t)[0] ** 2 + 3 * w(t)[1] ** 2, -2.0, 6.0, CriticalKind.saddle, 0.5),
    "−x² − y²": (lambda t: -w(t)[0] ** 2 - w(t)[1] ** 2, -2.0, -2.0, CriticalKind.maximum, 1.0),
    "x² + y⁴": (lambda t: w(t)[0] ** 2 + w(t)[1] ** 4, 0.0, 2.0, CriticalKind.degenerate, 0.0),
    "x² − y⁴": (lambda t: w(t)[0] ** 2 - w(t)[1] ** 4, 0.0, 2.0, CriticalKind.degenerate, 0.0),
    "monkey saddle x³ − 3xy²": (lambda t: w(t)[0] ** 3 - 3 * w(t)[0] * w(t)[1] ** 2, 0.0, 0.0,
                                CriticalKind.degenerate, 0.0),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("dense_limit", [5000, 0])  # exact eigendecomposition, or Lanczos + density
def test_seed_004_two_variable_examples(name, dense_limit) -> None:
    fn, lam_min, lam_max, kind, index = EXAMPLES[name]
    cp = critical_point(FunctionHessian(fn, {"w": torch.zeros(2, dtype=torch.float64)}), dense_limit=dense_limit)
    assert cp.kind is kind and cp.grad_norm == 0.0
    assert cp.lambda_min == pytest.approx(lam_min, abs=1e-9) and cp.lambda_max == pytest.approx(lam_max, abs=1e-9)
    if dense_limit:
        assert cp.index_method == "exact" and cp.index == index
    else:
        assert cp.index_method == "density" and 0.0 <= cp.index <= 1.0


@pytest.mark.parametrize(("depth", "eigenvalues", "kind"),
                         [(1, [2.0], CriticalKind.not_critical),
                          (2, [-2.0, 2.0], CriticalKind.saddle),
                          (3, [0.0, 0.0, 0.0], CriticalKind.degenerate)])
def test_deep_linear_chain_at_zero(depth, eigenvalues, kind) -> None:
    """L = (1 − w₁w₂…w_H)² at 0 (seed 004): H = 1 is not critical (L' = −2) and curves up with 2; H = 2 is a
    saddle with eigenvalues ±2; H = 3 has an all-zero Hessian: degenerate."""
    op = FunctionHessian(lambda t: (1 - torch.prod(w(t))) ** 2, {"w": torch.zeros(depth, dtype=torch.float64)})
    torch.testing.assert_close(torch.linalg.eigvalsh(op.dense()), torch.tensor(eigenvalues, dtype=torch.float64))
    cp = critical_point(op)
    assert cp.kind is kind
    assert cp.grad_norm == pytest.approx(2.0 if depth == 1 else 0.0)


def test_deep_linear_network_model_through_the_data_pipeline() -> None:
    """The same chain as a real network: x = 1, y = 1, weights 1×1, MSE; the HVP operator finds ±2."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        for layer in net:
            layer.weight.zero_()
    one = torch.ones(3, 1)
    data = Dataset(name="one", x_train=one, y_train=one.clone(), x_test=None, y_test=None, task="regression",
                   num_classes=None)
    op = HessianOperator(Evaluator(net, data, EvalSpec(loss="mse", batch_size=2, splits=("train",))))
    cp = critical_point(op)
    assert cp.kind is CriticalKind.saddle and cp.index == 0.5 and cp.loss == pytest.approx(1.0)
    assert (cp.lambda_min, cp.lambda_max) == (pytest.approx(-2.0), pytest.approx(2.0))


def test_classify_thresholds() -> None:
    tol = Tolerances(grad_tol=1e-6, eig_rtol=1e-6, eig_atol=1e-10)
    assert classify(1e-3, 1.0, 2.0, tol) is CriticalKind.not_critical
    assert classify(0.0, 1e-7, 1.0, tol) is CriticalKind.degenerate   # 1e-7 < τ = 1e-6
    assert classify(0.0, 1e-5, 1.0, tol) is CriticalKind.minimum
    assert classify(0.0, -1e-5, 1.0, tol) is CriticalKind.saddle
    assert classify(0.0, -1.0, -1e-7, tol) is CriticalKind.degenerate
    assert classify(0.0, 0.0, 0.0, tol) is CriticalKind.degenerate
    assert classify(float("nan"), 1.0, 2.0, tol) is CriticalKind.not_critical
