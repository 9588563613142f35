"""The convex programme of the convexified CNN: projected gradient on a nuclear-norm ball.

Zhang, Liang & Wainwright 2017 ("Convexified Convolutional Neural Networks", Sec. 3.2, Alg. 1) learn

    min_{A, b}  F(A, b) = (1/N) Σ_i ℓ(f(x_i; A, b), y_i)   subject to  ‖A‖_* ≤ R,

f the :class:`lossatlas.models.ccnn.CCNN` predictor (linear in A and b) and ℓ the multiclass logistic loss:
a convex objective over a convex set, so every local minimum is global and every start reaches the same optimal
value. They use projected SGD; here the programme is solved by full-batch accelerated projected gradient
(FISTA, Beck & Teboulle 2009) with the constant step 1/𝓛, 𝓛 = ½ σ_max(X)² / N (the softmax loss has Hessian
≼ ½ I in the logits and X = [vec Z(x_i), 1] is the design matrix of every class), in float64.

Projection onto {‖A‖_* ≤ R} (:func:`project_nuclear_ball`): A = U diag(s) Vᵀ ↦ U diag(Π(s)) Vᵀ with Π the
Euclidean projection of the singular values onto {s ≥ 0, Σ s ≤ R} (Duchi et al. 2008, sort-based).

Certificate: the Frank–Wolfe gap g = ⟨∇_A F, A⟩ + R σ_max(∇_A F) ≥ F(A, b) − min_{‖A'‖_* ≤ R} F(A', b); with
‖∇_b F‖ → 0 at the end it bounds the distance to the optimal value (Jaggi 2013).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from lossatlas.errors import UserInputError
from lossatlas.models.ccnn import CCNN, logits_from_features


def project_simplex_ball(s: Tensor, radius: float) -> Tensor:
    """Euclidean projection of a vector ``s`` onto {v ≥ 0, Σ v ≤ radius} (Duchi et al. 2008, Fig. 1).

    max(s − τ, 0) with the smallest τ ≥ 0 such that the sum is at most ``radius``.
    """
    if radius < 0:
        raise UserInputError(f"the nuclear-norm radius must be >= 0, got {radius}")
    v = s.clamp_min(0)
    if float(v.sum()) <= radius:
        return v
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, 0)
    k = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    rho = int(torch.nonzero(u * k > cumulative - radius).max())
    tau = (cumulative[rho] - radius) / (rho + 1)
    return (v - tau).clamp_min(0)


def project_nuclear_ball(a: Tensor, radius: float) -> Tensor:
    """Euclidean (Frobenius) projection of a matrix onto {‖A‖_* ≤ radius}: shrink its singular values."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return (u * project_simplex_ball(s, radius)) @ vh


def nuclear_norm(a: Tensor) -> float:
    """‖A‖_* = Σ singular values."""
    return float(torch.linalg.svdvals(a.double()).sum())


@dataclass(frozen=True)
class NuclearSpec:
    """Settings of the CCNN programme.

    Attributes:
        radius: R of ‖A‖_* ≤ R.
        iterations: most FISTA iterations.
        tol: stop when the gradient mapping ‖𝓛 (θ − θ⁺)‖ falls below ``tol``.
        init: ``zero`` (A = 0, b = 0) or ``random`` (Gaussian A scaled to ‖A‖_* = R, Gaussian b).
        init_seed: seed of the ``random`` start.
        record_every: F at the iterate is recorded every this many iterations (and at the end).
        gap_tol: stop once the Frank–Wolfe gap at the iterate is ≤ ``gap_tol`` (checked every ``record_every``
            iterations, where F is recorded): the solve is then certified to within ``gap_tol``; 0 never stops on it.
    """

    radius: float = 10.0
    iterations: int = 500
    tol: float = 1e-6
    init: str = "zero"
    init_seed: int = 0
    record_every: int = 10
    gap_tol: float = 0.0

    def __post_init__(self) -> None:
        if not self.radius > 0 or self.iterations < 1 or not self.tol >= 0 or self.record_every < 1 \
                or not self.gap_tol >= 0:
            raise UserInputError(f"the CCNN programme needs radius > 0, iterations >= 1 and tol >= 0, got "
                                 f"radius={self.radius}, iterations={self.iterations}, tol={self.tol}")
        if self.init not in ("zero", "random"):
            raise UserInputError(f"init must be zero or random, got '{self.init}'")


