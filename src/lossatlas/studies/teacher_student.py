"""The Gaussian teacher-student population loss of one-hidden-layer ReLU nets, in closed form and batched.

Safran & Shamir 2018 ("Spurious local minima are common in two-layer ReLU neural networks", ICML, Eq. 1,
with the factor ½), Tian 2017 (k = n = 1) and Wu et al. 2018 (k = n = 2) study, for a student of n ReLU units
w_i ∈ R^d and a teacher of k orthonormal units v_j (v_j = e_j; Safran & Shamir's studies use d = k):

    F(W) = ½ E_{x~N(0,I_d)} [ (Σ_i relu(w_iᵀx) − Σ_j relu(v_jᵀx))² ]
         = ½ Σ_{i,i'} f(w_i, w_i') − Σ_{i,j} f(w_i, v_j) + ½ Σ_{j,j'} f(v_j, v_j'),

with the arc-cosine kernel (Cho & Saul 2009) f(w, u) = E[relu(wᵀx) relu(uᵀx)]
= ‖w‖‖u‖ (sin θ + (π − θ) cos θ) / 2π, θ = ∠(w, u); f(w, w) = ‖w‖²/2. Its gradient
(Brutzkus & Globerson 2017; Safran & Shamir, Sec. 3) is ∇_{w_i} F = Σ_{i'} g(w_i, w_i') − Σ_j g(w_i, v_j) with
g(w, u) = (‖u‖ sin θ · w/‖w‖ + (π − θ) u) / 2π.

Everything is batched over runs: ``W`` is ``(R, n, d)``, one slice per run, and :func:`gradient_descent`
advances all unfinished runs with one set of tensor operations (:func:`gradient_descent_loop` is the plain
per-run reference the benchmark and the tests compare it with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossatlas.curvature.hvp import FunctionHessian

TWO_PI = 2 * math.pi


def teacher(k: int, d: int | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """The k orthonormal teacher units v_j = e_j in R^d (d ≥ k, default k), as rows ``(k, d)``."""
    return torch.eye(k, d or k, dtype=dtype)


def arccos_kernel(a: Tensor, b: Tensor) -> Tensor:
    """f(a_i, b_j) = E_{x~N(0,I)}[relu(a_iᵀx) relu(b_jᵀx)] for rows ``a (..., p, d)``, ``b (..., q, d)``
    → ``(..., p, q)`` (values only: parallel rows use the clamped angle)."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    norms = na[..., :, None] * nb[..., None, :]
    cos = ((a @ b.transpose(-1, -2)) / norms).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    return norms * ((1 - cos * cos).clamp_min(0).sqrt() + (math.pi - theta) * cos) / TWO_PI


def population_loss(w: Tensor, v: Tensor) -> Tensor:
    """F(W) of one student ``w (n, d)`` against teacher ``v (k, d)``, differentiable twice.

    The diagonal f(w_i, w_i) = ‖w_i‖²/2 is written in closed form and the arc-cosine of the diagonal is never
    taken, so autograd Hessians stay finite (the kernel is not twice differentiable at θ = 0).
    """
    n = w.shape[0]
    nw = w.norm(dim=-1)
    cos = (w @ w.T) / (nw[:, None] * nw[None, :])
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=w.device), diagonal=1)
    cos = torch.where(upper, cos.clamp(-1.0, 1.0), torch.zeros_like(cos))
    theta = torch.arccos(cos)
    pairs = nw[:, None] * nw[None, :] * ((1 - cos * cos).sqrt() + (math.pi - theta) * cos) / TWO_PI
    ww = 0.5 * (nw * nw).sum() / 2 + (pairs * upper).sum()
    return ww - arccos_kernel(w, v).sum() + 0.5 * arccos_kernel(v, v).sum()


