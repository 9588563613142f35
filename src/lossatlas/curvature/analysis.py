"""``lossatlas hessian``: one call from a model and data to a labelled spectrum result.

Composes the curvature pieces at θ: certified top-k and bottom-k eigenpairs (:mod:`.krylov`), the trace
(:mod:`.trace`), the SLQ density (:mod:`.density`) and the critical-point verdict (:mod:`.critical`), and
returns an xarray Dataset with ``attrs["kind"] == "hessian"`` and the provenance a surface store carries.

With ``critical`` and at most ``dense_limit`` parameters the Hessian is built densely once (n products) and
every eigenvalue is known: the verdict, the exact counts of negative / zero / positive eigenvalues, and also
the top / bottom eigenpairs (their residuals from real products) and an exact trace come from it
(``eigen_method = "dense"``). Otherwise Lanczos, Hutch++ and SLQ do the work (``eigen_method = "lanczos"``).

BatchNorm: the Hessian is always over the parameters, with the BN statistics held fixed. ``bn=eval`` holds the
stored running statistics; ``states`` holds θ's own statistics (the stored ones: at θ itself the same
Hessian); ``recompute`` re-estimates them on the whole training split at θ (one batch of all samples) and holds
those fixed. ``attrs["bn_statistics"]`` says which.

Layout (dims in brackets): ``top_eigenvalues[top]``, ``top_residuals[top]``, ``top_converged[top]``, the
same for ``bottom``; ``density[grid]``, ``density_lo[grid]``, ``density_hi[grid]``, ``density_nodes[probe,
node]``, ``density_weights[probe, node]``. Scalars are attrs: ``trace``, ``trace_stderr``, ``negative_mass``,
``hvp_count``, ``grad_norm``, ``loss_value``, ``n_params``, critical-point fields, ``tol``, ``dtype``, ...
A zarr result also keeps the eigenvectors (``load_directions(path)`` returns them: top first, then bottom).

A job given ``resume=FOLDER`` keeps its finished phases and the state of the running one there
(:mod:`.resume`); run again with the same folder it continues and ends with the same numbers.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from lossatlas.curvature.critical import (
    CriticalPoint,
    SignPattern,
    Tolerances,
    extremes,
    from_extremes,
    from_spectrum,
    sign_pattern,
)
from lossatlas.curvature.hvp import HessianOperator, as_dtype
from lossatlas.curvature.krylov import LanczosResult, Which
from lossatlas.curvature.phases import Phase, Phases
from lossatlas.curvature.resume import ResumeDir
from lossatlas.curvature.trace import TraceMethod
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.engine.bn import BNPolicy
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.params import ParamDict, flatten
from lossatlas.store import write_directions

DEFAULT_TOL = {"float64": 1e-6, "float32": 1e-3}
"""Residual tolerance by product precision: float32 products carry ~1e-6 relative noise."""

DEFAULT_GRAD_TOL = {"float64": 1e-6, "float32": 1e-4}
"""Relative gradient tolerance ‖∇L‖ ≤ grad_tol · ‖H‖₂ · ‖θ‖ (:mod:`.critical`) by product precision."""

EIG_RTOL = {"float64": 1e-6, "float32": 1e-4}
"""Eigenvalues within this fraction of ‖H‖₂ of zero count as zero, by product precision."""

BN_STATISTICS = {
    BNPolicy.eval: "stored running statistics, held fixed",
    BNPolicy.states: "θ's own running statistics (the stored ones), held fixed",
    BNPolicy.recompute: "re-estimated on the whole training split at θ, then held fixed",
}
"""What the BatchNorm statistics are while the Hessian (over parameters only) is taken, by ``--bn`` policy."""


@dataclass(frozen=True)
class HessianSpec:
    """What ``lossatlas hessian`` computes (validated once, here).

    Attributes:
        top, bottom: number of largest / smallest algebraic eigenpairs (0 to skip).
        trace: estimate tr(H) (``trace_method`` with ``trace_hvps`` products).
        density: SLQ density with ``probes`` probes of ``steps`` Lanczos steps on ``bins`` grid points.
        critical: classify the point (dense up to ``dense_limit`` parameters, else Lanczos + density).
        tol: Lanczos residual tolerance; default :data:`DEFAULT_TOL` of ``dtype``.
        grad_tol: relative gradient tolerance of the critical-point test; default :data:`DEFAULT_GRAD_TOL`.
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
    grad_tol: float | None = None
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
                  (self.grad_tol is None or (self.grad_tol > 0 and math.isfinite(self.grad_tol)),
                   f"--grad-tol must be a positive number, got {self.grad_tol}"),
                  (self.max_hvps >= 2, f"--max-hvps must be at least 2, got {self.max_hvps}"),
                  (self.probes >= 2, f"--probes must be at least 2 (the band needs two), got {self.probes}"),
                  (self.steps >= 2, f"--steps must be at least 2, got {self.steps}"),
                  (self.bins >= 20, f"--bins must be at least 20, got {self.bins}"),
                  (self.trace_hvps >= 6, f"--trace-hvps must be at least 6, got {self.trace_hvps}"),
                  (self.dense_limit >= 0, f"--dense-limit must be >= 0, got {self.dense_limit}"),
                  (self.seed >= 0, f"--seed must be >= 0, got {self.seed}")]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)
        if not (self.top or self.bottom or self.trace or self.density or self.critical):
            raise UserInputError("nothing to compute: ask for --top K, --bottom K, --trace, --density or --critical")

    @property
    def resolved_tol(self) -> float:
        return self.tol if self.tol is not None else DEFAULT_TOL[self.dtype]

    @property
    def tolerances(self) -> Tolerances:
        """The critical-point tolerances for this precision."""
        grad_tol = self.grad_tol if self.grad_tol is not None else DEFAULT_GRAD_TOL[self.dtype]
        return Tolerances(grad_tol=grad_tol, eig_rtol=EIG_RTOL[self.dtype])


