"""The convexified CNN (Zhang, Liang & Wainwright 2017): patches, kernel features, the nuclear-norm projection and
the convex programme, each against an independent reference (a loop, a closed form, bisection, a variational
inequality); the CNN-1 it relaxes equals a linear map on the same patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lossatlas.data import load_data
from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.models.ccnn import (
    CNN1,
    PatchFeatures,
    PatchSpec,
    build_ccnn,
    extract_patches,
    logits_from_features,
    patch_grid,
    rbf_kernel,
)
from lossatlas.models.nuclear import (
    NuclearSpec,
    ccnn_objective,
    design_matrix,
    fit_ccnn,
    lipschitz_constant,
    nuclear_norm,
    project_nuclear_ball,
    project_simplex_ball,
)


def _bisection_projection(s: np.ndarray, radius: float) -> np.ndarray:
    """Reference: τ by bisection on Σ max(s − τ, 0) = radius (no sorting)."""
    s = np.maximum(s, 0)
    if s.sum() <= radius:
        return s
    lo, hi = 0.0, float(s.max())
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.maximum(s - tau, 0).sum() > radius else (lo, tau)
    return np.maximum(s - (lo + hi) / 2, 0)


def test_simplex_ball_projection_matches_bisection() -> None:
    g = torch.Generator().manual_seed(0)
    for radius in (0.5, 3.0, 100.0):
        s = torch.rand(17, generator=g, dtype=torch.float64) * 2 - 0.3
        np.testing.assert_allclose(project_simplex_ball(s, radius).numpy(), _bisection_projection(s.numpy(), radius),
                                   atol=1e-12)


def test_nuclear_projection_closed_forms() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    # rank one, s·u vᵀ with s > R  ↦  R·u vᵀ
    a = 5.0 * torch.outer(u[:, 0], v[:, 0])
    torch.testing.assert_close(project_nuclear_ball(a, 2.0), 2.0 * torch.outer(u[:, 0], v[:, 0]))
    # singular values (3, 2, 1, 0.5), R = 4: shift by τ = 2/3 → (7/3, 4/3, 1/3, 0)
    a = u[:, :4] @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ v.T
    want = u[:, :4] @ torch.diag(torch.tensor([7 / 3, 4 / 3, 1 / 3, 0.0], dtype=torch.float64)) @ v.T
    torch.testing.assert_close(project_nuclear_ball(a, 4.0), want)
    # inside the ball: unchanged
    torch.testing.assert_close(project_nuclear_ball(a, 10.0), a)


def test_nuclear_projection_is_the_euclidean_projection() -> None:
    """P(A) is feasible and ⟨A − P(A), B − P(A)⟩ ≤ 0 for every feasible B (the projection's characterisation)."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 12, generator=g, dtype=torch.float64) * 3
    radius = 5.0
    p = project_nuclear_ball(a, radius)
    assert nuclear_norm(p) == pytest.approx(radius, rel=1e-10)
    for _ in range(200):
        b = torch.randn(8, 12, generator=g, dtype=torch.float64)
        b = b * (radius * float(torch.rand((), generator=g, dtype=torch.float64)) / nuclear_norm(b))
        assert float(((a - p) * (b - p)).sum()) <= 1e-9
    # and it is no farther from A than any of those feasible points
    assert float((a - p).norm()) <= float((a - b).norm())


def test_patches_match_a_loop_and_grid() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 7, generator=g)
    spec = PatchSpec(size=3, stride=2, padding=1)
    z = extract_patches(x, spec, (2, 6, 7))
    rows, cols = patch_grid(spec, (2, 6, 7))
    padded = F.pad(x, (1, 1, 1, 1))
    want = torch.stack([padded[:, :, 2 * r:2 * r + 3, 2 * c:2 * c + 3].reshape(2, -1)
                        for r in range(rows) for c in range(cols)], 1)
    torch.testing.assert_close(z, want)
    # signals: windows of length 5, stride 2
    s = torch.randn(3, 40, generator=g)
    zs = extract_patches(s, PatchSpec(size=5, stride=2), (40,))
    torch.testing.assert_close(zs, torch.stack([s[:, 2 * p:2 * p + 5] for p in range(18)], 1))


