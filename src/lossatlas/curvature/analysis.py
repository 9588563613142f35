"""``lossatlas hessian``: one call from a model and data to a labelled spectrum result.

Composes the curvature pieces at θ: certified top-k and bottom-k eigenpairs (:mod:`.lanczos`), the trace
(:mod:`.trace`), the SLQ density (:mod:`.density`) and the critical-point verdict (:mod:`.critical`), and
returns an xarray Dataset with ``attrs["kind"] == "hessian"`` and the provenance a surface store carries.

Layout (dims in brackets): ``top_eigenvalues[top]``, ``top_residuals[top]``, ``top_converged[top]``, the
same for ``bottom``; ``density[grid]``, ``density_lo[grid]``, ``density_hi[grid]``, ``density_nodes[probe,
node]``, ``density_weights[probe, node]``. Scalars are attrs: ``trace``, ``trace_stderr``, ``negative_mass``,
``hvp_count``, ``grad_norm``, ``loss_value``, ``n_params``, critical-point fields, ``tol``, ``dtype``, ...
A zarr result also keeps the eigenvectors (``load_directions(path)`` returns them: top first, then bottom).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from lossatlas.curvature.critical import Tolerances, critical_point
from lossatlas.curvature.density import spectral_density
from lossatlas.curvature.hvp import HessianOperator, as_dtype
from lossatlas.curvature.krylov import LanczosResult, Which
from lossatlas.curvature.trace import TraceMethod, estimate_trace
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.params import ParamDict, flatten
from lossatlas.store import write_directions

Phase = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: Hessian-vector products done in the named phase."""

DEFAULT_TOL = {"float64": 1e-6, "float32": 1e-3}
"""Residual tolerance by product precision: float32 products carry ~1e-6 relative noise."""


@dataclass(frozen=True)
class HessianSpec:
    """What ``lossatlas hessian`` computes (validated once, here).

    Attributes:
        top, bottom: number of largest / smallest algebraic eigenpairs (0 to skip).
        trace: estimate tr(H) (``trace_method`` with ``trace_hvps`` products).
        density: SLQ density with ``probes`` probes of ``steps`` Lanczos steps on ``bins`` grid points.
        critical: classify the point (dense up to ``dense_limit`` parameters, else Lanczos + density).
        tol: Lanczos residual tolerance; default :data:`DEFAULT_TOL` of ``dtype``.
        dtype: ``float32`` or ``float64`` products.
        params: regular expression selecting parameters (``None``: all).
        split: ``train`` or ``test``.
        max_hvps: product budget of each Lanczos run.
        seed: seed of every random start and probe.
    """

    top: int = 5
    bottom: int = 0
    trace: bool = False
    density: bool = False
    critical: bool = False
    tol: float | None = None
    dtype: str = "float64"
    params: str | None = None
    split: str = "train"
    max_hvps: int = 1000
    trace_method: TraceMethod = TraceMethod.hutchpp
    trace_hvps: int = 99
    probes: int = 5
    steps: int = 80
    bins: int = 100
    dense_limit: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        as_dtype(self.dtype)
        try:
            object.__setattr__(self, "trace_method", TraceMethod(self.trace_method))
        except ValueError:
            raise UserInputError(f"--trace-method must be hutchinson or hutch++, got '{self.trace_method}'") from None
        checks = [(self.top >= 0, f"--top must be >= 0, got {self.top}"),
                  (self.bottom >= 0, f"--bottom must be >= 0, got {self.bottom}"),
                  (self.tol is None or self.tol > 0, f"--tol must be positive, got {self.tol}"),
                  (self.max_hvps >= 2, f"--max-hvps must be at least 2, got {self.max_hvps}"),
                  (self.probes >= 2, f"--probes must be at least 2 (the band needs two), got {self.probes}"),
                  (self.steps >= 2, f"--steps must be at least 2, got {self.steps}"),
                  (self.bins >= 20, f"--bins must be at least 20, got {self.bins}"),
                  (self.trace_hvps >= 6, f"--trace-hvps must be at least 6, got {self.trace_hvps}"),
                  (self.seed >= 0, f"--seed must be >= 0, got {self.seed}")]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        if not (self.top or self.bottom or self.trace or self.density or self.critical):
            raise UserInputError("nothing to compute: ask for --top K, --bottom K, --trace, --density or --critical")

    @property
    def resolved_tol(self) -> float:
        return self.tol if self.tol is not None else DEFAULT_TOL[self.dtype]


def _eigen_vars(prefix: str, res: LanczosResult) -> dict[str, tuple[tuple[str], np.ndarray]]:
    return {f"{prefix}_eigenvalues": ((prefix,), res.eigenvalues.numpy()),
            f"{prefix}_residuals": ((prefix,), res.residuals.numpy()),
            f"{prefix}_converged": ((prefix,), res.converged.numpy())}