def _eigen_vars(prefix: str, res: LanczosResult) -> dict[str, tuple[tuple[str], np.ndarray]]:
    return {f"{prefix}_eigenvalues": ((prefix,), res.eigenvalues.numpy()),
            f"{prefix}_residuals": ((prefix,), res.residuals.numpy()),
            f"{prefix}_converged": ((prefix,), res.converged.numpy())}


def _dense_pairs(values: Tensor, vectors: Tensor, products: Tensor, picks: list[int], which: Which, tol: float,
                 op: HessianOperator) -> LanczosResult:
    """Eigenpairs ``picks`` of the dense decomposition, certified like Lanczos' by residuals of real products."""
    lam, vec, hv = values[picks], vectors[:, picks].T, products
    residuals = (hv - lam[:, None] * vec).norm(dim=1)
    floor = 1e-3 * float(values.abs().max())
    converged = residuals <= tol * torch.clamp(lam.abs(), min=floor)
    return LanczosResult(eigenvalues=lam.double().cpu(), residuals=residuals.double().cpu(),
                         converged=converged.cpu(), vectors=vec, matvecs=0, restarts=0, which=which, tol=tol,
                         eps=floor, eigenvectors=tuple(op.to_dict(v) for v in vec))


def _dense_analysis(job: Phases, spec: HessianSpec, common: dict[str, Any]
                    ) -> tuple[dict[str, LanczosResult], CriticalPoint, float | None]:
    """Top/bottom pairs, the verdict and the exact trace from one dense Hessian (n + a few products)."""
    op, tol = job.op, spec.resolved_tol
    h = job.dense()
    values, vectors = torch.linalg.eigh(h)
    n = op.n
    wanted = {"top": [n - 1 - i for i in range(spec.top)], "bottom": list(range(spec.bottom))}
    picks = sorted({0, n - 1, *wanted["top"], *wanted["bottom"]})
    products = job.products_of(vectors[:, picks].T.contiguous(), "residuals")
    rows = {p: i for i, p in enumerate(picks)}
    pairs = {}
    for name, which in (("top", Which.largest), ("bottom", Which.smallest)):
        if wanted[name]:
            pairs[name] = _dense_pairs(values, vectors, products[[rows[p] for p in wanted[name]]], wanted[name],
                                       which, tol, op)
    ends = _dense_pairs(values, vectors, products[[rows[0], rows[n - 1]]], [0, n - 1], Which.both, tol, op)
    cp = from_spectrum(values, residual_min=float(ends.residuals[0]), residual_max=float(ends.residuals[1]),
                       certified=bool(ends.converged.all()), tolerances=spec.tolerances,
                       hvp_count=job.products["dense"] + len(picks), **common)
    return pairs, cp, float(torch.diagonal(h).sum()) if spec.trace else None


