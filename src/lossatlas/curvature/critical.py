"""Critical points: is ∇L(θ) zero, and what does the Hessian's sign pattern say there?

Two separate questions (seed 004, "Hessian at critical points"; Dauphin et al. 2014 on the index of saddles):

1. **Is θ critical?** ``‖∇L(θ)‖ ≤ grad_tol · ‖H‖₂ · ‖θ‖`` with ‖H‖₂ = max(|λmin|, |λmax|). Why this scale:
   the quadratic model m(δ) = L + gᵀδ + ½ δᵀHδ is stationary where g + Hδ = 0, which needs ‖Hδ‖ = ‖g‖, so
   ‖δ‖ ≥ ‖g‖ / ‖H‖₂: no stationary point of the model lies closer to θ than that. The test asks that this
   distance be at most a fraction ``grad_tol`` of ‖θ‖. It is dimensionless: unchanged when the loss is
   multiplied by a constant (g and H scale alike) and when the parameters are rescaled (θ → aθ gives g → g/a,
   H → H/a², ‖θ‖ → a‖θ‖). An absolute ``‖g‖ ≤ 1e-6`` is neither (multiply the loss by 1000 and the verdict
   flips), and the loss-scale alternative ``‖g‖·‖θ‖ ≤ tol·|L|`` calls every point with θ = 0 critical (the
   seed's L = (1 − w)² at w = 0 has L' = −2) and no point with L = 0 that is not exactly stationary. At θ = 0
   or H = 0 the scale is 0 and only an exactly zero gradient passes. ``grad_relative`` = ‖g‖ / (‖H‖₂ ‖θ‖) is
   stored beside the verdict.
2. **The sign pattern of H** (:class:`SignPattern`), with eigenvalues within τ = max(eig_rtol · ‖H‖₂, eig_atol,
   residual) of zero counted as zero: positive definite, negative definite, indefinite, positive / negative
   semidefinite (degenerate: higher orders decide; x² + y⁴ is a minimum and x² − y⁴ a saddle with the same
   Hessian diag(2, 0)), or zero. The counts of negative / zero / positive eigenvalues are exact when H was
   built densely (n ≤ ``dense_limit``), unknown otherwise.

The verdict combines them: not critical; else minimum (positive definite), maximum (negative definite), saddle
(indefinite) or degenerate (semidefinite or zero). When Lanczos did not certify λmin and λmax (residual above
its tolerance) the pattern and the verdict are ``undetermined`` and the residuals are kept.

The index (fraction of eigenvalues below −τ) is exact from a dense eigendecomposition. Without one it is 0 or
1 when the certified extremes already decide it, else the negative mass of the SLQ density (Rademacher probes),
but only when the density resolves the negative eigenvalues (smoothing width σ < |λmin|); otherwise it is
``unresolved`` and the negative mass is reported as what it is, not as the index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from lossatlas.curvature.density import SpectralDensity, spectral_density
from lossatlas.curvature.krylov import LanczosResult, Which, lanczos
from lossatlas.errors import UserInputError
from lossatlas.params import flatten


class CriticalKind(str, Enum):
    """What the gradient and the Hessian's sign pattern say about a point."""

    minimum = "minimum"
    """Critical, H positive definite."""
    maximum = "maximum"
    """Critical, H negative definite."""
    saddle = "saddle"
    """Critical, H indefinite (eigenvalues of both signs beyond ±τ)."""
    degenerate = "degenerate"
    """Critical, H semidefinite or zero (an eigenvalue within τ of zero, no sign conflict): higher orders decide."""
    not_critical = "not_critical"
    """‖∇L‖ above the relative tolerance."""
    undetermined = "undetermined"
    """λmin or λmax not certified by Lanczos (residual above tolerance): the Hessian cannot decide."""


class SignPattern(str, Enum):
    """The Hessian's inertia, with eigenvalues within τ of zero counted as zero."""

    positive_definite = "positive_definite"
    negative_definite = "negative_definite"
    indefinite = "indefinite"
    positive_semidefinite = "positive_semidefinite"
    """λmin within τ of zero, λmax > τ (degenerate)."""
    negative_semidefinite = "negative_semidefinite"
    """λmax within τ of zero, λmin < −τ (degenerate)."""
    zero = "zero"
    """Every eigenvalue within τ of zero (degenerate)."""
    undetermined = "undetermined"
    """λmin or λmax not certified."""

    @property
    def words(self) -> str:
        """``positive semidefinite (degenerate)`` etc., for summaries."""
        text = self.value.replace("_", " ")
        return f"{text} (degenerate)" if self in _DEGENERATE else text


