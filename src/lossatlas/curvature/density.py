"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

Lin, Saad & Yang 2016 ("Approximating spectral densities of large matrices"); applied to neural networks
by Ghorbani, Krishnan & Xiao 2019 ("An investigation into neural net optimization via Hessian eigenvalue
density"). For a unit probe v, m Lanczos steps from v give a tridiagonal T = S diag(θ) Sᵀ; the nodes θⱼ
with weights τⱼ = S₀ⱼ² are the m-point Gauss quadrature of the measure Σᵢ (vᵀuᵢ)² δ(t − λᵢ), exact for
polynomials of degree ≤ 2m − 1. Probes are normalised Rademacher vectors z/√n, z ∈ {±1}ⁿ (as in Ubaru, Chen
& Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature"): E (vᵀuᵢ)² = ‖uᵢ‖²/n = 1/n, so
averaging over probes estimates the spectral density φ(t) = (1/n) Σᵢ δ(t − λᵢ); each delta is smoothed by a
Gaussian of width σ. For eigenvectors along the coordinate axes every probe gives weight exactly 1/n to each
eigenvalue, so a diagonal Hessian's density and negative mass come out exact.

Consequences checked by the tests: ∫φ = 1 (weights sum to one), ∫t φ ≈ tr(H)/n and ∫t² φ − σ² ≈ tr(H²)/n.
The band is the probe-to-probe spread: mean ± 2 standard errors of the per-probe densities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lossatlas.curvature.trace import SymmetricOperator
from lossatlas.errors import UserInputError

_PAD = 6.0  # grid reaches this many σ beyond the extreme nodes, so the Gaussians' tails are inside


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed SLQ estimate of the eigenvalue density.

    Attributes:
        grid: ``(bins,)`` evaluation points t (equally spaced).
        density: ``(bins,)`` mean density over probes; integrates to 1.
        lower, upper: ``(bins,)`` band: mean ∓ 2 standard errors across probes (lower clipped at 0).
        per_probe: ``(probes, bins)`` each probe's density.
        nodes, weights: ``(probes, steps)`` Gauss quadrature nodes θ and weights τ (rows padded with
            weight 0 when a probe's Krylov space closed early).
        sigma: Gaussian smoothing width.
        matvecs: Hessian-vector products used.
    """

    grid: Tensor
    density: Tensor
    lower: Tensor
    upper: Tensor
    per_probe: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float
    matvecs: int

    def moment(self, k: int) -> float:
        """∑ τ θᵏ averaged over probes: the quadrature's k-th moment (unsmoothed), ≈ tr(Hᵏ)/n."""
        return float((self.weights * self.nodes ** k).sum(dim=1).mean())

    def moment_stderr(self, k: int) -> float:
        """Standard error of :meth:`moment` across probes."""
        per = (self.weights * self.nodes ** k).sum(dim=1)
        return float(per.std(unbiased=True) / math.sqrt(per.numel())) if per.numel() > 1 else math.inf

    def negative_mass(self, rtol: float = 1e-6) -> float:
        """Estimated fraction of eigenvalues below ``−rtol · max|θ|`` (the Hessian index).

        The threshold keeps rounding-level nodes of a null space (common in networks) out of the count.
        """
        cut = -rtol * float(self.nodes.abs().max())
        return float((self.weights * (self.nodes < cut)).sum(dim=1).mean())


def lanczos_quadrature(matvec: Callable[[Tensor], Tensor], v: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Gauss quadrature nodes and weights of ``v``'s spectral measure from ``steps`` Lanczos steps.

    Full reorthogonalisation (CGS2); stops early when the Krylov space is invariant (then exact).
    Returns ``(nodes (m,), weights (m,))`` with m ≤ steps, weights summing to 1.
    """
    n = v.numel()
    steps = min(steps, n)
    basis = torch.zeros(steps, n, dtype=torch.float64, device=v.device)
    alpha: list[float] = []
    beta: list[float] = []
    q = v.double() / v.double().norm()
    for j in range(steps):
        basis[j] = q
        w = matvec(q).double()
        a = float(q @ w)
        w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        alpha.append(a)
        b = float(w.norm())
        if j + 1 == steps or b <= 1e-12 * max(abs(x) for x in alpha + beta + [1e-300]):
            break
        beta.append(b)
        q = w / b
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if beta:
        off = torch.tensor(beta, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(t)
    return nodes, vecs[0] ** 2


def spectral_density(op: SymmetricOperator, *, probes: int = 5, steps: int = 80, bins: int = 100,
                     sigma: float | None = None, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None,
                     finished: Sequence[tuple[Tensor, Tensor]] = (),
                     on_probe: Callable[[list[tuple[Tensor, Tensor]]], None] | None = None) -> SpectralDensity:
    """SLQ density of ``op`` with ``probes`` Rademacher probes of ``steps`` Lanczos steps each.

    Args:
        op: symmetric operator (``n``, ``device``, ``matvec``).
        probes: independent random unit probes (≥ 2 for a band).
        steps: Lanczos steps per probe (quadrature nodes; capped at n).
        bins: grid points of the returned density.
        sigma: Gaussian width; default one grid spacing, with the grid spanning the nodes ± 6σ.
        seed: seed of the probes.
        progress: ``progress(products done, products planned)``.
        finished: ``(nodes, weights)`` of the first probes from an interrupted run (as given to ``on_probe``); they
            are not recomputed, and the result equals that of an uninterrupted run.
        on_probe: called with the ``(nodes, weights)`` of every probe finished so far, after each probe.
    """
    if probes < 1 or steps < 1 or bins < 20:
        raise UserInputError(f"the density needs probes >= 1, steps >= 1 and bins >= 20; got "
                             f"{probes}, {steps}, {bins}")
    if sigma is not None and not sigma > 0:
        raise UserInputError(f"--sigma must be positive, got {sigma}")
    generator = torch.Generator().manual_seed(seed)
    kept = [(th.double().cpu(), tau.double().cpu()) for th, tau in finished][:probes]
    planned, done = probes * min(steps, op.n), sum(th.numel() for th, _ in kept)  # a probe's products = its nodes

    def apply(v: Tensor) -> Tensor:
        nonlocal done
        done += 1
        if progress:
            progress(done, planned)
        return op.matvec(v)

    m = min(steps, op.n)
    nodes = torch.zeros(probes, m, dtype=torch.float64)
    weights = torch.zeros(probes, m, dtype=torch.float64)
    if progress and kept:
        progress(done, planned)
    for p in range(probes):
        v = (torch.randint(0, 2, (op.n,), generator=generator, dtype=torch.float64) * 2 - 1).to(op.device)
        if p >= len(kept):  # the probes of an interrupted run are drawn again (same generator) but not recomputed
            th, tau = lanczos_quadrature(apply, v, steps)
            kept.append((th.cpu(), tau.cpu()))
            if on_probe:
                on_probe(list(kept))
        th, tau = kept[p]
        nodes[p, :th.numel()] = th
        weights[p, :th.numel()] = tau
        if th.numel() < m:
            nodes[p, th.numel():] = th[-1]  # weight 0: does not change any moment
    if progress:  # probes whose Krylov space closed early used fewer products than planned: the phase is done
        progress(done, done)
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = span / (bins - 1 - 2 * _PAD)  # σ = one grid spacing
    grid = torch.linspace(lo - _PAD * sigma, hi + _PAD * sigma, bins, dtype=torch.float64)
    z = (grid[None, None, :] - nodes[:, :, None]) / sigma                    # (P, m, bins)
    per_probe = (weights[:, :, None] * torch.exp(-0.5 * z ** 2)).sum(dim=1) / (sigma * math.sqrt(2 * math.pi))
    mean = per_probe.mean(dim=0)
    se = per_probe.std(dim=0, unbiased=True) / math.sqrt(probes) if probes > 1 else torch.zeros_like(mean)
    return SpectralDensity(grid=grid, density=mean, lower=(mean - 2 * se).clamp(min=0), upper=mean + 2 * se,
                           per_probe=per_probe, nodes=nodes, weights=weights, sigma=float(sigma), matvecs=done)


__all__ = ["SpectralDensity", "lanczos_quadrature", "spectral_density"]