def hessian_analysis(model: nn.Module, data: Any, spec: HessianSpec = HessianSpec(),
                     eval_spec: EvalSpec | None = None, *, device: str = "cpu",
                     provenance: Mapping[str, Any] | None = None,
                     progress: Phase | None = None) -> tuple[xr.Dataset, dict[str, list[ParamDict]]]:
    """The Hessian of ``model``'s loss on ``data`` at its weights θ.

    Returns ``(dataset, eigenvectors)``, eigenvectors as ``{"top": [dict, ...], "bottom": [...]}``.
    Raises a one-line :class:`UserInputError` for a non-finite loss at θ, ``--params`` selecting nothing,
    or k larger than the number of parameters.
    """
    from lossatlas.store import provenance as _provenance

    espec = eval_spec or EvalSpec(splits=(spec.split,))
    evaluator = Evaluator(model, data, espec, device=device)
    op = HessianOperator(evaluator, params=spec.params, dtype=spec.dtype, split=spec.split)
    for k, what in ((spec.top, "--top"), (spec.bottom, "--bottom")):
        if k > op.n:
            raise UserInputError(f"{what} {k} is larger than the {op.n} parameters selected; use {what} <= {op.n}")
    loss_value, grad = op.value_and_gradient()
    if not math.isfinite(loss_value):
        raise NonFiniteError(f"the loss at this point is {loss_value}; curvature needs a finite loss "
                             "(check the checkpoint and the data)")
    tol = spec.resolved_tol

    def phase(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    variables: dict[str, Any] = {}
    vectors: dict[str, list[ParamDict]] = {}
    stats: dict[str, Any] = {}
    for which, k, name in ((Which.largest, spec.top, "top"), (Which.smallest, spec.bottom, "bottom")):
        if k:
            res = op.eigenpairs(k, which, tol=tol, max_matvecs=spec.max_hvps, seed=spec.seed,
                                progress=phase(f"{name}-{k} eigenpairs"))
            variables.update(_eigen_vars(name, res))
            vectors[name] = list(res.eigenvectors)
            stats[f"{name}_matvecs"], stats[f"{name}_restarts"] = res.matvecs, res.restarts
            stats["eps"] = res.eps
    if spec.trace:
        est = estimate_trace(op, spec.trace_method, spec.trace_hvps, spec.seed, progress=phase("trace"))
        stats.update(trace=est.trace, trace_stderr=est.stderr, trace_method=est.method.value,
                     trace_hvps=est.matvecs)
    coords: dict[str, Any] = {}
    if spec.density:
        dens = spectral_density(op, probes=spec.probes, steps=spec.steps, bins=spec.bins, seed=spec.seed,
                                progress=phase("density"))
        coords["grid"] = dens.grid.numpy()
        variables.update(density=(("grid",), dens.density.numpy()), density_lo=(("grid",), dens.lower.numpy()),
                         density_hi=(("grid",), dens.upper.numpy()),
                         density_nodes=(("probe", "node"), dens.nodes.numpy()),
                         density_weights=(("probe", "node"), dens.weights.numpy()))
        stats.update(negative_mass=dens.negative_mass(), density_sigma=dens.sigma, density_probes=spec.probes,
                     density_steps=spec.steps)
    if spec.critical:
        cp = critical_point(op, tolerances=Tolerances(), dense_limit=spec.dense_limit, tol=tol,
                            max_matvecs=spec.max_hvps, probes=spec.probes, steps=spec.steps, seed=spec.seed,
                            progress=phase("critical point"))
        stats.update(cp.as_attrs())
    extra = {"top": spec.top, "bottom": spec.bottom, "tol": tol, "dtype": spec.dtype,
             "params": spec.params or "", "split": spec.split, "seed": spec.seed, "max_hvps": spec.max_hvps}
    attrs = _provenance("hessian", model, data, espec, extra, provenance)
    attrs.update({"n_params": op.n, "loss_value": loss_value, "grad_norm": float(flatten(grad).norm()),
                  **stats, "hvp_count": op.hvp_count})
    ds = xr.Dataset(variables, coords=coords, attrs={k: _jsonable(v) for k, v in attrs.items()})
    return ds, vectors


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def save_hessian(ds: xr.Dataset, out: str | Path, vectors: Mapping[str, list[ParamDict]] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a result: JSON when ``out`` ends in ``.json``, else a zarr store (with the eigenvectors)."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise UserInputError(f"'{out}' already exists; choose another --out or pass --overwrite")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(ds.to_dict(data="list"), indent=1, default=_jsonable))
        return out
    ds.to_zarr(out, mode="w", consolidated=False)
    if vectors:
        names = [f"{end}_{i}" for end in ("top", "bottom") for i in range(len(vectors.get(end, [])))]
        flat = [v for end in ("top", "bottom") for v in vectors.get(end, [])]
        write_directions(out, flat, names)
    return out


def open_hessian(path: str | Path) -> xr.Dataset:
    """Read a result written by :func:`save_hessian` (JSON or zarr) back as a Dataset."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"'{path}' does not exist; pass the --out of a lossatlas hessian run")
    try:
        if path.suffix == ".json":
            return xr.Dataset.from_dict(json.loads(path.read_text()))
        with xr.open_zarr(path, consolidated=False) as ds:
            return ds.load()
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the file's fault
        raise UserInputError(f"'{path}' is not a readable hessian result ({type(exc).__name__})") from None


__all__ = ["DEFAULT_TOL", "HessianSpec", "hessian_analysis", "open_hessian", "save_hessian"]