_DEGENERATE = {SignPattern.positive_semidefinite, SignPattern.negative_semidefinite, SignPattern.zero}
_KIND = {SignPattern.positive_definite: CriticalKind.minimum, SignPattern.negative_definite: CriticalKind.maximum,
         SignPattern.indefinite: CriticalKind.saddle}


@dataclass(frozen=True)
class Tolerances:
    """``grad_tol``: relative gradient tolerance (``‖∇L‖ ≤ grad_tol · ‖H‖₂ · ‖θ‖``, see the module docstring);
    eigenvalues within τ = max(eig_rtol · ‖H‖₂, eig_atol, residual) of zero count as zero."""

    grad_tol: float = 1e-6
    eig_rtol: float = 1e-6
    eig_atol: float = 1e-10

    def __post_init__(self) -> None:
        if not self.grad_tol > 0 or not math.isfinite(self.grad_tol):
            raise UserInputError(f"--grad-tol must be a positive number, got {self.grad_tol}")

    def zero(self, lambda_min: float, lambda_max: float, residual: float = 0.0) -> float:
        """τ for a spectrum with these extremes (and extremes known to within ``residual``)."""
        return max(self.eig_rtol * max(abs(lambda_min), abs(lambda_max)), self.eig_atol, residual)


def gradient_test(grad_norm: float, theta_norm: float, spectral_norm: float, grad_tol: float
                  ) -> tuple[bool, float]:
    """``(critical, relative)``: ``relative = ‖g‖ / (‖H‖₂ ‖θ‖)`` (inf when the scale is 0 and g is not),
    ``critical = relative <= grad_tol``; NaN gradients are never critical."""
    scale = spectral_norm * theta_norm
    if grad_norm == 0.0:
        return True, 0.0
    relative = grad_norm / scale if scale > 0 else math.inf
    return bool(relative <= grad_tol), relative


def sign_pattern(lambda_min: float, lambda_max: float, tau: float, certified: bool = True) -> SignPattern:
    """:class:`SignPattern` from the extreme eigenvalues and the zero threshold τ."""
    if not certified or not (math.isfinite(lambda_min) and math.isfinite(lambda_max)):
        return SignPattern.undetermined
    if lambda_min > tau:
        return SignPattern.positive_definite
    if lambda_max < -tau:
        return SignPattern.negative_definite
    if lambda_min < -tau and lambda_max > tau:
        return SignPattern.indefinite
    if lambda_max > tau:
        return SignPattern.positive_semidefinite
    if lambda_min < -tau:
        return SignPattern.negative_semidefinite
    return SignPattern.zero


def classify(grad_norm: float, lambda_min: float, lambda_max: float, tolerances: Tolerances = Tolerances(), *,
             theta_norm: float = 1.0, certified: bool = True, residual: float = 0.0) -> CriticalKind:
    """:class:`CriticalKind` from ‖∇L‖, ‖θ‖ and the extreme eigenvalues (see the module docstring)."""
    if not certified:
        return CriticalKind.undetermined
    critical, _ = gradient_test(grad_norm, theta_norm, max(abs(lambda_min), abs(lambda_max)), tolerances.grad_tol)
    if not critical:
        return CriticalKind.not_critical
    pattern = sign_pattern(lambda_min, lambda_max, tolerances.zero(lambda_min, lambda_max, residual))
    return _KIND.get(pattern, CriticalKind.degenerate)