@pytest.mark.parametrize(("shape", "spec"), [((1, 8, 8), PatchSpec(3, 1, 0, 2)), ((40,), PatchSpec(5, 2, 0, 1))])
def test_cnn1_is_the_two_layer_cnn_on_patches(shape: tuple[int, ...], spec: PatchSpec) -> None:
    """f_k(x) = Σ_j Σ_p α_{k,j,p} relu(w_jᵀ z_p(x)) + c_k, written out with a loop over patches and filters."""
    torch.manual_seed(0)
    net = CNN1(shape, 4, spec, filters=3)
    x = torch.randn(5, *shape)
    z = extract_patches(x, spec, shape)  # (N, P, d1)
    w = net.conv.weight.reshape(3, -1)
    h = torch.relu(z @ w.T + net.conv.bias)  # (N, P, r)
    rows, cols = patch_grid(spec, shape)
    if spec.pool > 1:
        h = F.avg_pool2d(h.transpose(1, 2).reshape(5, 3, rows, cols), spec.pool, ceil_mode=True)
        h = h.reshape(5, 3, -1).transpose(1, 2)
    alpha = net.linear.weight.reshape(4, 3, -1)  # (K, r, P)
    want = torch.stack([sum(alpha[k, j, p] * h[:, p, j] for j in range(3) for p in range(h.shape[1]))
                        for k in range(4)], 1) + net.linear.bias
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


def test_cnn1_in_the_zoo() -> None:
    net = build_model("zoo:cnn1:filters=4,size=5,stride=2", input_shape=(40,), output_dim=10, seed=0)
    assert net(torch.zeros(2, 40)).shape == (2, 10)
    with pytest.raises(UserInputError):
        build_model("zoo:cnn1:size=9", input_shape=(1, 8, 8), output_dim=10)