def hessian_analysis(model: nn.Module, data: Any, spec: HessianSpec = HessianSpec(),
                     eval_spec: EvalSpec | None = None, *, device: str = "cpu",
                     provenance: Mapping[str, Any] | None = None, progress: Phase | None = None,
                     resume: str | Path | None = None, overwrite: bool = False,
                     log: Callable[[str], None] | None = None) -> tuple[xr.Dataset, dict[str, list[ParamDict]]]:
    """The Hessian of ``model``'s loss on ``data`` at its weights θ.

    Args:
        progress: ``progress(label, done, total)`` per phase (``total`` None while a Lanczos run is open-ended).
        resume: a folder for the job's finished phases and running state (see :mod:`.resume`); an existing one
            of the same job is continued, one of another job refused (``overwrite`` discards it).
        log: receives a line saying what a resumed job found.

    The folder is left in place (remove it with :func:`lossatlas.curvature.resume.discard` once the result is
    saved; ``lossatlas hessian`` does).

    Returns ``(dataset, eigenvectors)``, eigenvectors as ``{"top": [dict, ...], "bottom": [...]}``.
    Raises a one-line :class:`UserInputError` for ``--params`` selecting nothing or k larger than the number of
    parameters, and :class:`NonFiniteError` for a non-finite loss at θ.
    """
    from lossatlas.store import provenance as _provenance

    espec = eval_spec or EvalSpec(splits=(spec.split,))
    evaluator = Evaluator(model, data, espec, device=device)
    op = HessianOperator(evaluator, params=spec.params, dtype=spec.dtype, split=spec.split)
    for k, what in ((spec.top, "--top"), (spec.bottom, "--bottom")):
        if k > op.n:
            raise UserInputError(f"{what} {k} is larger than the {op.n} parameters selected; use {what} <= {op.n}")
    dense = spec.critical and op.n <= spec.dense_limit
    tolerances = spec.tolerances
    extra = {"top": spec.top, "bottom": spec.bottom, "tol": spec.resolved_tol, "dtype": spec.dtype,
             "params": spec.params or "", "split": spec.split, "seed": spec.seed, "max_hvps": spec.max_hvps,
             "grad_tol": tolerances.grad_tol, "eigen_method": "dense" if dense else "lanczos",
             "bn_statistics": BN_STATISTICS[espec.bn] if evaluator.has_bn else "no BatchNorm layers",
             "hessian_spec": json.dumps({k: getattr(v, "value", v) for k, v in asdict(spec).items()}, sort_keys=True)}
    attrs = _provenance("hessian", model, data, espec, extra, provenance)
    store = ResumeDir(resume, attrs["config_hash"], overwrite=overwrite)
    if log and store.resumed:
        log(f"continuing the interrupted job kept in {store.path} ({', '.join(store.resumed)})")
    loss_value, grad = op.value_and_gradient()
    if not math.isfinite(loss_value):
        raise NonFiniteError(f"the loss at this point is {loss_value}; curvature needs a finite loss "
                             "(check the checkpoint and the data)")
    grad_norm = float(flatten(grad).norm())
    common = {"loss": loss_value, "grad_norm": grad_norm, "theta_norm": float(flatten(op.theta).double().norm())}
    job = Phases(op, store, progress)
    tol = spec.resolved_tol
    variables: dict[str, Any] = {}
    vectors: dict[str, list[ParamDict]] = {}
    stats: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    pairs: dict[str, LanczosResult] = {}
    if dense:
        pairs, cp, exact_trace = _dense_analysis(job, spec, common)
        if exact_trace is not None:
            stats.update(trace=exact_trace, trace_stderr=0.0, trace_method="exact", trace_hvps=0)
    else:
        for which, k, name in ((Which.largest, spec.top, "top"), (Which.smallest, spec.bottom, "bottom")):
            if k:
                pairs[name] = job.lanczos(f"{name}-{k}", k, which, tol=tol, max_matvecs=spec.max_hvps,
                                          seed=spec.seed)
                stats[f"{name}_matvecs"], stats[f"{name}_restarts"] = pairs[name].matvecs, pairs[name].restarts
        if spec.trace:
            est = job.trace(spec.trace_method, spec.trace_hvps, spec.seed)
            stats.update(trace=est.trace, trace_stderr=est.stderr, trace_method=est.method.value,
                         trace_hvps=est.matvecs)
    for name, res in pairs.items():
        variables.update(_eigen_vars(name, res))
        vectors[name] = list(res.eigenvectors)
        stats["eps"] = res.eps
    dens = None
    if spec.density:
        dens = job.density("density", probes=spec.probes, steps=spec.steps, bins=spec.bins, seed=spec.seed)
        coords["grid"] = dens.grid.numpy()
        variables.update(density=(("grid",), dens.density.numpy()), density_lo=(("grid",), dens.lower.numpy()),
                         density_hi=(("grid",), dens.upper.numpy()),
                         density_nodes=(("probe", "node"), dens.nodes.numpy()),
                         density_weights=(("probe", "node"), dens.weights.numpy()))
        stats.update(negative_mass=dens.negative_mass(), density_sigma=dens.sigma, density_probes=spec.probes,
                     density_steps=spec.steps)
    if spec.critical and not dense:
        cp = _iterative_verdict(job, spec, pairs, dens, common)
    if spec.critical:
        stats.update(cp.as_attrs())
    attrs.update({"n_params": op.n, "loss_value": loss_value, "grad_norm": grad_norm, **stats,
                  "hvp_count": job.hvp_count})
    ds = xr.Dataset(variables, coords=coords, attrs={k: _jsonable(v) for k, v in attrs.items()})
    return ds, vectors