@dataclass(frozen=True)
class CriticalPoint:
    """The verdict at one point.

    Attributes:
        kind: :class:`CriticalKind`.
        pattern: the Hessian's :class:`SignPattern`.
        critical: whether ‖∇L‖ passes the relative test (``None`` when the extremes are not certified).
        loss: L(θ).
        grad_norm, theta_norm: ‖∇L(θ)‖ and ‖θ‖ over the analysed parameters.
        grad_relative: ‖∇L‖ / (‖H‖₂ ‖θ‖), compared with ``grad_tol``.
        grad_tol: the relative gradient tolerance used.
        lambda_min, lambda_max: extreme Hessian eigenvalues.
        residual_min, residual_max: their residuals ‖Hv − λv‖ (from operator products).
        certified: both extremes met the residual certificate.
        counts: ``(negative, zero, positive)`` eigenvalue counts when every eigenvalue is known, else ``None``.
        index: fraction of eigenvalues below −τ, or ``None`` when it is not known (see ``index_method``).
        index_method: ``exact`` (dense), ``extremes`` (certified extremes decide: 0 or 1), ``density`` (SLQ
            negative mass, σ < |λmin|) or ``unresolved`` (the density's width σ ≥ |λmin|: no index).
        negative_mass: the SLQ density's mass below −τ when a density was used (``None`` otherwise).
        density_sigma: the density's smoothing width σ when one was used.
        n: number of parameters analysed.
        zero_tol: τ used.
        hvp_count: Hessian-vector products spent.
    """

    kind: CriticalKind
    pattern: SignPattern
    critical: bool | None
    loss: float
    grad_norm: float
    theta_norm: float
    grad_relative: float
    grad_tol: float
    lambda_min: float
    lambda_max: float
    residual_min: float
    residual_max: float
    certified: bool
    counts: tuple[int, int, int] | None
    index: float | None
    index_method: str
    negative_mass: float | None
    density_sigma: float | None
    n: int
    zero_tol: float
    hvp_count: int

    def as_attrs(self) -> dict[str, Any]:
        """Flat JSON-able summary for store attributes (unknown quantities are left out)."""
        out: dict[str, Any] = {
            "critical_kind": self.kind.value, "hessian_sign": self.pattern.value,
            "is_critical": {True: "yes", False: "no", None: "undetermined"}[self.critical],
            "loss_value": self.loss, "grad_norm": self.grad_norm, "theta_norm": self.theta_norm,
            "grad_relative": self.grad_relative, "grad_tol": self.grad_tol, "lambda_min": self.lambda_min,
            "lambda_max": self.lambda_max, "lambda_min_residual": self.residual_min,
            "lambda_max_residual": self.residual_max, "extremes_certified": self.certified,
            "index_method": self.index_method, "zero_tol": self.zero_tol, "critical_hvps": self.hvp_count}
        if self.counts is not None:
            out.update(negative_count=self.counts[0], zero_count=self.counts[1], positive_count=self.counts[2])
        if self.index is not None:
            out["index"] = self.index
        if self.negative_mass is not None:
            out.update(critical_negative_mass=self.negative_mass, critical_density_sigma=self.density_sigma)
        return out


def _gradient_fields(grad_norm: float, theta_norm: float, lam_min: float, lam_max: float,
                     tolerances: Tolerances) -> tuple[bool, float]:
    return gradient_test(grad_norm, theta_norm, max(abs(lam_min), abs(lam_max)), tolerances.grad_tol)


def from_spectrum(eigenvalues: Tensor, *, loss: float, grad_norm: float, theta_norm: float,
                  residual_min: float = 0.0, residual_max: float = 0.0, certified: bool = True,
                  tolerances: Tolerances = Tolerances(), hvp_count: int = 0) -> CriticalPoint:
    """The verdict from *every* eigenvalue (a dense eigendecomposition): exact counts and index."""
    eigenvalues = eigenvalues.double().cpu()
    lam_min, lam_max = float(eigenvalues.min()), float(eigenvalues.max())
    tau = tolerances.zero(lam_min, lam_max, max(residual_min, residual_max))
    negative, positive = int((eigenvalues < -tau).sum()), int((eigenvalues > tau).sum())
    counts = (negative, eigenvalues.numel() - negative - positive, positive)
    critical, relative = _gradient_fields(grad_norm, theta_norm, lam_min, lam_max, tolerances)
    pattern = sign_pattern(lam_min, lam_max, tau, certified)
    return CriticalPoint(kind=_verdict(critical, pattern), pattern=pattern, critical=critical if certified else None,
                         loss=loss, grad_norm=grad_norm, theta_norm=theta_norm, grad_relative=relative,
                         grad_tol=tolerances.grad_tol, lambda_min=lam_min, lambda_max=lam_max,
                         residual_min=residual_min, residual_max=residual_max, certified=certified, counts=counts,
                         index=negative / eigenvalues.numel(), index_method="exact", negative_mass=None,
                         density_sigma=None, n=eigenvalues.numel(), zero_tol=tau, hvp_count=hvp_count)