def test_ccnn_logits_are_traces() -> None:
    """f_k(x) = tr(Z(x) A_k) with A = [A_1, …, A_K], A_k ∈ R^{m×P}: a double loop over patches and features."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)  # N, P, m
    a = torch.randn(4, 2 * 5, generator=g, dtype=torch.float64)  # m, K·P
    b = torch.randn(2, generator=g, dtype=torch.float64)
    want = torch.stack([torch.stack([torch.trace(z[n] @ a[:, k * 5:(k + 1) * 5]) for k in range(2)])
                        for n in range(3)]) + b
    torch.testing.assert_close(logits_from_features(z, a, b), want)


def test_nystrom_features_are_exact_on_landmarks_and_rff_approximate_the_kernel() -> None:
    data = load_data("digits")
    x = data.x_train[:50]
    model = build_ccnn(data.input_shape, 10, PatchSpec(3), x, kind="nystrom", features=40, seed=0)
    q = model.features
    landmarks = q.projection.T
    k = rbf_kernel(landmarks.double(), landmarks.double(), float(q.gamma))
    feats = q(landmarks.double())
    torch.testing.assert_close(feats @ feats.T, k, atol=1e-4, rtol=0)
    # random Fourier features: E[QQᵀ] = K; with m = 20000 the error is O(1/√m)
    z = extract_patches(x[:4], PatchSpec(3), data.input_shape).reshape(-1, 9)[:30]
    rff = PatchFeatures("rff", 9, 20000).fit(z, 0.3, torch.Generator().manual_seed(0))
    err = (rff(z) @ rff(z).T - rbf_kernel(z, z, 0.3)).abs().max()
    assert float(err) < 6 / math.sqrt(20000)


def _small_problem() -> tuple:
    data = load_data("digits")
    x, y = data.x_train[:200], data.y_train[:200]
    model = build_ccnn(data.input_shape, 10, PatchSpec(3, 1, 0, 2), x, kind="rff", features=16, seed=0)
    return model, x, y


def test_gradient_and_lipschitz_constant() -> None:
    from lossatlas.models.nuclear import _value_grad

    model, x, y = _small_problem()
    design = design_matrix(model.feature_matrix(x).double())
    theta = torch.randn(design.shape[1], 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    value, grad = _value_grad(design, design.T.contiguous(), y, theta)
    t = theta.clone().requires_grad_(True)
    ref = F.cross_entropy(design @ t, y)
    ref.backward()
    assert value == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(grad, t.grad)
    exact = 0.5 * float(torch.linalg.matrix_norm(design, ord=2)) ** 2 / design.shape[0]
    assert exact <= lipschitz_constant(design) <= 1.02 * exact


@pytest.fixture(scope="module")
def two_solutions() -> tuple:
    model, x, y = _small_problem()
    zero = fit_ccnn(model, x, y, NuclearSpec(radius=5.0, iterations=600))
    rand = fit_ccnn(model, x, y, NuclearSpec(radius=5.0, iterations=600, init="random", init_seed=3))
    return model, x, y, zero, rand


def test_two_initialisations_reach_the_same_optimum(two_solutions: tuple) -> None:
    """Convex programme: from A = 0 and from a random A the same optimal value, certified by the first-order
    inequality of convexity F(θ₁) − F(θ₂) ≤ ⟨∇F(θ₁), θ₁ − θ₂⟩ (both ways) with a tiny right-hand side."""
    from lossatlas.models.nuclear import _to_theta, _value_grad

    model, x, y, zero, rand = two_solutions
    assert zero.nuclear_norm <= 5.0 * (1 + 1e-9) and rand.nuclear_norm <= 5.0 * (1 + 1e-9)
    assert zero.bias_grad_norm < 1e-4 and rand.bias_grad_norm < 1e-4
    assert 0 <= zero.fw_gap < 1e-5 and 0 <= rand.fw_gap < 1e-5
    design = design_matrix(model.feature_matrix(x).double())
    thetas = [_to_theta(f.model.weight.detach().double(), f.model.bias.detach().double(), model.positions)
              for f in (zero, rand)]
    (f1, g1), (f2, g2) = (_value_grad(design, design.T.contiguous(), y, t) for t in thetas)
    bound12, bound21 = float((g1 * (thetas[0] - thetas[1])).sum()), float((g2 * (thetas[1] - thetas[0])).sum())
    assert f1 - f2 <= bound12 + 1e-12 and f2 - f1 <= bound21 + 1e-12
    assert max(bound12, bound21) < 1e-5
    assert abs(zero.objective - rand.objective) < 1e-6
    # the fitted module evaluates to the programme's objective (layout of A and b consistent), in float32
    assert ccnn_objective(zero.model, x, y) == pytest.approx(zero.objective, rel=1e-5)
    # the random start really started elsewhere
    assert rand.history[0, 1] > zero.history[0, 1] + 0.1


def test_objective_is_convex_along_the_line_between_solutions(two_solutions: tuple) -> None:
    """F((1 − t) θ_A + t θ_B) has non-negative second differences, also beyond [0, 1] (t ∈ [−1, 2])."""
    model, x, y, zero, rand = two_solutions
    g = torch.Generator().manual_seed(6)  # a second end away from the optimum (random, not a constant logit shift)
    wa, wb = zero.model.weight.double(), rand.model.weight.double() + torch.randn(rand.model.weight.shape, generator=g,
                                                                                 dtype=torch.float64)
    ba, bb = zero.model.bias.double(), rand.model.bias.double() + torch.randn(10, generator=g, dtype=torch.float64)
    z = model.feature_matrix(x).double()
    ts = torch.linspace(-1, 2, 31, dtype=torch.float64)
    values = torch.stack([F.cross_entropy(logits_from_features(z, (1 - t) * wa + t * wb, (1 - t) * ba + t * bb), y)
                          for t in ts])
    second = values[2:] - 2 * values[1:-1] + values[:-2]
    assert float(second.min()) >= -1e-12
    assert float(second.max()) > 1e-6  # strictly curved somewhere: the check can fail


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(UserInputError):
        NuclearSpec(radius=0)
    with pytest.raises(UserInputError):
        NuclearSpec(init="ones")
    with pytest.raises(UserInputError):
        PatchSpec(size=0)
    with pytest.raises(UserInputError):
        project_simplex_ball(torch.ones(3), -1.0)
