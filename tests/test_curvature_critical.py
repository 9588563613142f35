"""Seed 004's critical points, verbatim: the gradient decides *whether* θ is critical (a relative test), the
Hessian's sign pattern *what kind*; uncertified extremes give "undetermined"; the index is exact (dense), decided
by the extremes, or the SLQ negative mass only when the density resolves it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lossatlas.curvature.critical import (
    CriticalKind,
    SignPattern,
    Tolerances,
    classify,
    critical_point,
    gradient_test,
)
from lossatlas.curvature.density import spectral_density
from lossatlas.curvature.hvp import FunctionHessian, HessianOperator
from lossatlas.data import Dataset
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.testing.reference import dense_hessian, spectrum, tiny_bn_problem


def w(t: dict) -> torch.Tensor:
    return t["w"]


# (f, λmin, λmax, kind, sign pattern, exact index, (negative, zero, positive)): all at (x, y) = (0, 0)
EXAMPLES = {
    "x² + 3y²": (lambda t: w(t)[0] ** 2 + 3 * w(t)[1] ** 2, 2.0, 6.0, CriticalKind.minimum,
                 SignPattern.positive_definite, 0.0, (0, 0, 2)),
    "−x² + 3y²": (lambda t: -w(t)[0] ** 2 + 3 * w(t)[1] ** 2, -2.0, 6.0, CriticalKind.saddle,
                  SignPattern.indefinite, 0.5, (1, 0, 1)),
    "−x² − y²": (lambda t: -w(t)[0] ** 2 - w(t)[1] ** 2, -2.0, -2.0, CriticalKind.maximum,
                 SignPattern.negative_definite, 1.0, (2, 0, 0)),
    "x² + y⁴": (lambda t: w(t)[0] ** 2 + w(t)[1] ** 4, 0.0, 2.0, CriticalKind.degenerate,
                SignPattern.positive_semidefinite, 0.0, (0, 1, 1)),
    "x² − y⁴": (lambda t: w(t)[0] ** 2 - w(t)[1] ** 4, 0.0, 2.0, CriticalKind.degenerate,
                SignPattern.positive_semidefinite, 0.0, (0, 1, 1)),
    "monkey saddle x³ − 3xy²": (lambda t: w(t)[0] ** 3 - 3 * w(t)[0] * w(t)[1] ** 2, 0.0, 0.0,
                                CriticalKind.degenerate, SignPattern.zero, 0.0, (0, 2, 0)),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("dense_limit", [5000, 0])  # exact eigendecomposition, or Lanczos + density
def test_seed_004_two_variable_examples(name, dense_limit) -> None:
    fn, lam_min, lam_max, kind, pattern, index, counts = EXAMPLES[name]
    cp = critical_point(FunctionHessian(fn, {"w": torch.zeros(2, dtype=torch.float64)}), dense_limit=dense_limit)
    assert cp.kind is kind and cp.pattern is pattern and cp.critical is True and cp.certified
    assert cp.grad_norm == 0.0 and cp.grad_relative == 0.0
    assert cp.lambda_min == pytest.approx(lam_min, abs=1e-9) and cp.lambda_max == pytest.approx(lam_max, abs=1e-9)
    assert cp.index == pytest.approx(index, abs=1e-12)  # exact (to rounding), in both branches
    if dense_limit:
        assert cp.index_method == "exact" and cp.counts == counts
    else:
        assert cp.counts is None
        # the saddle's index comes from the SLQ density: Rademacher probes on a diagonal Hessian weigh each
        # eigenvalue exactly 1/n, so the negative mass is exactly 1/2; the other indices follow from the extremes
        assert cp.index_method == ("density" if pattern is SignPattern.indefinite else "extremes")


def test_slq_negative_mass_is_the_exact_index_on_diagonal_problems() -> None:
    """Indices 0, 3/8, 1/2 and 1 built in: per probe, every eigenvalue gets weight exactly 1/n."""
    for eigenvalues, index in (([1.0, 2, 3, 4, 5, 6, 7, 8], 0.0), ([-3.0, -1, -0.5, 2, 4, 5, 6, 7], 0.375),
                               ([-1.0, -2, -3, -4, 1, 2, 3, 4], 0.5), ([-1.0, -2, -3, -4, -5, -6, -7, -8], 1.0)):
        lam = torch.tensor(eigenvalues, dtype=torch.float64)
        op = FunctionHessian(lambda t, lam=lam: 0.5 * (lam * w(t) ** 2).sum(),
                             {"w": torch.zeros(8, dtype=torch.float64)})
        dens = spectral_density(op, probes=3, steps=8, seed=5)
        assert dens.negative_mass() == pytest.approx(index, abs=1e-12), eigenvalues
        torch.testing.assert_close(dens.weights.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_slq_index_is_unresolved_when_the_density_is_wider_than_the_negative_eigenvalues() -> None:
    """λmin = −0.01 beside eigenvalues up to 100: the density's width σ ≈ 1.2 ≫ |λmin|, so its negative mass is
    reported but not called the index; with λmin = −50 it is the index (exactly 1/10 here)."""
    for lam_min, method, index in ((-0.01, "unresolved", None), (-50.0, "density", 0.1)):
        lam = torch.cat([torch.tensor([lam_min]), torch.linspace(1, 100, 9)]).double()
        op = FunctionHessian(lambda t, lam=lam: 0.5 * (lam * w(t) ** 2).sum(),
                             {"w": torch.zeros(10, dtype=torch.float64)})
        cp = critical_point(op, dense_limit=0, tol=1e-10)
        assert cp.pattern is SignPattern.indefinite and cp.kind is CriticalKind.saddle
        assert cp.index_method == method and cp.index == (None if index is None else pytest.approx(index, abs=1e-12))
        assert cp.negative_mass == pytest.approx(0.1, abs=1e-12) and cp.density_sigma is not None
        assert (cp.density_sigma > abs(lam_min)) is (index is None)
        assert ("index" in cp.as_attrs()) is (index is not None)


def test_uncertified_extremes_give_undetermined_with_residuals() -> None:
    """Six products cannot certify the ends of a 300-dimensional spectrum: no verdict, residuals kept."""
    lam = torch.linspace(-1, 2, 300, dtype=torch.float64) ** 3
    op = FunctionHessian(lambda t: 0.5 * (lam * w(t) ** 2).sum(), {"w": torch.zeros(300, dtype=torch.float64)})
    cp = critical_point(op, dense_limit=0, max_matvecs=6, tol=1e-10)
    assert not cp.certified and cp.kind is CriticalKind.undetermined and cp.pattern is SignPattern.undetermined
    assert cp.critical is None and cp.index is None and cp.index_method == "unresolved"
    assert cp.residual_min > 1e-10 * abs(cp.lambda_min) and cp.residual_max > 0
    attrs = cp.as_attrs()
    assert attrs["critical_kind"] == "undetermined" and attrs["is_critical"] == "undetermined"
    assert attrs["lambda_min_residual"] == cp.residual_min and attrs["extremes_certified"] is False
    full = critical_point(op, dense_limit=0, tol=1e-10)  # with the default budget it is certified
    assert full.certified and full.kind is CriticalKind.saddle


def quadratic(c: float, a: float = 1.0):
    """c · (½ (w₀ − a)² + (3/2) w₁²) / a²: the same landscape in other units (loss × c, parameters × a)."""
    return lambda t: c * (0.5 * (w(t)[0] - a) ** 2 + 1.5 * w(t)[1] ** 2) / a ** 2


@pytest.mark.parametrize(("c", "a"), [(1.0, 1.0), (1e6, 1.0), (1e-6, 1.0), (1.0, 1e3), (1e4, 1e-3)])
def test_gradient_tolerance_is_relative_so_units_do_not_change_the_verdict(c, a) -> None:
    """At w = a(1 + δ, 0) the relative gradient is ‖g‖/(‖H‖‖θ‖) = δ/(3(1 + δ)) whatever c and a: δ = 1e-8 is a
    minimum, δ = 1e-4 is not critical, in every unit. (An absolute ‖g‖ ≤ 1e-6 calls δ = 1e-8 with c = 1e6 not
    critical, and δ = 1e-4 with c = 1e-6 critical.)"""
    for delta, kind in ((1e-8, CriticalKind.minimum), (1e-4, CriticalKind.not_critical)):
        theta = {"w": torch.tensor([a * (1 + delta), 0.0], dtype=torch.float64)}
        cp = critical_point(FunctionHessian(quadratic(c, a), theta))
        assert cp.kind is kind and cp.pattern is SignPattern.positive_definite
        assert cp.grad_relative == pytest.approx(delta / (3 * (1 + delta)), rel=1e-6)
        assert cp.counts == (0, 0, 2)
    near = {"w": torch.tensor([a * 1.0001, 0.0], dtype=torch.float64)}
    loose = critical_point(FunctionHessian(quadratic(c, a), near), tolerances=Tolerances(grad_tol=1e-4))
    assert loose.kind is CriticalKind.minimum and loose.critical is True


def test_gradient_test_edge_cases() -> None:
    assert gradient_test(0.0, 0.0, 0.0, 1e-6) == (True, 0.0)        # exactly stationary: always critical
    assert gradient_test(1e-300, 0.0, 2.0, 1e-6)[0] is False          # θ = 0: no scale, only g = 0 passes
    assert gradient_test(float("nan"), 1.0, 1.0, 1e-6)[0] is False
    with pytest.raises(UserInputError, match="--grad-tol must be a positive number"):
        Tolerances(grad_tol=0.0)


@pytest.mark.parametrize(("depth", "eigenvalues", "kind"),
                         [(1, [2.0], CriticalKind.not_critical),
                          (2, [-2.0, 2.0], CriticalKind.saddle),
                          (3, [0.0, 0.0, 0.0], CriticalKind.degenerate)])
def test_deep_linear_chain_at_zero(depth, eigenvalues, kind) -> None:
    """L = (1 − w₁w₂…w_H)² at 0 (seed 004): H = 1 is not critical (L' = −2, and θ = 0 leaves no relative slack)
    and curves up with 2; H = 2 is a saddle with eigenvalues ±2; H = 3 has an all-zero Hessian: degenerate."""
    op = FunctionHessian(lambda t: (1 - torch.prod(w(t))) ** 2, {"w": torch.zeros(depth, dtype=torch.float64)})
    torch.testing.assert_close(torch.linalg.eigvalsh(op.dense()), torch.tensor(eigenvalues, dtype=torch.float64))
    cp = critical_point(op)
    assert cp.kind is kind
    assert cp.grad_norm == pytest.approx(2.0 if depth == 1 else 0.0)
    assert cp.pattern is {1: SignPattern.positive_definite, 2: SignPattern.indefinite, 3: SignPattern.zero}[depth]


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
    assert cp.kind is CriticalKind.saddle and cp.index == 0.5 and cp.counts == (1, 0, 1)
    assert cp.loss == pytest.approx(1.0)
    assert (cp.lambda_min, cp.lambda_max) == (pytest.approx(-2.0), pytest.approx(2.0))


def test_counts_of_a_bn_network_match_the_dense_reference() -> None:
    """A network away from a critical point: not critical, but its sign pattern and exact counts are reported,
    equal to those of the float64 reference Hessian."""
    net, data = tiny_bn_problem(n=53, seed=2)
    ev = Evaluator(net, data, EvalSpec(batch_size=16, splits=("train",)))
    eig = spectrum(dense_hessian(net, ev.loss_fn, data.x_train, data.y_train))
    cp = critical_point(HessianOperator(ev))
    tau = 1e-6 * float(eig.abs().max())
    expected = (int((eig < -tau).sum()), int((eig.abs() <= tau).sum()), int((eig > tau).sum()))
    assert cp.kind is CriticalKind.not_critical and cp.critical is False and cp.pattern is SignPattern.indefinite
    assert cp.counts == expected and expected[0] > 0 and cp.index == expected[0] / eig.numel()
    assert cp.lambda_min == pytest.approx(float(eig[0]), rel=1e-8) and cp.certified
    assert cp.residual_min < 1e-10 * float(eig.abs().max())


def test_classify_thresholds() -> None:
    tol = Tolerances(grad_tol=1e-6, eig_rtol=1e-6, eig_atol=1e-10)
    assert classify(1e-3, 1.0, 2.0, tol) is CriticalKind.not_critical       # 1e-3 / (2 · 1) > 1e-6
    assert classify(1e-6, 1.0, 2.0, tol) is CriticalKind.minimum            # 1e-6 / 2 <= 1e-6
    assert classify(1e-6, 1.0, 2.0, tol, theta_norm=0.1) is CriticalKind.not_critical
    assert classify(0.0, 1e-7, 1.0, tol) is CriticalKind.degenerate   # 1e-7 < τ = 1e-6
    assert classify(0.0, 1e-5, 1.0, tol) is CriticalKind.minimum
    assert classify(0.0, 1e-5, 1.0, tol, residual=1e-4) is CriticalKind.degenerate  # λmin not resolved from 0
    assert classify(0.0, -1e-5, 1.0, tol) is CriticalKind.saddle
    assert classify(0.0, -1.0, -1e-7, tol) is CriticalKind.degenerate
    assert classify(0.0, 0.0, 0.0, tol) is CriticalKind.degenerate
    assert classify(float("nan"), 1.0, 2.0, tol) is CriticalKind.not_critical
    assert classify(0.0, 1.0, 2.0, tol, certified=False) is CriticalKind.undetermined