def from_extremes(lam_min: float, lam_max: float, *, n: int, loss: float, grad_norm: float, theta_norm: float,
                  residual_min: float, residual_max: float, certified: bool,
                  density: SpectralDensity | None = None, tolerances: Tolerances = Tolerances(),
                  hvp_count: int = 0) -> CriticalPoint:
    """The verdict from certified extremes (Lanczos), the index from them or from an SLQ density."""
    tau = tolerances.zero(lam_min, lam_max, max(residual_min, residual_max))
    critical, relative = _gradient_fields(grad_norm, theta_norm, lam_min, lam_max, tolerances)
    pattern = sign_pattern(lam_min, lam_max, tau, certified)
    mass = sigma = None
    if density is not None:
        rtol = tau / max(float(density.nodes.abs().max()), 1e-300)
        mass, sigma = density.negative_mass(rtol=rtol), density.sigma
    index: float | None
    if pattern in (SignPattern.positive_definite, SignPattern.positive_semidefinite, SignPattern.zero):
        index, method = 0.0, "extremes"
    elif pattern is SignPattern.negative_definite:
        index, method = 1.0, "extremes"
    elif mass is not None and sigma is not None and sigma < abs(lam_min) and certified:
        index, method = mass, "density"
    else:
        index, method = None, "unresolved"
    return CriticalPoint(kind=_verdict(critical, pattern), pattern=pattern, critical=critical if certified else None,
                         loss=loss, grad_norm=grad_norm, theta_norm=theta_norm, grad_relative=relative,
                         grad_tol=tolerances.grad_tol, lambda_min=lam_min, lambda_max=lam_max,
                         residual_min=residual_min, residual_max=residual_max, certified=certified, counts=None,
                         index=index, index_method=method, negative_mass=mass, density_sigma=sigma, n=n,
                         zero_tol=tau, hvp_count=hvp_count)


def _verdict(critical: bool, pattern: SignPattern) -> CriticalKind:
    if pattern is SignPattern.undetermined:
        return CriticalKind.undetermined
    if not critical:
        return CriticalKind.not_critical
    return _KIND.get(pattern, CriticalKind.degenerate)


def extremes(res: LanczosResult) -> tuple[float, float, float, float, bool]:
    """``(λmin, λmax, residual_min, residual_max, certified)`` from a ``Which.both`` Lanczos run."""
    i_min, i_max = int(res.eigenvalues.argmin()), int(res.eigenvalues.argmax())
    return (float(res.eigenvalues[i_min]), float(res.eigenvalues[i_max]), float(res.residuals[i_min]),
            float(res.residuals[i_max]), bool(res.converged[i_min]) and bool(res.converged[i_max]))


def critical_point(op: Any, *, tolerances: Tolerances = Tolerances(), dense_limit: int = 5000,
                   tol: float = 1e-8, max_matvecs: int = 1000, probes: int = 5, steps: int = 80, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> CriticalPoint:
    """Classify the point of a Hessian operator (:class:`~lossatlas.curvature.hvp.HessianOperator` or
    :class:`~lossatlas.curvature.hvp.FunctionHessian`).

    For ``op.n <= dense_limit`` the Hessian is built densely (n products) and every eigenvalue is known; the
    extremes' residuals come from two more products. Otherwise λmax, λmin come from Lanczos (relative residual
    ``tol``, at most ``max_matvecs`` products) and the index, where the extremes do not decide it, from the
    SLQ density (``probes`` × ``steps``).
    """
    start = op.hvp_count
    loss = op.check_finite() if hasattr(op, "check_finite") else op.loss()
    grad_norm = float(flatten(op.gradient()).norm())
    theta_norm = float(flatten(op.theta).double().norm())
    common: dict[str, Any] = {"loss": loss, "grad_norm": grad_norm, "theta_norm": theta_norm,
                              "tolerances": tolerances}
    if op.n <= dense_limit:
        values, vectors = torch.linalg.eigh(op.dense(progress=progress))
        ends = vectors[:, [0, -1]].T.contiguous()
        products = op.matmat(ends)
        res = (products - values[[0, -1], None] * ends).norm(dim=1)
        scale = max(float(values.abs().max()), 1e-300)
        ok = bool((res <= tol * torch.clamp(values[[0, -1]].abs(), min=1e-3 * scale)).all())
        return from_spectrum(values, residual_min=float(res[0]), residual_max=float(res[1]), certified=ok,
                             hvp_count=op.hvp_count - start, **common)
    both = lanczos(op.matvec, op.n, min(2, op.n), Which.both, tol=tol, max_matvecs=max_matvecs, seed=seed,
                   device=op.device, progress=(lambda done, _c, end: progress(done, done if end else max_matvecs))
                   if progress else None)
    lam_min, lam_max, r_min, r_max, certified = extremes(both)
    pattern = sign_pattern(lam_min, lam_max, tolerances.zero(lam_min, lam_max, max(r_min, r_max)), certified)
    density = None
    if pattern in (SignPattern.indefinite, SignPattern.negative_semidefinite):
        density = spectral_density(op, probes=probes, steps=steps, seed=seed, progress=progress)
    return from_extremes(lam_min, lam_max, n=op.n, residual_min=r_min, residual_max=r_max, certified=certified,
                         density=density, hvp_count=op.hvp_count - start, **common)


__all__ = ["CriticalKind", "CriticalPoint", "SignPattern", "Tolerances", "classify", "critical_point", "extremes",
           "from_extremes", "from_spectrum", "gradient_test", "sign_pattern"]
