"""Critical points: minimum, maximum, saddle or degenerate, and the index (fraction of negative curvature).

At θ with ∇L(θ) = 0 the Hessian decides (seed 004, "Hessian at critical points"; Dauphin et al. 2014 on the
index of saddles): all eigenvalues positive — a local minimum; all negative — a maximum; both signs — a
saddle; some eigenvalue zero and no sign conflict — *degenerate*, where the Hessian cannot tell (x² + y⁴ is a
minimum and x² − y⁴ a saddle, with the same Hessian diag(2, 0)). The extremes λmin, λmax suffice:

    λmin > τ → minimum;  λmax < −τ → maximum;  λmin < −τ < τ < λmax → saddle;  otherwise degenerate,

with τ = max(rtol · max(|λmin|, |λmax|), atol). The index is the fraction of eigenvalues below −τ: exact
from a dense eigendecomposition for n ≤ ``dense_limit``, else the negative mass of the SLQ density.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from lossatlas.curvature.density import spectral_density
from lossatlas.curvature.krylov import Which, lanczos
from lossatlas.params import flatten


class CriticalKind(str, Enum):
    """What the gradient and the extreme Hessian eigenvalues say about a point."""

    minimum = "minimum"
    """‖g‖ ≤ grad_tol and every eigenvalue > τ."""
    maximum = "maximum"
    """‖g‖ ≤ grad_tol and every eigenvalue < −τ."""
    saddle = "saddle"
    """‖g‖ ≤ grad_tol with eigenvalues of both signs beyond ±τ."""
    degenerate = "degenerate"
    """‖g‖ ≤ grad_tol and an eigenvalue within τ of zero, no sign conflict: higher orders decide."""
    not_critical = "not_critical"
    """‖g‖ > grad_tol."""


@dataclass(frozen=True)
class Tolerances:
    """``grad_tol`` on ‖∇L‖; eigenvalues within τ = max(eig_rtol · max|λ|, eig_atol) of zero count as zero."""

    grad_tol: float = 1e-6
    eig_rtol: float = 1e-6
    eig_atol: float = 1e-10

    def zero(self, lambda_min: float, lambda_max: float) -> float:
        """τ for a spectrum with these extremes."""
        return max(self.eig_rtol * max(abs(lambda_min), abs(lambda_max)), self.eig_atol)


def classify(grad_norm: float, lambda_min: float, lambda_max: float,
             tolerances: Tolerances = Tolerances()) -> CriticalKind:
    """:class:`CriticalKind` from ‖∇L‖ and the extreme eigenvalues (see the module docstring)."""
    if not grad_norm <= tolerances.grad_tol:
        return CriticalKind.not_critical
    tau = tolerances.zero(lambda_min, lambda_max)
    if lambda_min > tau:
        return CriticalKind.minimum
    if lambda_max < -tau:
        return CriticalKind.maximum
    if lambda_min < -tau and lambda_max > tau:
        return CriticalKind.saddle
    return CriticalKind.degenerate


@dataclass(frozen=True)
class CriticalPoint:
    """The verdict at one point.

    Attributes:
        kind: :class:`CriticalKind`.
        loss: L(θ).
        grad_norm: ‖∇L(θ)‖ over the analysed parameters.
        lambda_min, lambda_max: extreme Hessian eigenvalues.
        index: fraction of eigenvalues below −τ.
        index_method: ``"exact"`` (dense eigendecomposition) or ``"density"`` (SLQ negative mass).
        n: number of parameters analysed.
        zero_tol: τ used.
        hvp_count: Hessian-vector products spent.
    """

    kind: CriticalKind
    loss: float
    grad_norm: float
    lambda_min: float
    lambda_max: float
    index: float
    index_method: str
    n: int
    zero_tol: float
    hvp_count: int

    def as_attrs(self) -> dict[str, Any]:
        """Flat JSON-able summary for store attributes."""
        return {"critical_kind": self.kind.value, "loss_value": self.loss, "grad_norm": self.grad_norm,
                "lambda_min": self.lambda_min, "lambda_max": self.lambda_max, "index": self.index,
                "index_method": self.index_method, "zero_tol": self.zero_tol}


def critical_point(op: Any, *, tolerances: Tolerances = Tolerances(), dense_limit: int = 5000,
                   tol: float = 1e-8, max_matvecs: int = 1000, probes: int = 5, steps: int = 80, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> CriticalPoint:
    """Classify the point of a Hessian operator (:class:`~lossatlas.curvature.hvp.HessianOperator` or
    :class:`~lossatlas.curvature.hvp.FunctionHessian`).

    For ``op.n <= dense_limit`` the Hessian is built densely (n products) and every eigenvalue is known;
    otherwise λmax, λmin come from Lanczos (relative residual ``tol``) and the index from the SLQ density.
    """
    start = op.hvp_count
    loss = op.check_finite() if hasattr(op, "check_finite") else op.loss()
    grad_norm = float(flatten(op.gradient()).norm())
    if op.n <= dense_limit:
        eigenvalues = torch.linalg.eigvalsh(op.dense(progress=progress))
        lam_min, lam_max = float(eigenvalues[0]), float(eigenvalues[-1])
        tau = tolerances.zero(lam_min, lam_max)
        index, method = float((eigenvalues < -tau).double().mean()), "exact"
    else:
        ends = lanczos(op.matvec, op.n, min(2, op.n), Which.both, tol=tol, max_matvecs=max_matvecs, seed=seed,
                       device=op.device, progress=progress)
        lam_max, lam_min = float(ends.eigenvalues.max()), float(ends.eigenvalues.min())
        tau = tolerances.zero(lam_min, lam_max)
        density = spectral_density(op, probes=probes, steps=steps, seed=seed, progress=progress)
        rtol = tau / max(float(density.nodes.abs().max()), 1e-300)
        index, method = density.negative_mass(rtol=rtol), "density"
    kind = classify(grad_norm, lam_min, lam_max, tolerances)
    return CriticalPoint(kind=kind, loss=loss, grad_norm=grad_norm, lambda_min=lam_min, lambda_max=lam_max,
                         index=index if math.isfinite(index) else math.nan, index_method=method, n=op.n,
                         zero_tol=tau, hvp_count=op.hvp_count - start)


__all__ = ["CriticalKind", "CriticalPoint", "Tolerances", "classify", "critical_point"]