def _iterative_verdict(job: Phases, spec: HessianSpec, pairs: Mapping[str, LanczosResult],
                       dens: Any, common: dict[str, Any]) -> CriticalPoint:
    """λmin, λmax from the top/bottom runs when both were asked, else a both-ends Lanczos run; the index from
    the SLQ density (the one computed already, or its own) where the extremes do not decide it."""
    start = job.hvp_count
    if "top" in pairs and "bottom" in pairs:
        top, bottom = pairs["top"], pairs["bottom"]
        lam_min, lam_max = float(bottom.eigenvalues[0]), float(top.eigenvalues[0])
        r_min, r_max = float(bottom.residuals[0]), float(top.residuals[0])
        certified = bool(bottom.converged[0]) and bool(top.converged[0])
    else:
        both = job.lanczos("extremes", min(2, job.op.n), Which.both, tol=spec.resolved_tol,
                           max_matvecs=spec.max_hvps, seed=spec.seed, label="λmin and λmax")
        lam_min, lam_max, r_min, r_max, certified = extremes(both)
    pattern = sign_pattern(lam_min, lam_max, spec.tolerances.zero(lam_min, lam_max, max(r_min, r_max)), certified)
    if dens is None and pattern in (SignPattern.indefinite, SignPattern.negative_semidefinite):
        dens = job.density("critical density", probes=spec.probes, steps=spec.steps, bins=spec.bins,
                           seed=spec.seed)
    return from_extremes(lam_min, lam_max, n=job.op.n, residual_min=r_min, residual_max=r_max, certified=certified,
                         density=dens, tolerances=spec.tolerances, hvp_count=job.hvp_count - start, **common)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def save_hessian(ds: xr.Dataset, out: str | Path, vectors: Mapping[str, list[ParamDict]] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a result: JSON when ``out`` ends in ``.json``, else a zarr store (with the eigenvectors).

    Written beside ``out`` and renamed into place, so an interrupted write leaves no half result behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"'{out}' already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.writing")
    _remove(tmp)
    if out.suffix == ".json":
        tmp.write_text(json.dumps(ds.to_dict(data="list"), indent=1, default=_jsonable))
    else:
        ds.to_zarr(tmp, mode="w", consolidated=False)
        if vectors:
            names = [f"{end}_{i}" for end in ("top", "bottom") for i in range(len(vectors.get(end, [])))]
            flat = [v for end in ("top", "bottom") for v in vectors.get(end, [])]
            write_directions(tmp, flat, names)
    _remove(out)
    tmp.rename(out)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


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


__all__ = ["BN_STATISTICS", "DEFAULT_GRAD_TOL", "DEFAULT_TOL", "HessianSpec", "hessian_analysis", "open_hessian",
           "save_hessian"]
