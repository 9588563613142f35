"""Curvature of the loss: Hessian-vector products, certified Lanczos, trace, spectral density,
critical points and convexity maps.

One operator, one file, each tested against the dense float64 Hessian (:mod:`lossatlas.testing.reference`):

* :mod:`.hvp`       ``hvp_sum`` (one shard's sum), ``HessianOperator`` (exact full-split mean),
  ``FunctionHessian`` (closed-form L(θ)), ``gradient_sum``;
* :mod:`.lanczos`   thick-restart Lanczos with explicit residual certificates;
* :mod:`.trace`     Hutchinson and Hutch++ with standard errors;
* :mod:`.density`   stochastic Lanczos quadrature;
* :mod:`.critical`  is ∇L zero (relative test), the Hessian's sign pattern, the verdict and the index;
* :mod:`.maps`      convexity maps on surfaces and Hessian-eigenvector directions;
* :mod:`.analysis`  ``lossatlas hessian``: all of the above into one labelled result.
"""

from __future__ import annotations

from lossatlas.curvature.analysis import HessianSpec, hessian_analysis, open_hessian, save_hessian
from lossatlas.curvature.critical import (
    CriticalKind,
    CriticalPoint,
    SignPattern,
    Tolerances,
    classify,
    critical_point,
)
from lossatlas.curvature.density import SpectralDensity, spectral_density
from lossatlas.curvature.hvp import FunctionHessian, HessianOperator, gradient_sum, hvp_sum, select_parameters
from lossatlas.curvature.krylov import LanczosResult, Which, lanczos
from lossatlas.curvature.trace import TraceEstimate, TraceMethod, estimate_trace, hutchinson_trace, hutchpp_trace


def gradient(op: HessianOperator | FunctionHessian) -> dict:
    """∇L(θ), the full-split mean gradient over the operator's parameters (float64 dict)."""
    return op.gradient()


__all__ = ["CriticalKind", "CriticalPoint", "FunctionHessian", "HessianOperator", "HessianSpec", "LanczosResult",
           "SignPattern", "SpectralDensity", "Tolerances", "TraceEstimate", "TraceMethod", "Which", "classify",
           "critical_point", "estimate_trace", "gradient", "gradient_sum", "hessian_analysis", "hutchinson_trace",
           "hutchpp_trace", "hvp_sum", "lanczos", "open_hessian", "save_hessian", "select_parameters",
           "spectral_density"]
