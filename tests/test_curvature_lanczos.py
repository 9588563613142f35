"""Certified Lanczos against dense eigendecompositions (torch.linalg.eigvalsh, float64)."""

from __future__ import annotations

import pytest
import torch

from lossatlas.curvature.hvp import HessianOperator
from lossatlas.curvature.krylov import LanczosState, Which, lanczos
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.params import flatten
from lossatlas.testing.reference import dense_hessian, spectrum, tiny_bn_problem


def synthetic(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(λ) Qᵀ for a random orthogonal Q."""
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(eigenvalues.double()) @ q.T


@pytest.fixture(scope="module")
def network() -> dict:
    net, data = tiny_bn_problem(n=53, seed=3)
    ev = Evaluator(net, data, EvalSpec(batch_size=32, splits=("train",)))  # batches of 32 and 21
    h = dense_hessian(net, ev.loss_fn, data.x_train, data.y_train)
    return {"op": HessianOperator(ev, dtype="float64"), "H": h, "eig": spectrum(h)}


@pytest.mark.parametrize("which", [Which.largest, Which.smallest])
def test_extreme_eigenpairs_of_a_bn_net_match_dense_to_1e_6(network, which) -> None:
    op, h, eig = network["op"], network["H"], network["eig"]
    res = lanczos(op.matvec, op.n, 3, which, tol=1e-10, ncv=10, seed=1)
    assert res.all_converged and res.restarts > 0  # ncv=10 forces thick restarts
    expected = eig.flip(0)[:3] if which is Which.largest else eig[:3]
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-9 * float(eig.abs().max()))
    assert expected.min() < 0 if which is Which.smallest else True  # the bottom end is negative curvature
    for lam, v, r in zip(res.eigenvalues, res.vectors, res.residuals, strict=True):
        true_residual = float((h @ v - lam * v).norm())
        assert abs(float(v.norm()) - 1) < 1e-10
        assert true_residual <= 1e-10 * max(abs(float(lam)), res.eps) * 1.01
        assert abs(true_residual - float(r)) <= 1e-9 * float(eig.abs().max())
    torch.testing.assert_close(res.vectors @ res.vectors.T, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_operator_eigenpairs_are_parameter_dicts(network) -> None:
    op = network["op"]
    res = op.eigenpairs(2, "largest", tol=1e-10)
    assert len(res.eigenvectors) == 2 and list(res.eigenvectors[0]) == op.names
    for d, v in zip(res.eigenvectors, res.vectors, strict=True):
        assert all(d[k].shape == op.theta[k].shape for k in d)
        torch.testing.assert_close(flatten(d), v)
    torch.testing.assert_close(res.eigenvalues, network["eig"].flip(0)[:2], rtol=1e-6, atol=0)


def test_synthetic_spectrum_every_end() -> None:
    lam = torch.cat([torch.linspace(-1, 0, 60) ** 3, torch.rand(130, generator=torch.Generator().manual_seed(0)) * 0.1,
                     torch.tensor([-3.0, 50, 30, 29.9, 10])]).double()
    a = synthetic(lam)
    ref = torch.sort(lam).values
    cases = {Which.largest: ref.flip(0)[:3], Which.smallest: ref[:3],
             Which.magnitude: ref[torch.argsort(ref.abs(), descending=True)][:3],
             Which.both: torch.sort(torch.cat([ref.flip(0)[:2], ref[:2]]), descending=True).values}
    for which, expected in cases.items():
        k = 4 if which is Which.both else 3
        res = lanczos(lambda v: a @ v, a.shape[0], k, which, tol=1e-10, ncv=10)
        assert res.all_converged, which
        torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-8, atol=1e-10)


def test_invariant_subspace_and_repeated_eigenvalues() -> None:
    """Three distinct values: every Krylov space closes at dimension 3 (breakdown), and a fresh random
    vector orthogonal to the basis continues. Each returned pair must be an exact eigenpair; a repeated
    eigenvalue may be returned fewer times than its multiplicity (the documented single-vector limit)."""
    lam = torch.tensor([2.0] * 4 + [1.0] * 20 + [-1.0] * 6, dtype=torch.float64)
    a = synthetic(lam, seed=2)
    res = lanczos(lambda v: a @ v, 30, 4, Which.largest, tol=1e-10, ncv=12)
    assert res.all_converged and float(res.eigenvalues[0]) == pytest.approx(2.0, abs=1e-12)
    assert int((res.eigenvalues - 2).abs().lt(1e-10).sum()) >= 2  # copies beyond the first Krylov space
    for value, vector in zip(res.eigenvalues, res.vectors, strict=True):
        assert min(abs(float(value) - t) for t in (2.0, 1.0, -1.0)) < 1e-10
        assert float((a @ vector - value * vector).norm()) < 1e-9
    torch.testing.assert_close(res.vectors @ res.vectors.T, torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)


def test_full_space_and_tiny_problems() -> None:
    a = torch.tensor([[0.0, -2.0], [-2.0, 0.0]], dtype=torch.float64)  # L = (1 − w₁w₂)² at 0
    res = lanczos(lambda v: a @ v, 2, 2, Which.largest)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([2.0, -2.0], dtype=torch.float64))
    zero = lanczos(lambda v: 0 * v, 3, 3, Which.smallest)
    assert zero.all_converged and float(zero.eigenvalues.abs().max()) == 0.0


def test_warm_start_from_eigenvectors_needs_fewer_products() -> None:
    spread = torch.linspace(-1, 1, 200).double() ** 3
    a = synthetic(spread + torch.cat([torch.zeros(198), torch.tensor([2.0, 2.5])]).double())
    cold = lanczos(lambda v: a @ v, 200, 2, Which.largest, tol=1e-8)
    perturbed = a + 1e-4 * synthetic(torch.rand(200, generator=torch.Generator().manual_seed(5)).double(), seed=6)
    warm = lanczos(lambda v: perturbed @ v, 200, 2, Which.largest, tol=1e-8, v0=list(cold.vectors))
    again = lanczos(lambda v: perturbed @ v, 200, 2, Which.largest, tol=1e-8)
    assert warm.all_converged and warm.matvecs < again.matvecs
    torch.testing.assert_close(warm.eigenvalues, again.eigenvalues, rtol=1e-7, atol=1e-9)


def test_budget_exhaustion_is_reported_not_hidden() -> None:
    a = synthetic(torch.linspace(0, 1, 300).double() ** 4)
    res = lanczos(lambda v: a @ v, 300, 3, Which.smallest, tol=1e-12, ncv=8, max_matvecs=20)
    assert res.matvecs == 20 and not res.all_converged
    assert bool((res.residuals > 1e-12 * torch.clamp(res.eigenvalues.abs(), min=res.eps)).any())


def test_bad_k_is_a_one_line_error() -> None:
    with pytest.raises(UserInputError, match="asked for 5 eigenvalues but the Hessian has only 3 parameters"):
        lanczos(lambda v: v, 3, 5)
    with pytest.raises(UserInputError, match="positive integer"):
        lanczos(lambda v: v, 3, 0)
    with pytest.raises(UserInputError, match="--tol must be positive"):
        lanczos(lambda v: v, 3, 1, tol=0.0)


def test_float32_products_still_certify_at_float32_tolerance(network) -> None:
    op32 = HessianOperator(network["op"].evaluator, dtype="float32")
    res = lanczos(op32.matvec, op32.n, 2, Which.largest, tol=1e-3)
    assert res.all_converged
    torch.testing.assert_close(res.eigenvalues, network["eig"].flip(0)[:2], rtol=1e-4, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_gpu() -> None:
    a = synthetic(torch.linspace(-2, 3, 100).double()).cuda()
    res = lanczos(lambda v: a @ v, 100, 2, Which.both, tol=1e-10, device="cuda")
    assert res.vectors.device.type == "cuda"
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, -2.0], dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.slow
def test_mnist1d_mlp_top_and_bottom_against_dense() -> None:
    """A real problem: MLP 40-16-16-10 (1,098 parameters) on all 4000 MNIST-1D training samples."""
    from lossatlas.data import load_data
    from lossatlas.models import build_model

    data = load_data("mnist1d")
    net = build_model("zoo:mlp:widths=16-16", input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    ev = Evaluator(net, data, EvalSpec(batch_size=1000, splits=("train",)))
    eig = spectrum(dense_hessian(net, ev.loss_fn, data.x_train, data.y_train))
    op = HessianOperator(ev)
    top, bottom = op.eigenpairs(5, "largest", tol=1e-10), op.eigenpairs(3, "smallest", tol=1e-10)
    assert top.all_converged and bottom.all_converged
    torch.testing.assert_close(top.eigenvalues, eig.flip(0)[:5], rtol=1e-6, atol=0)
    torch.testing.assert_close(bottom.eigenvalues, eig[:3], rtol=1e-6, atol=1e-9 * float(eig.abs().max()))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [5, 9, 17])  # before the first check, mid-cycle, after a thick restart
def test_interrupted_run_continues_from_its_state_to_identical_numbers(stop_after) -> None:
    """A run stopped after ``stop_after`` products and continued from the last state handed to ``checkpoint``
    (through its plain-tensor form, as a file would hold it) ends bit-identical to an uninterrupted run."""
    a = synthetic(torch.cat([torch.linspace(-1, 1, 120) ** 3, torch.tensor([3.0, 2.5, -2.0])]).double(), seed=8)
    kwargs = dict(tol=1e-10, ncv=10, seed=3)
    full = lanczos(lambda v: a @ v, 123, 3, Which.both, **kwargs)
    assert full.restarts >= 2 and full.matvecs > 17
    saved: list = []
    count = {"n": 0}

    def flaky(v: torch.Tensor) -> torch.Tensor:
        count["n"] += 1
        if count["n"] > stop_after:
            raise _Stop
        return a @ v

    with pytest.raises(_Stop):
        lanczos(flaky, 123, 3, Which.both, checkpoint=saved.append, **kwargs)
    state = LanczosState.from_dict(saved[-1].as_dict())
    assert state.matvecs == stop_after
    calls = {"n": 0}

    def counted(v: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return a @ v

    resumed = lanczos(counted, 123, 3, Which.both, state=state, **kwargs)
    assert calls["n"] == full.matvecs - stop_after and resumed.matvecs == full.matvecs
    assert resumed.restarts == full.restarts
    for field in ("eigenvalues", "residuals", "converged", "vectors"):
        assert torch.equal(getattr(resumed, field), getattr(full, field)), field
    with pytest.raises(ValueError, match="another run"):
        lanczos(counted, 123, 2, Which.both, state=state, **kwargs)


def test_progress_reports_products_and_certified_pairs_and_completes() -> None:
    """No fixed maximum: the callback sees products and certified pairs, and a final ``finished`` call."""
    a = synthetic(torch.linspace(0, 1, 80).double() ** 2, seed=9)
    calls: list[tuple[int, int, bool]] = []
    res = lanczos(lambda v: a @ v, 80, 3, Which.largest, tol=1e-8, progress=lambda *c: calls.append(c))
    assert [c[0] for c in calls[:-1]] == list(range(1, res.matvecs + 1))
    assert calls[-1] == (res.matvecs, 3, True) and not any(c[2] for c in calls[:-1])
    assert all(0 <= c[1] <= 3 for c in calls) and calls[-2][1] == 3 and calls[0][1] == 0
