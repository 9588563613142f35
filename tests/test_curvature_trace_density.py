"""Trace estimators and the SLQ spectral density against the dense Hessian of a tiny BatchNorm net."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lossatlas.curvature.density import lanczos_quadrature, spectral_density
from lossatlas.curvature.hvp import HessianOperator
from lossatlas.curvature.trace import TraceMethod, estimate_trace, hutchinson_trace, hutchpp_trace
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.testing.reference import dense_hessian, spectrum, tiny_bn_problem


@dataclass
class Dense:
    """A dense symmetric matrix behind the operator interface (for many-seed statistical checks)."""

    h: torch.Tensor

    @property
    def n(self) -> int:
        return self.h.shape[0]

    @property
    def device(self) -> torch.device:
        return self.h.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.h @ v.double()


@pytest.fixture(scope="module")
def net() -> dict:
    model, data = tiny_bn_problem(n=53, seed=4)
    ev = Evaluator(model, data, EvalSpec(batch_size=32, splits=("train",)))
    h = dense_hessian(model, ev.loss_fn, data.x_train, data.y_train)
    return {"op": HessianOperator(ev), "H": h, "eig": spectrum(h)}


@pytest.mark.parametrize("method", [TraceMethod.hutchinson, TraceMethod.hutchpp])
def test_trace_of_the_network_hessian_within_three_standard_errors(net, method) -> None:
    est = estimate_trace(net["op"], method, matvecs=24, seed=0)
    exact = float(net["H"].trace())
    assert est.matvecs == 24 and est.stderr > 0
    assert abs(est.trace - exact) <= 3 * est.stderr, (est.trace, exact, est.stderr)


def test_standard_errors_are_calibrated_over_many_seeds(net) -> None:
    """Over 40 seeds the 3-s.e. interval covers tr(H) nearly always."""
    dense, exact = Dense(net["H"]), float(net["H"].trace())
    for method in TraceMethod:
        hits = [abs((e := estimate_trace(dense, method, 30, seed)).trace - exact) <= 3 * e.stderr for seed in range(40)]
        assert sum(hits) >= 36, method


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum() -> None:
    """A few dominant eigenvalues (as in trained networks): the sketch removes most of the variance."""
    lam = torch.cat([torch.tensor([100.0, 60.0, 30.0, 20.0, 10.0]), torch.linspace(-0.5, 1.0, 195)]).double()
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    dense = Dense(q @ torch.diag(lam) @ q.T)
    plain = [hutchinson_trace(dense, 30, s) for s in range(5)]
    pp = [hutchpp_trace(dense, 30, s) for s in range(5)]
    assert max(e.stderr for e in pp) < min(e.stderr for e in plain) / 5
    assert all(abs(e.trace - float(lam.sum())) <= 3 * e.stderr for e in pp + plain)


def test_hutchpp_is_exact_when_the_sketch_spans_everything() -> None:
    h = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64))
    est = hutchpp_trace(Dense(h), matvecs=15, seed=0)
    assert est.trace == pytest.approx(4.5, abs=1e-12) and est.stderr < 1e-12


def test_trace_bad_inputs() -> None:
    with pytest.raises(UserInputError, match="at least 2 probes"):
        hutchinson_trace(Dense(torch.eye(3, dtype=torch.float64)), probes=1)
    with pytest.raises(UserInputError, match="at least 6"):
        hutchpp_trace(Dense(torch.eye(3, dtype=torch.float64)), matvecs=5)
    with pytest.raises(UserInputError, match="hutchinson or hutch\\+\\+"):
        estimate_trace(Dense(torch.eye(3, dtype=torch.float64)), "exact")


def test_density_of_the_network_integrates_to_one_and_matches_moments(net) -> None:
    n, h = net["op"].n, net["H"]
    dens = spectral_density(net["op"], probes=3, steps=20, bins=100, seed=0)
    grid, phi = dens.grid.numpy(), dens.density.numpy()
    assert dens.matvecs == 60 and grid.shape == (100,)
    np.testing.assert_allclose(np.trapezoid(phi, grid), 1.0, rtol=0, atol=1e-6)
    # Gaussian smoothing keeps the mean and adds σ² to the second moment
    np.testing.assert_allclose(np.trapezoid(grid * phi, grid), dens.moment(1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.trapezoid(grid ** 2 * phi, grid) - dens.sigma ** 2, dens.moment(2), rtol=1e-5)
    for k, exact in ((1, float(h.trace()) / n), (2, float((h @ h).trace()) / n)):
        assert abs(dens.moment(k) - exact) <= 3 * dens.moment_stderr(k), (k, dens.moment(k), exact)
    assert np.all(dens.lower.numpy() <= phi + 1e-15) and np.all(phi <= dens.upper.numpy() + 1e-15)


def test_quadrature_is_exact_for_low_moments_of_each_probe(net) -> None:
    """m Lanczos steps: Gauss quadrature exact to degree 2m − 1, so Σ τ θᵏ = v̂ᵀ Hᵏ v̂ for k ≤ 3 at m = 2."""
    h = net["H"]
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    v_hat = v / v.norm()
    for steps in (2, 10):
        nodes, weights = lanczos_quadrature(lambda u: h @ u, v, steps)
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
        for k in (1, 2, 3):
            exact = float(v_hat @ torch.linalg.matrix_power(h, k) @ v_hat)
            assert float((weights * nodes ** k).sum()) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_moments_and_negative_mass_converge_with_many_probes(net) -> None:
    h, eig = net["H"], net["eig"]
    n = h.shape[0]
    dens = spectral_density(Dense(h), probes=30, steps=n, bins=200, seed=1)  # full Lanczos: exact per probe
    for k, exact in ((1, float(eig.mean())), (2, float((eig ** 2).mean()))):
        assert abs(dens.moment(k) - exact) <= 3 * dens.moment_stderr(k)
    index = float((eig < -1e-6 * eig.abs().max()).double().mean())
    per_probe = (dens.weights * (dens.nodes < -1e-6 * dens.nodes.abs().max())).sum(dim=1)
    se = float(per_probe.std() / np.sqrt(per_probe.numel()))
    assert abs(dens.negative_mass() - index) <= 3 * se + 1e-12


def test_density_bad_inputs() -> None:
    with pytest.raises(UserInputError, match="bins >= 20"):
        spectral_density(Dense(torch.eye(3, dtype=torch.float64)), bins=5)
    with pytest.raises(UserInputError, match="--sigma must be positive"):
        spectral_density(Dense(torch.eye(3, dtype=torch.float64)), sigma=0.0)


def test_density_continues_from_finished_probes_to_identical_numbers(net) -> None:
    """Probes finished before an interruption (``on_probe``) are not recomputed; the result is bit-identical."""
    dense = Dense(net["H"])
    full = spectral_density(dense, probes=4, steps=15, bins=50, seed=2)
    saved: list = []

    class Stop(Exception):
        pass

    class Flaky(Dense):
        calls = 0

        def matvec(self, v: torch.Tensor) -> torch.Tensor:
            Flaky.calls += 1
            if Flaky.calls > 2 * 15 + 7:  # in the middle of the third probe
                raise Stop
            return super().matvec(v)

    with pytest.raises(Stop):
        spectral_density(Flaky(net["H"]), probes=4, steps=15, bins=50, seed=2, on_probe=saved.append)
    assert len(saved) == 2 and len(saved[-1]) == 2
    products: list[int] = []
    resumed = spectral_density(dense, probes=4, steps=15, bins=50, seed=2, finished=saved[-1],
                               progress=lambda done, total: products.append(done))
    assert products == [30, *range(31, 61), 60]  # the saved probes at once, then product by product, then "done"
    for field in ("grid", "density", "lower", "upper", "nodes", "weights"):
        assert torch.equal(getattr(resumed, field), getattr(full, field)), field
    assert resumed.matvecs == full.matvecs == 60