@dataclass(frozen=True)
class NuclearFit:
    """What :func:`fit_ccnn` returns: the fitted model and its certificate.

    Attributes:
        model: a copy of the CCNN with ``weight`` = A and ``bias`` = b (float32).
        objective: F(A, b) at the end (float64).
        history: (iteration, F at the iterate) pairs, every ``record_every`` iterations and at the end (n, 2).
        fw_gap: the Frank–Wolfe gap in A at the end (bounds F − F*_b, see the module docstring).
        bias_grad_norm: ‖∇_b F‖ at the end.
        grad_mapping: the last gradient-mapping norm.
        lipschitz: 𝓛 used for the step 1/𝓛.
        nuclear_norm: ‖A‖_* at the end.
        iterations: iterations run.
    """

    model: CCNN
    objective: float
    history: np.ndarray
    fw_gap: float
    bias_grad_norm: float
    grad_mapping: float
    lipschitz: float
    nuclear_norm: float
    iterations: int


def design_matrix(z: Tensor) -> Tensor:
    """X = [vec Z(x_i), 1]: features (N, P, m) → (N, P·m + 1), row i = (Z(x_i)[0, :], …, Z(x_i)[P−1, :], 1)."""
    return torch.cat([z.reshape(z.shape[0], -1), torch.ones(z.shape[0], 1, dtype=z.dtype)], 1)


def _to_matrix(theta: Tensor, m: int, positions: int) -> tuple[Tensor, Tensor]:
    """θ (P·m + 1, K) → (A (m, K·P) with A[j, k·P + p] = θ[p·m + j, k], b (K,))."""
    k = theta.shape[1]
    a = theta[:-1].reshape(positions, m, k).permute(1, 2, 0).reshape(m, k * positions)
    return a, theta[-1]


def _to_theta(a: Tensor, b: Tensor, positions: int) -> Tensor:
    m = a.shape[0]
    k = b.shape[0]
    return torch.cat([a.reshape(m, k, positions).permute(2, 0, 1).reshape(positions * m, k), b[None]], 0)


def _value_grad(x: Tensor, xt: Tensor, y: Tensor, theta: Tensor) -> tuple[float, Tensor]:
    """F(θ) = mean cross-entropy of logits Xθ and its gradient Xᵀ(softmax(Xθ) − onehot(y)) / N (``xt`` = Xᵀ)."""
    logits = x @ theta
    value = float(F.cross_entropy(logits, y))
    residual = torch.softmax(logits, 1)
    residual[torch.arange(y.shape[0]), y] -= 1
    return value, xt @ residual / y.shape[0]


def lipschitz_constant(x: Tensor, iterations: int = 100) -> float:
    """𝓛 = ½ σ_max(X)² / N by power iteration on XᵀX (×1.01 for the iteration's shortfall)."""
    v = torch.ones(x.shape[1], dtype=x.dtype) / math.sqrt(x.shape[1])
    sigma2 = 0.0
    for _ in range(iterations):
        w = x.T @ (x @ v)
        sigma2 = float(w.norm())
        v = w / sigma2
    return 1.01 * 0.5 * sigma2 / x.shape[0]


def _fw_gap(theta: Tensor, grad: Tensor, m: int, positions: int, radius: float) -> float:
    """⟨∇_A F, A⟩ + R σ_max(∇_A F): the Frank–Wolfe gap in A (the module docstring)."""
    a, ga = _to_matrix(theta, m, positions)[0], _to_matrix(grad, m, positions)[0]
    return float((ga * a).sum()) + radius * float(torch.linalg.matrix_norm(ga, ord=2))


