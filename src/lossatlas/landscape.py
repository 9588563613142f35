"""Loss surfaces on 1D/2D grids and linear interpolation between two models.

Li et al. 2018 (Sec. 3): around θ, plot f(α) = L(θ + α δ) or f(α, β) = L(θ + α δ + β η) for
normalised random directions δ, η. Goodfellow, Vinyals & Saxe 2015: f(α) = L((1 − α) θ_A + α θ_B).

Results are xarray Datasets written to zarr point-chunk by point-chunk through :func:`lossatlas.grid.run_grid`;
running the same call again resumes an interrupted run and ends with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr
from torch import Tensor, nn

from lossatlas.directions import DirectionSpec, Ignore, check_directions, direction_between, random_directions
from lossatlas.engine import BNPolicy, EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.execute import Executor
from lossatlas.grid import Axis, PointTask, Progress, run_grid
from lossatlas.params import ParamDict, buffers_of, float_buffer_names, parameters_of, tensors_sha256
from lossatlas.store import provenance as _provenance


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
        if spec.bn is BNPolicy.states and evaluator.has_bn and dspec.ignore is Ignore.biasbn:
            raise UserInputError("--bn states perturbs BatchNorm running statistics, but --ignore biasbn gives every "
                                 "1-D tensor (the statistics included) a zero direction; pass --ignore none to "
                                 "perturb them, or use --bn eval / --bn recompute")
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


__all__ = ["interpolate", "interpolation_point", "surface"]
