"""Certified extreme eigenpairs of a symmetric operator: thick-restart Lanczos in pure torch.

Lanczos (1950) with full reorthogonalisation (classical Gram–Schmidt applied twice, "CGS2") and thick
restarts (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue problems"): after
each cycle of ``ncv`` products the best ``p`` Ritz vectors are kept and the Krylov space is extended from
the last Lanczos vector. The projected matrix is always the full Rayleigh quotient T = Vᵀ A V, built from
the stored products W = A V, so a Ritz pair (θ, y = V s) has the *explicit* residual

    ‖A y − θ y‖ = ‖W s − θ V s‖,

computed from actual operator products, not from the recurrence estimate |β sₘ| that drifts when
orthogonality is lost (the failure behind unconverged eigenvalues in some peers). Iteration stops when
every requested pair satisfies ‖A y − θ y‖ ≤ tol · max(|θ|, ε); by Weyl's theorem an eigenvalue of A then
lies within that distance of θ. Certificates are checked after every product (from 2k + 2 steps on), so
a warm start from nearby eigenvectors stops as soon as it is good enough. Everything runs on the
operator's device; the basis is float64 by default.

Limitation shared by every single-vector Krylov method (ARPACK included): the certificate proves each
returned pair accurate, not that no eigenvalue was skipped; a repeated eigenvalue is found once per
Krylov space, and extra copies appear only after breakdowns or restarts.

A run can be stopped and continued: :class:`LanczosState` (the basis, the products, the projected matrix,
counters and the random generator) is handed to ``checkpoint`` at every consistent point (before each
product), and ``lanczos(..., state=saved)`` continues from it to exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from lossatlas.errors import UserInputError

MatVec = Callable[[Tensor], Tensor]
"""A symmetric linear map on flat ``(n,)`` vectors."""

LanczosProgress = Callable[[int, int, bool], None]
"""``progress(matvecs, certified, finished)``: products so far, pairs meeting the certificate at the last check
(of the k asked for), and whether the run has ended. There is no fixed total: a run stops when all k pairs
are certified (or at ``max_matvecs``)."""


class Which(str, Enum):
    """Which end of the spectrum to compute."""

    largest = "largest"
    """Largest algebraic eigenvalues (top-k), returned in descending order."""
    smallest = "smallest"
    """Smallest algebraic eigenvalues (most negative first), returned in ascending order."""
    magnitude = "magnitude"
    """Largest |λ|, returned by descending magnitude."""
    both = "both"
    """⌈k/2⌉ largest and ⌊k/2⌋ smallest (ARPACK's ``BE``), returned in descending order."""


@dataclass(frozen=True)
class LanczosResult:
    """Ritz pairs of a thick-restart Lanczos run.

    Attributes:
        eigenvalues: ``(k,)`` float64, ordered as :class:`Which` says.
        residuals: ``(k,)`` explicit residual norms ‖A v − λ v‖ (unit vectors v).
        converged: ``(k,)`` bool, ``residual <= tol * max(|λ|, eps)``.
        vectors: ``(k, n)`` orthonormal Ritz vectors (basis dtype).
        matvecs: operator products used.
        restarts: thick restarts performed.
        which, tol, eps: what was asked (``eps`` as finally used, absolute).
        eigenvectors: the vectors as ``{parameter name: tensor}`` dicts when ``lanczos(..., like=θ)``
            was given the parameter layout (as :meth:`HessianOperator.eigenpairs` does), else ``()``.
    """

    eigenvalues: Tensor
    residuals: Tensor
    converged: Tensor
    vectors: Tensor
    matvecs: int
    restarts: int
    which: Which
    tol: float
    eps: float
    eigenvectors: tuple[dict[str, Tensor], ...] = ()

    @property
    def all_converged(self) -> bool:
        """Whether every requested pair met the residual certificate."""
        return bool(self.converged.all())


@dataclass(frozen=True)
class LanczosState:
    """Where a thick-restart Lanczos run stands before its next product (enough to continue it exactly).

    Attributes:
        V: ``(m + 1, n)`` basis; rows ``0..j`` are valid.
        W: ``(m, n)`` stored products A V; rows ``0..j-1`` are valid.
        T: ``(m, m)`` projected matrix Vᵀ A V; the leading ``j × j`` block is valid.
        j: index of the next Lanczos vector to multiply.
        matvecs, restarts: counters so far.
        scale: largest |projection coefficient| seen (the breakdown test's scale).
        rng: state of the random generator (``torch.Generator.get_state()``).
        key: what the run computes (n, k, which, ncv, tol, eps, seed, dtype); a state only continues the same run.
    """

    V: Tensor
    W: Tensor
    T: Tensor
    j: int
    matvecs: int
    restarts: int
    scale: float
    rng: Tensor
    key: tuple[object, ...]

    def compact(self) -> LanczosState:
        """A copy holding only the valid rows (what a checkpoint needs to store), on the CPU."""
        j = self.j
        return LanczosState(V=self.V[:j + 1].cpu().clone(), W=self.W[:j].cpu().clone(),
                            T=self.T[:j, :j].cpu().clone(), j=j, matvecs=self.matvecs, restarts=self.restarts,
                            scale=self.scale, rng=self.rng.clone(), key=self.key)

    def as_dict(self) -> dict[str, object]:
        """Plain tensors and numbers (loadable with ``torch.load(weights_only=True)``); see :meth:`from_dict`."""
        c = self.compact()
        return {"V": c.V, "W": c.W, "T": c.T, "j": c.j, "matvecs": c.matvecs, "restarts": c.restarts,
                "scale": c.scale, "rng": c.rng, "key": list(c.key)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LanczosState:
        return cls(V=d["V"], W=d["W"], T=d["T"], j=int(d["j"]), matvecs=int(d["matvecs"]),
                   restarts=int(d["restarts"]), scale=float(d["scale"]), rng=d["rng"], key=tuple(d["key"]))

    def expanded(self, m: int, dtype: torch.dtype, device: torch.device) -> LanczosState:
        """Full-size working arrays (``m + 1`` basis rows) from a :meth:`compact` state."""
        n, j = self.V.shape[1], self.j
        V = torch.zeros(m + 1, n, dtype=dtype, device=device)
        W = torch.zeros(m, n, dtype=dtype, device=device)
        T = torch.zeros(m, m, dtype=dtype, device=device)
        V[:j + 1], W[:j], T[:j, :j] = self.V[:j + 1], self.W[:j], self.T[:j, :j]
        return LanczosState(V, W, T, j, self.matvecs, self.restarts, self.scale, self.rng, self.key)


def _order(theta: Tensor, which: Which, count: int) -> Tensor:
    """Indices of the ``count`` Ritz values most wanted by ``which``, most wanted first."""
    count = min(count, theta.numel())
    if which is Which.largest:
        return torch.argsort(theta, descending=True)[:count]
    if which is Which.smallest:
        return torch.argsort(theta)[:count]
    if which is Which.magnitude:
        return torch.argsort(theta.abs(), descending=True)[:count]
    top, bottom = torch.argsort(theta, descending=True).tolist(), torch.argsort(theta).tolist()
    picked: list[int] = []
    for pair in zip(top, bottom, strict=True):  # interleave: top 1, bottom 1, top 2, bottom 2, ...
        picked += [i for i in pair if i not in picked]
    return torch.tensor(picked[:count], dtype=torch.long, device=theta.device)


def _output_order(values: Tensor, which: Which) -> Tensor:
    if which is Which.smallest:
        return torch.argsort(values)
    if which is Which.magnitude:
        return torch.argsort(values.abs(), descending=True)
    return torch.argsort(values, descending=True)


def _orthogonalise(r: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """CGS2: ``r`` minus its projection on the rows of ``basis``; returns (r, coefficients)."""
    h = basis @ r
    r = r - basis.T @ h
    h2 = basis @ r
    return r - basis.T @ h2, h + h2


def _start_vector(v0: Tensor | Sequence[Tensor] | None, n: int, generator: torch.Generator,
                  dtype: torch.dtype, device: torch.device) -> Tensor:
    """The first Lanczos vector: the (normalised) sum of warm-start vectors plus a little noise, or random."""
    noise = torch.randn(n, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    if v0 is None or (not isinstance(v0, Tensor) and len(v0) == 0):
        return noise / noise.norm()
    vs = [v0] if isinstance(v0, Tensor) else list(v0)
    start = torch.zeros(n, dtype=dtype, device=device)
    for v in vs:
        v = v.reshape(-1).to(device=device, dtype=dtype)
        if v.numel() != n:
            raise UserInputError(f"a warm-start vector has {v.numel()} entries, the operator acts on {n}")
        start += v / max(float(v.norm()), 1e-300)
    start += 1e-3 * noise / math.sqrt(n) * max(float(start.norm()), 1.0)
    return start / start.norm()


def lanczos(matvec: MatVec, n: int, k: int = 1, which: Which | str = Which.largest, *, tol: float = 1e-6,
            eps: float | None = None, ncv: int | None = None, max_matvecs: int = 1000,
            v0: Tensor | Sequence[Tensor] | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: str | torch.device | None = None, progress: LanczosProgress | None = None,
            like: Mapping[str, Tensor] | None = None, state: LanczosState | None = None,
            checkpoint: Callable[[LanczosState], None] | None = None) -> LanczosResult:
    """``k`` extreme eigenpairs of the symmetric operator ``matvec`` on R^n.

    Args:
        matvec: ``v (n,) -> A v (n,)``; called with vectors of ``dtype`` (it may compute in lower precision).
        n: dimension.
        k: number of pairs; ``1 <= k <= n``.
        which: :class:`Which` end of the spectrum.
        tol: relative residual tolerance: stop when ``‖A v − λ v‖ <= tol * max(|λ|, eps)`` for all k pairs.
        eps: absolute floor of the scale in the test, for eigenvalues near zero; default
            ``1e-3 * max|θ|`` (a fraction of the largest Ritz value magnitude, a lower bound on ‖A‖).
        ncv: Krylov basis size per cycle (default ``max(2k + 1, 20)``, capped at n).
        max_matvecs: product budget; pairs still unconverged then are returned with ``converged=False``.
        v0: start vector, or several vectors (e.g. eigenvectors at a neighbouring point) to warm-start from.
        seed: seed of the random start (and of restarts after an invariant subspace is found).
        dtype, device: of the Krylov basis (float64 default; device default that of ``v0`` or CPU).
        progress: :data:`LanczosProgress`, called after every product and once more when the run ends.
        like: a parameter dict whose key order and shapes define the flat vectors; the eigenvectors are then
            also returned as dicts (``LanczosResult.eigenvectors``).
        state: a :class:`LanczosState` of this same run (from ``checkpoint``) to continue from; the result is
            then identical to that of an uninterrupted run.
        checkpoint: called with the current :class:`LanczosState` before every product (a consistent point:
            the arrays are only written beyond its valid rows until the next call). It may keep a reference
            and store ``state.compact()`` whenever it likes, e.g. after a ``KeyboardInterrupt``.

    Returns:
        :class:`LanczosResult`.
    """
    which = Which(which.value if isinstance(which, Which) else which)
    if not isinstance(k, int) or k < 1:
        raise UserInputError(f"the number of eigenvalues must be a positive integer, got {k!r}")
    if k > n:
        raise UserInputError(f"asked for {k} eigenvalues but the Hessian has only {n} parameters; use k <= {n}")
    if not tol > 0:
        raise UserInputError(f"--tol must be positive, got {tol}")
    if device is None:
        device = v0.device if isinstance(v0, Tensor) else (v0[0].device if v0 else torch.device("cpu"))
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    m = min(n, max(ncv or max(2 * k + 1, 20), k + 2))
    min_steps = min(m, max(2 * k + 2, 8))  # certificates are checked at every step from here on
    key = (n, k, which.value, m, tol, eps, seed, str(dtype))
    if state is None:
        V = torch.zeros(m + 1, n, dtype=dtype, device=device)
        V[0] = _start_vector(v0, n, generator, dtype, device)
        st = LanczosState(V, torch.zeros(m, n, dtype=dtype, device=device),
                          torch.zeros(m, m, dtype=dtype, device=device), 0, 0, 0, 0.0, generator.get_state(), key)
    else:
        if tuple(state.key) != key:
            raise ValueError(f"the saved Lanczos state belongs to another run ({state.key} != {key})")
        st = state.expanded(m, dtype, device)
        generator.set_state(st.rng)
    certified = 0
    while True:
        # a consistent point: V[:j+1], W[:j], T[:j, :j] and the counters describe the run so far
        if checkpoint:
            checkpoint(st)
        V, W, T, j = st.V, st.W, st.T, st.j
        w = matvec(V[j]).to(device=device, dtype=dtype)
        matvecs = st.matvecs + 1
        W[j] = w
        r, h = _orthogonalise(w, V[:j + 1])
        T[:j + 1, j] = h
        T[j, :j + 1] = h
        scale = max(st.scale, float(h.abs().max()))
        size = j + 1
        if size < n:
            beta = float(r.norm())
            if beta <= 1e-12 * max(scale, 1e-300) or beta == 0.0:  # invariant subspace: continue elsewhere
                r = torch.randn(n, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
                r, _ = _orthogonalise(r, V[:j + 1])
                r, _ = _orthogonalise(r, V[:j + 1])
                beta = float(r.norm())
            V[j + 1] = r / beta
        stop = size == n or matvecs >= max_matvecs  # a full basis makes Rayleigh–Ritz exact
        ritz = None
        if size >= min_steps or size == m or stop:
            ritz = _rayleigh_ritz(T, V, W, size, which, k, tol, eps)
            certified = int(ritz.converged.sum())
        if progress:
            progress(matvecs, certified, False)
        if ritz is not None and (stop or ritz.done):
            break
        if size < m:
            st = LanczosState(V, W, T, j + 1, matvecs, st.restarts, scale, generator.get_state(), key)
            continue
        # thick restart: keep the p most wanted Ritz vectors and continue from the last Lanczos vector
        assert ritz is not None
        p = min(m - 1, k + max((m - k) // 2, 1))
        kept = ritz.order[:p]
        V2, W2, T2 = torch.zeros_like(V), torch.zeros_like(W), torch.zeros_like(T)
        V2[:p], W2[:p] = ritz.S[:, kept].T @ V[:m], ritz.S[:, kept].T @ W[:m]
        T2[torch.arange(p), torch.arange(p)] = ritz.theta[kept]
        V2[p] = V[m]
        st = LanczosState(V2, W2, T2, p, matvecs, st.restarts + 1, scale, generator.get_state(), key)
    if progress:
        progress(matvecs, certified, True)
    assert ritz is not None
    out = _output_order(ritz.values, which)
    vectors = ritz.Y[out]
    dicts = tuple(_as_named(v, like) for v in vectors) if like is not None else ()
    return LanczosResult(eigenvalues=ritz.values[out].double().cpu(), residuals=ritz.residuals[out].double().cpu(),
                         converged=ritz.converged[out].cpu(), vectors=vectors, matvecs=matvecs,
                         restarts=st.restarts, which=which, tol=tol, eps=ritz.floor, eigenvectors=dicts)


def _as_named(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A flat vector as ``{name: tensor}`` shaped like ``like`` (the vector's dtype is kept)."""
    out, offset = {}, 0
    for k, t in like.items():
        out[k] = vector[offset:offset + t.numel()].reshape(t.shape)
        offset += t.numel()
    return out


@dataclass(frozen=True)
class _Ritz:
    theta: Tensor       # all Ritz values of the basis
    S: Tensor           # their coordinates in the basis
    order: Tensor       # indices, most wanted first
    values: Tensor      # the k wanted Ritz values
    Y: Tensor           # (k, n) Ritz vectors
    residuals: Tensor   # (k,) ‖A y − θ y‖ from the stored products
    converged: Tensor   # (k,) bool
    floor: float

    @property
    def done(self) -> bool:
        return bool(self.converged.all())


def _rayleigh_ritz(T: Tensor, V: Tensor, W: Tensor, size: int, which: Which, k: int, tol: float,
                   eps: float | None) -> _Ritz:
    """Ritz pairs of span(V[:size]) with explicit residuals ‖W s − θ V s‖ (W = A V)."""
    tm = (T[:size, :size] + T[:size, :size].T) / 2
    theta, S = torch.linalg.eigh(tm)
    order = _order(theta, which, size)
    wanted = order[:k]
    Y = S[:, wanted].T @ V[:size]
    residuals = (S[:, wanted].T @ W[:size] - theta[wanted, None] * Y).norm(dim=1)
    floor = eps if eps is not None else 1e-3 * float(theta.abs().max())
    converged = residuals <= tol * torch.clamp(theta[wanted].abs(), min=floor)
    return _Ritz(theta, S, order, theta[wanted], Y, residuals, converged, floor)


__all__ = ["LanczosProgress", "LanczosResult", "LanczosState", "MatVec", "Which", "lanczos"]
