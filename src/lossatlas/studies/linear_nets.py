"""Deep linear networks: the closed forms and the batched runs behind the ``deep-linear`` study.

* Kawaguchi 2016 / the lecture notes: the scalar chain L(w) = (1 − w_1 ⋯ w_H)² and its Hessians;
* Baldi & Hornik 1989: the global minimum of ‖Y − W_H ⋯ W_1 X‖² is least squares, or — through a
  bottleneck of width r — reduced-rank regression (:func:`closed_form_minimum`);
* the plateau of GD from a small balanced start and its gradient-flow time (:func:`plateau_steps`);
* Hardt & Ma 2016: linear residual nets (I + W_H) ⋯ (I + W_1), the global minimum W_k = R^{1/H} − I
  (:func:`hardt_ma_construction`) and GD from W = 0 (:func:`hardt_ma_descent`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.linalg
import torch
from torch import Tensor

from lossatlas.studies.batched import batched_descent, model_loss, zoo_runs


def chain_loss(w: Tensor) -> Tensor:
    """The notes' deep linear net on one sample x = ŷ = 1: L(w) = (1 − w_1 w_2 ⋯ w_H)²."""
    return (1 - torch.prod(w)) ** 2


def chain_hessian_eigenvalues(depth: int, point: str, k: float) -> list[float]:
    """The exact spectrum at the notes' points: H at 0 is {2} (H = 1), {±2} (H = 2), all zeros (H ≥ 3); at
    (0, 0, k) (H = 3) it is {−2k, 0, 2k}, ascending."""
    if point == "0":
        return {1: [2.0], 2: [-2.0, 2.0]}.get(depth, [0.0] * depth)
    if depth != 3:
        raise ValueError("the point (0, 0, k) is the notes' H = 3 example")
    return sorted([-2.0 * k, 0.0, 2.0 * k])