class Objective:
    """F and ∇F for students of ``n`` units against the teacher ``v (k, d)``, constants computed once.

    ``objective(w)`` for ``w (R, n, d)`` returns ``(F (R,), ∇F (R, n, d))`` in closed form, in one pass over
    the rows b of B = [W; V]. With m_ib = −cos θ_ib, π − θ_ib = arccos(m_ib) and sin θ_ib = √(1 − m_ib²):

        F = Σ_i ‖w_i‖ Σ_b c_b ‖b‖ (sin θ_ib − (π − θ_ib) m_ib) / 2π + ½ Σ f(v, v),  c = ½ on W, −1 on V;
        ∇_{w_i} F = (ŵ_i Σ_b e_b ‖b‖ sin θ_ib + Σ_b (π − θ_ib) e_b b) / 2π,          e = 1 on W, −1 on V.

    Every sum over b is a batched matrix product, so only a handful of operations touch the
    ``(R, n, n + k)`` angle arrays.
    """

    def __init__(self, v: Tensor, n: int) -> None:
        k = v.shape[0]
        self.v, self.n = v, n
        self.sign = torch.cat([torch.ones(n, dtype=v.dtype), -torch.ones(k, dtype=v.dtype)])
        self.half = torch.cat([torch.full((n,), 0.5, dtype=v.dtype), -torch.ones(k, dtype=v.dtype)]) / TWO_PI
        self.const = 0.5 * arccos_kernel(v, v).sum()

    def __call__(self, w: Tensor) -> tuple[Tensor, Tensor]:
        b = torch.cat([w, self.v.expand(w.shape[0], *self.v.shape)], dim=1)  # (R, n + k, d)
        nw, nb = torch.linalg.vector_norm(w, dim=2), torch.linalg.vector_norm(b, dim=2)
        unit_w = w / nw[:, :, None]
        m = torch.bmm(unit_w, (b / -nb[:, :, None]).transpose(1, 2)).clamp_(-1.0, 1.0)  # −cos θ
        outside = torch.arccos(m)  # π − θ
        sin = torch.addcmul(torch.ones_like(m), m, m, value=-1.0).clamp_min_(0.0).sqrt_()
        term = torch.addcmul(sin, outside, m, value=-1.0)  # sin θ + (π − θ) cos θ
        loss = (torch.bmm(term, (nb * self.half)[:, :, None])[:, :, 0] * nw).sum(1) + self.const
        radial = torch.bmm(sin, (nb * self.sign)[:, :, None]) * unit_w
        grad = (radial + torch.bmm(outside, b * self.sign[:, None])) / TWO_PI
        return loss, grad