def ccnn_objective(model: CCNN, x: Tensor, y: Tensor) -> float:
    """F(A, b) of a CCNN on inputs ``x`` and labels ``y``, in float64."""
    with torch.no_grad():
        z = model.feature_matrix(x).double()
        return float(F.cross_entropy(logits_from_features(z, model.weight.double(), model.bias.double()), y))


def _start(model: CCNN, spec: NuclearSpec) -> tuple[Tensor, Tensor]:
    m, cols = model.weight.shape
    if spec.init == "random":
        generator = torch.Generator().manual_seed(spec.init_seed)
        a = torch.randn(m, cols, generator=generator, dtype=torch.float64)
        return a * (spec.radius / nuclear_norm(a)), torch.randn(model.num_classes, generator=generator,
                                                                 dtype=torch.float64)
    return torch.zeros(m, cols, dtype=torch.float64), torch.zeros(model.num_classes, dtype=torch.float64)


def ccnn_start(model: CCNN, spec: NuclearSpec) -> CCNN:
    """A copy of ``model`` at the programme's starting point under ``spec`` (A = 0, or a random A with ‖A‖_* = R)."""
    a, b = _start(model, spec)
    start = copy.deepcopy(model)
    with torch.no_grad():
        start.weight.copy_(a.float())
        start.bias.copy_(b.float())
    return start


def fit_ccnn(model: CCNN, x: Tensor, y: Tensor, spec: NuclearSpec, *, features: Tensor | None = None) -> NuclearFit:
    """Solve the CCNN programme on training inputs ``x`` (N, *input_shape) and labels ``y`` (N,) int64.

    ``features`` may pass Z(x) (N, P, m) precomputed by ``model.feature_matrix(x)``. The model is not modified;
    the result holds a fitted copy. Deterministic for a given ``spec`` (``init_seed`` seeds a random start).
    """
    with torch.no_grad():
        z = (model.feature_matrix(x) if features is None else features).double()
    design = design_matrix(z)
    design_t = design.T.contiguous()
    y = y.long()
    m, cols = model.weight.shape
    positions = model.positions
    a, b = _start(model, spec)
    theta = _to_theta(a, b, positions)
    lip = lipschitz_constant(design)
    theta_prev, momentum_prev = theta, 1.0
    history = []
    mapping = math.inf
    done = 0
    for it in range(spec.iterations):
        momentum = (1 + math.sqrt(1 + 4 * momentum_prev ** 2)) / 2
        point = theta + (momentum_prev - 1) / momentum * (theta - theta_prev)
        _, grad = _value_grad(design, design_t, y, point)
        a_step, b_step = _to_matrix(point - grad / lip, m, positions)
        theta_new = _to_theta(project_nuclear_ball(a_step, spec.radius), b_step, positions)
        mapping = lip * float((point - theta_new).norm())
        theta_prev, theta, momentum_prev = theta, theta_new, momentum
        done = it + 1
        if mapping <= spec.tol:
            break
        if it % spec.record_every == 0:
            value, grad = _value_grad(design, design_t, y, theta)
            history.append((it + 1, value))
            if spec.gap_tol and _fw_gap(theta, grad, m, positions, spec.radius) <= spec.gap_tol:
                break
    value, grad = _value_grad(design, design_t, y, theta)
    history.append((done, value))
    a, b = _to_matrix(theta, m, positions)
    gb = _to_matrix(grad, m, positions)[1]
    gap = _fw_gap(theta, grad, m, positions, spec.radius)
    fitted = copy.deepcopy(model)
    with torch.no_grad():
        fitted.weight.copy_(a.float())
        fitted.bias.copy_(b.float())
    return NuclearFit(model=fitted, objective=value, history=np.asarray(history), fw_gap=gap,
                      bias_grad_norm=float(gb.norm()), grad_mapping=mapping, lipschitz=lip,
                      nuclear_norm=nuclear_norm(a), iterations=done)


__all__ = ["NuclearFit", "NuclearSpec", "ccnn_objective", "ccnn_start", "design_matrix", "fit_ccnn",
           "lipschitz_constant", "nuclear_norm", "project_nuclear_ball", "project_simplex_ball"]