# -- Baldi & Hornik: the global minimum --------------------------------------------------------------------
def regression_problem(d_in: int, d_out: int, samples: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """``X (N, d_in)`` Gaussian and ``Y = X Aᵀ + noise · E`` with a Gaussian ``A (d_out, d_in)``, float64."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(samples, d_in, generator=g, dtype=torch.float64)
    a = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return x, x @ a.T + noise * torch.randn(samples, d_out, generator=g, dtype=torch.float64)


def closed_form_minimum(x: Tensor, y: Tensor, rank: int) -> tuple[Tensor, float]:
    """``(M*, L*)``: the minimiser of L(M) = (1/N) Σ_n ‖y_n − M x_n‖² over matrices of rank ≤ ``rank`` and its
    value. Full rank: least squares M = Yᵀ X (XᵀX)⁻¹. Otherwise reduced-rank regression (Baldi & Hornik
    1989): M* = U_r U_rᵀ M_ls with U_r the top-r left singular vectors of the fitted values M_ls Xᵀ."""
    m_ls = torch.linalg.solve(x.T @ x, x.T @ y).T
    if rank < min(m_ls.shape):
        u, _, _ = torch.linalg.svd(m_ls @ x.T, full_matrices=False)
        m_ls = u[:, :rank] @ u[:, :rank].T @ m_ls
    residual = y - x @ m_ls.T
    return m_ls, float((residual**2).sum(1).mean())


def product(theta: dict[str, Tensor]) -> Tensor:
    """W_H ⋯ W_1 of a zoo ``linear`` net's (run-stacked) weights ``layers.i.weight``."""
    names = sorted(theta, key=lambda n: int(n.split(".")[1]))
    out = theta[names[0]]
    for name in names[1:]:
        out = theta[name] @ out
    return out


@dataclass(frozen=True)
class LinearRuns:
    """Per run: the end-to-end matrix error ‖W_H⋯W_1 − M*‖_max, L − L*, ‖∇L‖ and steps."""

    product_error: np.ndarray
    loss_gap: np.ndarray
    grad_norm: np.ndarray
    steps: np.ndarray


def linear_runs(sizes: tuple[int, ...], runs: int, *, samples: int, noise: float, lr: float, max_steps: int,
                grad_tol: float, seed: int) -> LinearRuns:
    """GD on the zoo ``linear`` net ``sizes = (d_in, hidden..., d_out)`` from its default initialisation,
    ``runs`` seeds batched, against the closed-form minimum of the same data."""
    x, y = regression_problem(sizes[0], sizes[-1], samples, noise, seed)
    spec = "zoo:linear" + (":widths=" + "-".join(map(str, sizes[1:-1])) if len(sizes) > 2 else "")
    model, theta = zoo_runs(spec, [seed + 1 + i for i in range(runs)], input_shape=(sizes[0],), output_dim=sizes[-1])
    loss = model_loss(model, x, y, lambda out, t: ((out - t) ** 2).sum(1))
    end = batched_descent(loss, theta, optimizer="gd", lr=lr, steps=max_steps, grad_tol=grad_tol)
    target, best = closed_form_minimum(x, y, min(sizes))
    error = (product(end.theta) - target).abs().flatten(1).max(1).values
    return LinearRuns(error.numpy(), (end.loss - best).numpy(), end.grad_norm.numpy(), end.steps.numpy())


# -- the plateau --------------------------------------------------------------------------------------------
def plateau_steps(depths: tuple[int, ...], u0: float, lr: float, max_steps: int) -> np.ndarray:
    """GD on (1 − w_1 ⋯ w_H)² from w_i = u0 for each depth H (weights, batched with padding): the first step
    at which the loss is at most half its start (−1 if never within ``max_steps``)."""
    h_max = max(depths)
    mask = torch.arange(h_max)[None, :] < torch.tensor(depths)[:, None]
    w = torch.where(mask, torch.full(mask.shape, float(u0), dtype=torch.float64), torch.ones(mask.shape,
                                                                                              dtype=torch.float64))
    start = (1 - w.prod(1)) ** 2
    found = np.full(len(depths), -1, dtype=np.int64)
    for t in range(max_steps + 1):
        p = w.prod(1)
        hit = ((1 - p) ** 2 <= start / 2).numpy() & (found < 0)
        found[hit] = t
        if (found >= 0).all():
            break
        ones = torch.ones_like(w[:, :1])
        left = torch.cumprod(torch.cat([ones, w[:, :-1]], 1), 1)
        right = torch.cumprod(torch.cat([ones, w.flip(1)[:, :-1]], 1), 1).flip(1)
        grad = -2 * (1 - p)[:, None] * left * right  # ∂L/∂w_i = −2(1 − P) Π_{j≠i} w_j
        w = w - lr * grad * mask
    return found


def plateau_flow_steps(depth: int, u0: float, lr: float) -> float:
    """Gradient-flow prediction of :func:`plateau_steps`: balanced weights follow du/dt = 2 lr (1 − u^H) u^{H−1},
    so the time to halve the loss is ∫_{u0}^{u½} du / (2 lr (1 − u^H) u^{H−1}) with (1 − u½^H)² = (1 − u0^H)²/2."""
    target = (1 - (1 - u0**depth) / math.sqrt(2)) ** (1 / depth)
    value, _ = scipy.integrate.quad(lambda u: 1 / (2 * lr * (1 - u**depth) * u ** (depth - 1)), u0, target,
                                    limit=200)
    return float(value)


# -- Hardt & Ma: linear residual networks ---------------------------------------------------------------------
def residual_target(dim: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, R = exp(A))``: a target map R with principal logarithm A = scale · G / √dim, G Gaussian."""
    rng = np.random.default_rng(seed)
    a = scale * rng.standard_normal((dim, dim)) / math.sqrt(dim)
    return a, scipy.linalg.expm(a)


def hardt_ma_construction(a: np.ndarray, depth: int) -> np.ndarray:
    """Hardt & Ma's global minimum: W_k = R^{1/H} − I = exp(A/H) − I for every layer, ``(H, d, d)``."""
    layer = scipy.linalg.expm(a / depth) - np.eye(a.shape[0])
    return np.repeat(layer[None], depth, axis=0)


def residual_product(w: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """(I + W_H) ⋯ (I + W_1) for layers ``w (H, d, d)`` (numpy or torch, optionally run-stacked)."""
    eye = np.eye(w.shape[-1]) if isinstance(w, np.ndarray) else torch.eye(w.shape[-1], dtype=w.dtype)
    out = eye + w[..., 0, :, :]
    for k in range(1, w.shape[-3]):
        out = (eye + w[..., k, :, :]) @ out
    return out


def residual_population_loss(w: Tensor, r: Tensor) -> Tensor:
    """E‖y − (I + W_H)⋯(I + W_1) x‖² with x ~ N(0, I), y = R x + ξ, ξ ~ N(0, I): ‖R − Π‖_F² + d."""
    return ((r - residual_product(w)) ** 2).sum() + r.shape[-1]


def hardt_ma_descent(targets: Tensor, depth: int, lr: float, max_steps: int,
                     grad_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GD from W = 0 on each target R (``targets (runs, d, d)``, batched): per run the largest spectral norm
    max_k ‖W_k‖₂ met along the path, the final ‖Π − R‖_max and the steps taken."""
    runs, dim = targets.shape[0], targets.shape[-1]
    theta = {"w": torch.zeros(runs, depth, dim, dim, dtype=torch.float64), "r": targets.clone()}
    path_max = torch.zeros(runs, dtype=torch.float64)

    def monitor(t: int, th: dict[str, Tensor]) -> None:
        norms = torch.linalg.matrix_norm(th["w"], ord=2).max(dim=1).values
        torch.maximum(path_max, norms, out=path_max)

    def loss(th: dict[str, Tensor]) -> Tensor:  # the target rides along per run; detached, it never moves
        return residual_population_loss(th["w"], th["r"].detach())

    end = batched_descent(loss, theta, lr=lr, steps=max_steps, grad_tol=grad_tol, monitor=monitor)
    error = torch.as_tensor(residual_product(end.theta["w"]) - targets).abs().flatten(1).max(1).values
    return path_max.numpy(), error.numpy(), end.steps.numpy()


__all__ = ["LinearRuns", "chain_hessian_eigenvalues", "chain_loss", "closed_form_minimum", "hardt_ma_construction",
           "hardt_ma_descent", "linear_runs", "plateau_flow_steps", "plateau_steps", "product", "regression_problem",
           "residual_population_loss", "residual_product", "residual_target"]