def loss_and_gradient(w: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(F (R,), ∇F (R, n, d))`` for a batch of students ``w (R, n, d)`` (see :class:`Objective`)."""
    return Objective(v, w.shape[1])(w)


@dataclass(frozen=True)
class Descent:
    """The end of every run of :func:`gradient_descent`: arrays over runs ``(R,)`` and the final ``w``.

    ``stop`` says why a run ended: 0 ‖∇F‖ ≤ grad_tol, 1 F ≤ stop_below (early stop), 2 step cap.
    ``max_increase`` is the largest F_{t+1} − F_t seen (≤ 0 up to rounding: GD was monotone).
    """

    w: Tensor
    objective: np.ndarray
    grad_norm: np.ndarray
    steps: np.ndarray
    stop: np.ndarray
    max_increase: np.ndarray


class _Batch:
    """The stacked state of :func:`gradient_descent`'s unfinished runs and :class:`Objective`'s arithmetic on
    it, into buffers allocated once.

    The runs still going sit, in their original order, at the front of a ``(R, n + k, d)`` state
    ``[W; V]`` (the last k rows of each run are the teacher), and every buffer is used through its
    contiguous prefix of ``live`` runs; :meth:`keep` compacts the state when runs finish. Each step performs
    the operations of ``Objective.__call__``, in the same order, on operands of the same shapes and layouts,
    so each value is the same bits; what it saves is the allocation of some twenty ``(r, n, n + k)``
    temporaries per step, the concatenation ``[W; V]`` and the second row norm (‖w_i‖ is read from the row
    norms of ``[W; V]``: the same reductions of the same rows).
    """

    def __init__(self, objective: Objective, w0: Tensor) -> None:
        r, n, d = w0.shape
        k, dtype = objective.v.shape[0], w0.dtype

        def empty(*shape: int) -> Tensor:
            return torch.empty(r, *shape, dtype=dtype)

        self.objective, self.n, self.sign_col = objective, n, objective.sign[:, None]
        self.state = torch.cat([w0, objective.v.expand(r, *objective.v.shape)], dim=1)
        self._nb, self._nb_neg, self._col = empty(n + k), empty(n + k), empty(n + k, 1)
        self._unit_w, self._unit_b, self._signed_b = empty(n, d), empty(n + k, d), empty(n + k, d)
        self._m, self._outside, self._sin, self._term = (empty(n, n + k) for _ in range(4))
        self._ones = torch.ones((), dtype=dtype).expand(r, n, n + k)  # one element, read as a broadcast
        self._loss_col, self._loss_row, self._radial_col = empty(n, 1), empty(n), empty(n, 1)
        self._radial, self._grad, self._update = empty(n, d), empty(n, d), empty(n, d)
        self._losses = (empty(), torch.full((r,), math.inf, dtype=dtype))  # F of even / odd steps; F_{-1} = ∞
        self._worst, self._rise, self._gnorm = torch.full((r,), -math.inf, dtype=dtype), empty(), empty()
        self.live = r
        self._views()

    def _views(self) -> None:
        """Every buffer's prefix of ``live`` runs (rebuilt only when the batch shrinks)."""
        r, n = self.live, self.n
        self.b = self.state[:r]
        self.w = self.b[:, :n]
        self.nb, self.nb_neg, self.col = self._nb[:r], self._nb_neg[:r], self._col[:r]
        self.nw = self.nb[:, :n]
        self.nw_col, self.nb_neg_col, self.col_row = self.nw[:, :, None], self.nb_neg[:, :, None], self.col[:, :, 0]
        self.unit_w, self.unit_b, self.signed_b = self._unit_w[:r], self._unit_b[:r], self._signed_b[:r]
        self.m, self.outside, self.sin, self.term = self._m[:r], self._outside[:r], self._sin[:r], self._term[:r]
        self.unit_b_t = self.unit_b.transpose(1, 2)
        self.ones, self.loss_col, self.loss_row = self._ones[:r], self._loss_col[:r], self._loss_row[:r]
        self.loss_col_row = self.loss_col[:, :, 0]
        self.radial_col, self.radial, self.grad, self.update = (self._radial_col[:r], self._radial[:r],
                                                                self._grad[:r], self._update[:r])
        self.losses = (self._losses[0][:r], self._losses[1][:r])
        self.worst, self.rise, self.gnorm = self._worst[:r], self._rise[:r], self._gnorm[:r]

    def evaluate(self, parity: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(F, ‖∇F‖, ∇F)`` of the live runs, and ``worst`` ← max(worst, F − F_previous). F goes to the loss
        buffer ``parity`` (the step number mod 2): the other one holds the previous step's F."""
        objective, nb, col = self.objective, self.nb, self.col
        torch.linalg.vector_norm(self.b, dim=2, out=nb)
        unit_w = torch.div(self.w, self.nw_col, out=self.unit_w)
        torch.neg(nb, out=self.nb_neg)
        torch.div(self.b, self.nb_neg_col, out=self.unit_b)
        m = torch.bmm(unit_w, self.unit_b_t, out=self.m).clamp_(-1.0, 1.0)  # −cos θ
        outside = torch.arccos(m, out=self.outside)  # π − θ
        sin = torch.addcmul(self.ones, m, m, value=-1.0, out=self.sin).clamp_min_(0.0).sqrt_()
        term = torch.addcmul(sin, outside, m, value=-1.0, out=self.term)
        torch.mul(nb, objective.half, out=self.col_row)
        torch.bmm(term, col, out=self.loss_col)
        loss_row = torch.mul(self.loss_col_row, self.nw, out=self.loss_row)
        loss = torch.sum(loss_row, 1, out=self.losses[parity]).add_(objective.const)
        torch.mul(nb, objective.sign, out=self.col_row)
        radial = torch.mul(torch.bmm(sin, col, out=self.radial_col), unit_w, out=self.radial)
        signed_b = torch.mul(self.b, self.sign_col, out=self.signed_b)
        grad = torch.bmm(outside, signed_b, out=self.grad)
        grad = torch.add(radial, grad, out=grad).div_(TWO_PI)
        gnorm = torch.linalg.vector_norm(grad, dim=(1, 2), out=self.gnorm)
        torch.maximum(self.worst, torch.sub(loss, self.losses[1 - parity], out=self.rise), out=self.worst)
        return loss, gnorm, grad

    def descend(self, step: float) -> None:
        """w ← w − step ∇F for the live runs (∇F of the last :meth:`evaluate`)."""
        self.w.sub_(torch.mul(self.grad, step, out=self.update))

    def keep(self, keep: Tensor, parity: int) -> None:
        """Keep only the live runs where ``keep`` is true (in order): state, worst rise, last F and ∇F."""
        live = int(keep.sum())
        for full, view in ((self.state, self.b), (self._worst, self.worst), (self._losses[parity], self.losses[parity]),
                           (self._grad, self.grad)):
            full[:live] = view[keep]
        self.live = live
        self._views()


def gradient_descent(w0: Tensor, v: Tensor, step: float, *, grad_tol: float = 1e-9, max_steps: int = 200_000,
                     stop_below: float | None = None) -> Descent:
    """Plain gradient descent w ← w − step ∇F(w) on every run of ``w0 (R, n, d)`` at once.

    A run stops at the first iterate with ‖∇F‖ ≤ ``grad_tol`` (Safran & Shamir's criterion), or with
    F ≤ ``stop_below`` (when given), or after ``max_steps`` steps. Finished runs leave the batch at the step
    they finish: the unfinished ones are moved to the front of the stacked state (order kept), so every
    later step costs only the arithmetic of the runs still going. Each run follows exactly the iterates it
    would follow alone (:func:`gradient_descent_loop`), bit for bit: every operation acts on each run's own
    slice (elementwise, a reduction over the run's own rows, or one matrix product per run), whatever the
    batch around it.
    """
    r, n, _ = w0.shape
    batch = _Batch(Objective(v, n), w0)
    out_w = w0.clone()
    objective, grad_norm = np.full(r, np.nan), np.full(r, np.nan)
    steps, stop = np.zeros(r, dtype=np.int64), np.full(r, 2, dtype=np.int64)
    max_increase = np.full(r, -np.inf)
    active = torch.arange(r)
    for t in range(max_steps + 1):
        loss, gnorm, _ = batch.evaluate(t % 2)
        converged = gnorm <= grad_tol
        finished = converged
        below = None
        if stop_below is not None:
            below = loss <= stop_below
            finished = converged | below
        if t == max_steps or bool(finished.any()):
            if t == max_steps:
                finished = torch.ones_like(finished)
            reason = torch.where(converged, 0, 2 if below is None else torch.where(below, 1, 2))
            idx = active[finished].numpy()
            out_w[idx] = batch.w[finished]
            objective[idx], grad_norm[idx] = loss[finished].numpy(), gnorm[finished].numpy()
            steps[idx], stop[idx] = t, reason[finished].numpy()
            max_increase[idx] = batch.worst[finished].numpy()
            keep = ~finished
            active = active[keep]
            if active.numel() == 0:
                break
            batch.keep(keep, t % 2)
        batch.descend(step)
    return Descent(out_w, objective, grad_norm, steps, stop, max_increase)


def gradient_descent_loop(w0: Tensor, v: Tensor, step: float, *, grad_tol: float = 1e-9,
                          max_steps: int = 200_000, stop_below: float | None = None) -> Descent:
    """The same descent one run at a time, in a plain Python loop (the reference for the batched one)."""
    objective_fn = Objective(v, w0.shape[1])
    parts = []
    for i in range(w0.shape[0]):
        w = w0[i:i + 1].clone()
        previous, worst, reason, t = math.inf, -math.inf, 2, 0
        for t in range(max_steps + 1):  # noqa: B007 - t is the step count at exit
            loss, grad = objective_fn(w)
            value, gnorm = float(loss[0]), float(torch.linalg.vector_norm(grad, dim=(1, 2))[0])
            rise = value - previous  # NaN, once F is NaN, stays (as torch.maximum in the batched runner)
            worst = math.nan if math.isnan(worst) or math.isnan(rise) else max(worst, rise)
            if gnorm <= grad_tol:
                reason = 0
                break
            if stop_below is not None and value <= stop_below:
                reason = 1
                break
            if t == max_steps:
                break
            previous = value
            w = w - step * grad
        parts.append((w, value, gnorm, t, reason, worst))
    return Descent(torch.cat([p[0] for p in parts]), np.array([p[1] for p in parts]),
                   np.array([p[2] for p in parts]), np.array([p[3] for p in parts], dtype=np.int64),
                   np.array([p[4] for p in parts], dtype=np.int64), np.array([p[5] for p in parts]))


def hessian_eigenvalues(w: Tensor, v: Tensor) -> Tensor:
    """All eigenvalues (ascending) of the dense float64 Hessian of F at one student ``w (n, d)``
    (:class:`lossatlas.curvature.FunctionHessian` of :func:`population_loss`)."""
    op = FunctionHessian(lambda th: population_loss(th["w"], v.to(torch.float64)), {"w": w})
    return torch.linalg.eigvalsh(op.dense(chunk=64))


def initial_students(runs: int, n: int, d: int, k: int, seed: int, var_scale: float = 1.0) -> Tensor:
    """``(runs, n, d)`` students with entries i.i.d. N(0, var_scale / k), float64, from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(runs, n, d, generator=g, dtype=torch.float64) * math.sqrt(var_scale / k)


__all__ = ["Descent", "Objective", "arccos_kernel", "gradient_descent", "gradient_descent_loop", "hessian_eigenvalues",
           "initial_students", "loss_and_gradient", "population_loss", "teacher"]
