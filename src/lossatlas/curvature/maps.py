"""Convexity maps and Hessian-eigenvector directions for surfaces.

Li, Xu, Taylor, Studer & Goldstein 2018 (Sec. 6, Fig. 7): at every grid point θ + αδ + βη of a surface,
the extreme eigenvalues λmax, λmin of the *full* Hessian and |λmin/λmax| show where the landscape is
non-convex: a projected surface that looks convex can still hide negative curvature, but negative
curvature in the plot implies negative eigenvalues of the full Hessian (seed 002).

:class:`CurvatureTask` extends :class:`lossatlas.grid.PointTask`: it returns the loss metrics plus
``lambda_max``, ``lambda_min``, ``convexity_ratio``, ``hessian_converged`` and ``hessian_matvecs`` for each
point of a work unit, so the same executors, store and resume machinery fill a convexity map. Lanczos
at a point starts from the eigenvectors found at the previous point of the unit (its grid neighbour).
A point whose run used up ``max_matvecs`` without certifying both extremes keeps its last Ritz values but has
``hessian_converged = 0``; the store counts them in ``attrs["hessian_unconverged"]`` and every view marks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from lossatlas.curvature.hvp import HessianOperator, as_dtype
from lossatlas.curvature.krylov import Which, lanczos
from lossatlas.engine import Evaluator
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.execute import WorkUnit
from lossatlas.grid import PointTask
from lossatlas.params import ParamDict, add_scaled

CONVEXITY_METRICS = ("lambda_max", "lambda_min", "convexity_ratio", "hessian_converged", "hessian_matvecs")
"""Variables a convexity map adds to a surface store."""


@dataclass(frozen=True)
class ConvexitySpec:
    """How the extreme eigenvalues are computed at each grid point.

    Attributes:
        tol: relative residual tolerance of Lanczos (``‖Hv − λv‖ <= tol · max(|λ|, eps)``).
        max_matvecs: Hessian-vector products allowed per point (unconverged points are flagged).
        params: regular expression selecting parameters (``None``: all).
        dtype: ``float32`` or ``float64`` products.
        split: split whose loss the Hessian is of.
        seed: seed of the cold Lanczos starts.
    """

    tol: float = 1e-3
    max_matvecs: int = 300
    params: str | None = None
    dtype: str = "float64"
    split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        as_dtype(self.dtype)
        if not self.tol > 0:
            raise UserInputError(f"--tol must be positive, got {self.tol}")
        if self.max_matvecs < 2:
            raise UserInputError(f"--max-hvps must be at least 2, got {self.max_matvecs}")

    def describe(self) -> str:
        """A short string for store attributes (part of the configuration hash)."""
        return (f"tol={self.tol:g},max_matvecs={self.max_matvecs},params={self.params or ''},"
                f"dtype={self.dtype},split={self.split},seed={self.seed}")


def convexity_ratio(lambda_min: float, lambda_max: float) -> float:
    """|λmin / λmax| (Li et al. 2018, Fig. 7); NaN when both are zero, inf when only λmax is."""
    if lambda_max == 0.0:
        return float("nan") if lambda_min == 0.0 else float("inf")
    return abs(lambda_min / lambda_max)


@dataclass
class CurvatureTask(PointTask):
    """Loss metrics plus the extreme Hessian eigenvalues at every point of a work unit."""

    spec: ConvexitySpec = field(default_factory=ConvexitySpec)

    @property
    def metric_names(self) -> list[str]:
        return [*self.evaluator.metric_names, *CONVEXITY_METRICS]

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]:
        values = super().__call__(unit)
        coords = np.asarray(unit.coords, dtype=np.float64)
        out = {m: np.full(len(coords), np.nan) for m in CONVEXITY_METRICS}
        loss = values.get(f"{self.spec.split}_loss")
        device = next(iter(self.theta.values())).device
        dirs = [{k: d[k].to(device) for k in d} for d in self.directions]
        warm: list[Tensor] | None = None
        for i, c in enumerate(coords):
            if loss is not None and not np.isfinite(loss[i]):
                continue
            op = HessianOperator(self.evaluator, add_scaled(self.theta, dirs, c.tolist()),
                                 params=self.spec.params, dtype=self.spec.dtype, split=self.spec.split)
            try:
                res = lanczos(op.matvec, op.n, min(2, op.n), Which.both, tol=self.spec.tol,
                              max_matvecs=self.spec.max_matvecs, v0=warm, seed=self.spec.seed,
                              device=op.device)
            except NonFiniteError:  # non-finite products at a diverged point: leave NaN
                continue
            warm = list(res.vectors)
            lam_max, lam_min = float(res.eigenvalues.max()), float(res.eigenvalues.min())
            out["lambda_max"][i], out["lambda_min"][i] = lam_max, lam_min
            out["convexity_ratio"][i] = convexity_ratio(lam_min, lam_max)
            out["hessian_converged"][i] = float(res.all_converged)
            out["hessian_matvecs"][i] = res.matvecs
        values.update(out)
        return values


def unconverged_points(ds: xr.Dataset) -> int:
    """Grid points whose Lanczos run ended without certifying λmin and λmax (``hessian_converged == 0``);
    points never analysed (a non-finite loss: NaN) are counted as non-finite points, not here."""
    if "hessian_converged" not in ds:
        return 0
    return int((np.asarray(ds["hessian_converged"].values) == 0).sum())


def record_unconverged(out: str | Path, ds: xr.Dataset) -> xr.Dataset:
    """Store ``attrs["hessian_unconverged"]`` (:func:`unconverged_points`) in the store at ``out`` and in ``ds``."""
    from lossatlas.store import update_attrs

    count = unconverged_points(ds)
    update_attrs(out, hessian_unconverged=count)
    ds.attrs["hessian_unconverged"] = count
    return ds


def _fix_sign(v: Tensor) -> Tensor:
    """Eigenvectors are defined up to sign: make the entry of largest magnitude positive."""
    return v if float(v[int(v.abs().argmax())]) >= 0 else -v


def hessian_directions(evaluator: Evaluator, theta: Mapping[str, Tensor], count: int, *,
                       params: str | None = None, dtype: str = "float64", tol: float = 1e-6,
                       max_matvecs: int = 1000, seed: int = 0) -> tuple[list[ParamDict], list[float]]:
    """The top-``count`` Hessian eigenvectors at θ as unit-norm surface directions.

    Returns ``(directions, eigenvalues)``; each direction covers every key of ``theta`` (zero outside the
    ``params`` selection), eigenvalues in descending order. Signs are fixed so the result is deterministic.
    """
    op = HessianOperator(evaluator, theta, params=params, dtype=dtype)
    op.check_finite()
    res = lanczos(op.matvec, op.n, count, Which.largest, tol=tol, max_matvecs=max_matvecs, seed=seed,
                  device=op.device)
    if not res.all_converged:
        raise UserInputError(f"the top-{count} Hessian eigenvectors did not converge in {max_matvecs} products; "
                             "raise the budget or loosen the tolerance")
    dirs = []
    for v in res.vectors:
        d = op.to_dict(_fix_sign(v))
        dirs.append({k: (d[k] if k in d else torch.zeros_like(t)).to(t.dtype) for k, t in theta.items()})
    return dirs, res.eigenvalues.tolist()


__all__ = ["CONVEXITY_METRICS", "ConvexitySpec", "CurvatureTask", "convexity_ratio", "hessian_directions",
           "record_unconverged", "unconverged_points"]
