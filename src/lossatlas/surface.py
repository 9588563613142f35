"""Loss surfaces on 1D/2D grids and linear interpolation between two models.

Li et al. 2018 (Sec. 3): around θ, plot f(α) = L(θ + α δ) or f(α, β) = L(θ + α δ + β η) for
normalised random directions δ, η. Goodfellow, Vinyals & Saxe 2015: f(α) = L((1 − α) θ_A + α θ_B).

Results are xarray Datasets written to zarr point-chunk by point-chunk through :mod:`lossatlas.store`;
running the same call again resumes an interrupted run and ends with the same numbers.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from lossatlas import __version__
from lossatlas.directions import DirectionSpec, check_directions, direction_between, random_directions
from lossatlas.errors import UserInputError
from lossatlas.evaluate import EvalSpec, Evaluator
from lossatlas.execute import Executor, InProcessExecutor, WorkUnit
from lossatlas.params import ParamDict, buffers_of, float_buffer_names, parameters_of, tensors_sha256
from lossatlas.store import (
    config_hash,
    open_surface,
    prepare_store,
    update_attrs,
    write_directions,
    write_region,
)

Progress = Callable[[int, int], None]
"""Called as ``progress(points_done, points_total)`` after every finished chunk."""

_MAX_POINTS = 10_000_000


@dataclass(frozen=True)
class Axis:
    """Grid coordinates ``numpy.linspace(start, stop, num)``, parsed from ``MIN:MAX:N``."""

    start: float
    stop: float
    num: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.start) and np.isfinite(self.stop)):
            raise UserInputError(f"grid bounds must be finite numbers, got {self.start}:{self.stop}")
        if self.num < 1:
            raise UserInputError(f"a grid needs at least one point, got N={self.num}")
        if self.num > 1 and self.stop <= self.start:
            raise UserInputError(f"grid MAX must be larger than MIN, got {self.start}:{self.stop}")

    @classmethod
    def parse(cls, text: str | Axis, option: str = "--x") -> Axis:
        """``"-1:1:51"`` → ``Axis(-1.0, 1.0, 51)``; one-line error otherwise."""
        if isinstance(text, Axis):
            return text
        parts = str(text).split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise UserInputError(f"{option} must look like MIN:MAX:N (e.g. -1:1:51), got '{text}'") from None
        return cls(start, stop, num)

    def values(self) -> np.ndarray:
        """The coordinates; values within 1e-12 of an integer are snapped to it (α = 0 and 1 exactly)."""
        v = np.linspace(self.start, self.stop, self.num)
        near = np.abs(v - np.round(v)) < 1e-12
        v[near] = np.round(v[near])
        return v

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.num}"


@dataclass
class PointTask:
    """Evaluates the metrics at θ + Σ coords·d for a :class:`WorkUnit` (picklable for executors)."""

    evaluator: Evaluator
    theta: ParamDict
    directions: list[ParamDict]

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]:
        coords = torch.from_numpy(np.asarray(unit.coords, dtype=np.float64))
        result = self.evaluator.evaluate_coords(self.theta, self.directions, coords)
        return {k: v.numpy() for k, v in result.items()}

    @property
    def metric_names(self) -> list[str]:
        """Variables this task fills (the evaluator's metrics; subclasses such as convexity maps add more)."""
        return self.evaluator.metric_names

    def to(self, device: str | torch.device) -> PointTask:
        """Move the task to ``device`` in place (a Dask worker's own GPU); θ and d follow the evaluator."""
        self.evaluator.to(device)
        return self


def grid_units(axes: Mapping[str, np.ndarray], block: int = 8) -> list[WorkUnit]:
    """Split a grid into work units: a row of ``y`` per ``x`` in 2D, blocks of ``block`` points in 1D."""
    names = list(axes)
    if len(names) == 1:
        xs = axes[names[0]]
        return [WorkUnit({names[0]: slice(i, min(i + block, len(xs)))}, xs[i:i + block, None].copy())
                for i in range(0, len(xs), block)]
    xs, ys = axes[names[0]], axes[names[1]]
    return [WorkUnit({names[0]: slice(i, i + 1), names[1]: slice(0, len(ys))},
                     np.stack([np.full(len(ys), xs[i]), ys], axis=1))
            for i in range(len(xs))]


def run_grid(task: PointTask, axes: Mapping[str, np.ndarray], out: str | Path, attrs: dict[str, Any],
             overwrite: bool = False, executor: Executor | None = None,
             progress: Progress | None = None) -> xr.Dataset:
    """Evaluate ``task`` on every grid point not yet in the store at ``out``, writing chunks as they finish."""
    units = grid_units(axes)
    chunks = {name: int(next(iter(units)).region[name].stop - next(iter(units)).region[name].start)
              for name in axes}
    done = prepare_store(out, axes, task.metric_names, attrs, chunks, overwrite=overwrite)
    write_directions(out, task.directions, list(axes))
    todo = [u for u in units if not done[tuple(u.region[d] for d in axes)].all()]
    total = int(done.size)
    finished = int(done.sum()) - sum(int(done[tuple(u.region[d] for d in axes)].sum()) for u in todo)
    if progress:
        progress(finished, total)
    update_attrs(out, status="running")
    for unit, values in (executor or InProcessExecutor()).run(task, todo):
        write_region(out, unit.region, values)
        finished += len(unit.coords)
        if progress:
            progress(finished, total)
    ds = open_surface(out)
    loss_vars = [v for v in ds.data_vars if str(v).endswith("_loss")]
    nonfinite = int((~np.isfinite(np.stack([ds[v].values for v in loss_vars]))).any(axis=0).sum())
    update_attrs(out, status="complete", nonfinite_points=nonfinite)
    ds.attrs.update(status="complete", nonfinite_points=nonfinite)
    return ds


def _provenance(kind: str, model: nn.Module, data: Any, spec: EvalSpec, extra: Mapping[str, Any],
                provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    prov = dict(provenance or {})
    attrs: dict[str, Any] = {
        "kind": kind,
        "lossatlas_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "model": prov.pop("model", type(model).__name__),
        "data": prov.pop("data", getattr(data, "name", "?")),
        "data_sha256": data.fingerprint(),
        "checkpoint_sha256": prov.pop("checkpoint_sha256", None) or tensors_sha256(model.state_dict()),
        "loss": spec.loss,
        "batch_size": spec.batch_size,
        "bn": spec.bn.value,
        **({"subset": spec.subset, "subset_seed": spec.subset_seed} if spec.subset is not None else {}),
        **extra,
        **prov,
    }
    ignore_for_hash = {"created", "python_version", "torch_version", "lossatlas_version"}
    attrs["config_hash"] = config_hash({k: v for k, v in attrs.items() if k not in ignore_for_hash})
    attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return attrs


def surface(model: nn.Module, data: Any, *, x: Axis | str, y: Axis | str | None = None,
            directions: DirectionSpec | Sequence[Mapping[str, Tensor]] | str | None = None,
            eval_spec: EvalSpec | None = None, out: str | Path, overwrite: bool = False,
            provenance: Mapping[str, Any] | None = None, executor: Executor | None = None,
            progress: Progress | None = None, device: str = "cpu", hessian: bool | Any = False) -> xr.Dataset:
    """The loss surface around ``model``'s weights θ (Li et al. 2018).

    Args:
        model: the network at θ (never modified).
        data: a :class:`lossatlas.data.Dataset`.
        x, y: grid axes (``Axis`` or ``"MIN:MAX:N"``); ``y=None`` gives a 1D curve.
        directions: a :class:`DirectionSpec` (random, normalised; default filter-wise, seed 0), or explicit
            direction dicts (one per axis), used as given, or ``"hessian"``: the top Hessian eigenvectors
            at θ (unit norm; :func:`lossatlas.curvature.maps.hessian_directions`).
        eval_spec: loss, batch size and BN policy.
        hessian: ``True`` or a :class:`lossatlas.curvature.maps.ConvexitySpec`: also store ``lambda_max``,
            ``lambda_min`` and ``convexity_ratio`` = |λmin/λmax| at every point (Li et al. 2018, Fig. 7).
        out: zarr store path; an existing store of the same configuration is resumed.
        provenance: strings to record (``model`` and ``data`` specs, ``checkpoint_sha256``, ...).

    Returns:
        Dataset with dims ``x`` (and ``y``) and variables ``train_loss``, ``test_loss``,
        ``train_accuracy``, ``test_accuracy`` (those that apply), shape ``(len(x), len(y))``.
    """
    spec = eval_spec or EvalSpec()
    axes = {"x": Axis.parse(x, "--x").values()}
    if y is not None:
        axes["y"] = Axis.parse(y, "--y").values()
    n_points = int(np.prod([len(v) for v in axes.values()]))
    if n_points > _MAX_POINTS:
        raise UserInputError(f"the grid has {n_points} points; at most {_MAX_POINTS} are supported")
    evaluator = Evaluator(model, data, spec, device=device)
    theta = evaluator.theta()
    extra: dict[str, Any] = {"x": str(Axis.parse(x)), "y": str(Axis.parse(y)) if y is not None else ""}
    if isinstance(directions, str):
        from lossatlas.curvature.maps import hessian_directions

        if directions != "hessian":
            raise UserInputError(f"--directions must be random or hessian, got '{directions}'")
        dirs, eigenvalues = hessian_directions(evaluator, theta, len(axes))
        extra.update(seed=-1, norm="unit", ignore="none", directions="hessian",
                     hessian_eigenvalues=[float(v) for v in eigenvalues])
    elif directions is None or isinstance(directions, DirectionSpec):
        dspec = directions or DirectionSpec()
        dirs = random_directions(theta, dspec, len(axes))
        extra.update(seed=dspec.seed, norm=dspec.norm.value, ignore=dspec.ignore.value, directions="random")
    else:
        dirs = [{k: d[k].to(theta[k].dtype) for k in theta} if all(k in d for k in theta) else dict(d)
                for d in directions]
        check_directions(dirs, theta)
        if len(dirs) != len(axes):
            raise UserInputError(f"{len(axes)} grid axes need {len(axes)} directions, got {len(dirs)}")
        extra.update(seed=-1, norm="given", ignore="given",
                     directions="given:" + tensors_sha256({f"{i}.{k}": v for i, d in enumerate(dirs)
                                                           for k, v in d.items()})[:16])
    task = PointTask(evaluator, theta, dirs)
    if hessian:
        from lossatlas.curvature.maps import ConvexitySpec, CurvatureTask

        cspec = hessian if isinstance(hessian, ConvexitySpec) else ConvexitySpec()
        task = CurvatureTask(evaluator, theta, dirs, cspec)
        extra["hessian"] = cspec.describe()
    attrs = _provenance("surface", model, data, spec, extra, provenance)
    return run_grid(task, axes, out, attrs, overwrite, executor, progress)


def interpolation_point(model: nn.Module) -> ParamDict:
    """Parameters and float buffers (BN running statistics) of a model: what interpolation moves."""
    theta = parameters_of(model)
    buffers = buffers_of(model)
    theta.update({k: buffers[k] for k in float_buffer_names(model)})
    return theta


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Any, *, x: Axis | str = "-0.5:1.5:41",
                eval_spec: EvalSpec | None = None, out: str | Path, overwrite: bool = False,
                provenance: Mapping[str, Any] | None = None, executor: Executor | None = None,
                progress: Progress | None = None, device: str = "cpu") -> xr.Dataset:
    """L((1 − α) θ_A + α θ_B) for α on ``x`` (Goodfellow et al. 2015; Li et al. 2018 Fig. 2).

    Parameters and BN running statistics are interpolated together, so α = 0 is exactly model A and
    α = 1 exactly model B (include 0 and 1 in ``x`` to get the endpoints).
    """
    spec = eval_spec or EvalSpec()
    axis = Axis.parse(x, "--x")
    theta_a, theta_b = interpolation_point(model_a), interpolation_point(model_b)
    for k, v in theta_a.items():
        if k in theta_b and theta_b[k].shape != v.shape:
            raise UserInputError(f"the two models differ at '{k}': shapes {tuple(v.shape)} and "
                                 f"{tuple(theta_b[k].shape)}; both must share one architecture")
    direction = direction_between(theta_a, theta_b)
    evaluator = Evaluator(model_a, data, spec, device=device)
    prov = dict(provenance or {})
    extra = {"x": str(axis), "y": "", "seed": prov.pop("seed", -1), "norm": "none", "ignore": "none",
             "directions": "between", "checkpoint2_sha256": prov.pop("checkpoint2_sha256", None)
             or tensors_sha256(model_b.state_dict())}
    attrs = _provenance("interpolation", model_a, data, spec, extra, prov)
    return run_grid(PointTask(evaluator, theta_a, [direction]), {"x": axis.values()}, out, attrs,
                    overwrite, executor, progress)


__all__ = ["Axis", "PointTask", "grid_units", "interpolate", "run_grid", "surface"]
