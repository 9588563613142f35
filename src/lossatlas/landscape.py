"""Loss surfaces on 1D/2D grids and linear interpolation between two models.

Li et al. 2018 (Sec. 3): around θ, plot f(α) = L(θ + α δ) or f(α, β) = L(θ + α δ + β η) for
normalised random directions δ, η. Goodfellow, Vinyals & Saxe 2015: f(α) = L((1 − α) θ_A + α θ_B).

Results are xarray Datasets written to zarr point-chunk by point-chunk through :func:`lossatlas.grid.run_grid`;
running the same call again resumes an interrupted run and ends with the same numbers.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor, nn

from lossatlas.directions import (
    DirectionSpec,
    Ignore,
    ModelDirections,
    PlaneSpec,
    check_directions,
    direction_between,
    random_directions,
)
from lossatlas.engine import BNPolicy, EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.execute import Executor
from lossatlas.grid import Axis, PointTask, Progress, run_grid
from lossatlas.params import (
    ParamDict,
    buffers_of,
    file_sha256,
    float_buffer_names,
    load_checkpoint,
    parameters_of,
    read_state_dict,
    tensors_sha256,
)
from lossatlas.store import load_directions, open_surface, read_attrs, update_attrs
from lossatlas.store import provenance as _provenance

AUTO_POINTS = 25
"""Points per axis of the automatic grid around the anchors of directions from models."""


class ModelSource(Protocol):
    """Directions from models before they are built: the centre checkpoint and ``build(θ) -> ModelDirections``
    (:class:`~lossatlas.directions.PlaneSpec`, :class:`~lossatlas.paths.pca.PCASpec`)."""

    @property
    def centre(self) -> Path: ...

    def build(self, theta: Mapping[str, Tensor]) -> ModelDirections: ...


@contextmanager
def _result_store(out: str | Path | None) -> Iterator[Path]:
    """``out`` itself, or (``out=None``) a temporary store deleted once the result is in memory."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="lossatlas-") as tmp:
        yield Path(tmp) / "result.zarr"


def is_store_path(value: Any) -> bool:
    """Whether a ``directions`` value names a stored run (a path ending in ``.zarr`` or an existing folder)."""
    return isinstance(value, str | Path) and (str(value).rstrip("/").endswith(".zarr") or Path(value).is_dir())


def directions_from_store(path: str | Path, n: int) -> tuple[list[dict[str, Tensor]], dict[str, Any]]:
    """The first ``n`` directions a stored run used (as loss-landscape's ``--dir_file``) and the attrs to record.

    The same plane can then be mapped at other checkpoints or BN settings. A Hessian result's eigenvectors
    work too (top first, then bottom).
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"--directions: store '{path}' does not exist; pass the --out of a surface run")
    dirs = load_directions(path)
    if len(dirs) < n:
        raise UserInputError(f"--directions: '{path}' holds {len(dirs)} direction(s), a {n}D grid needs {n}")
    source = read_attrs(path)
    extra: dict[str, Any] = {k: source[k] for k in ("seed", "norm", "ignore") if k in source}
    return dirs[:n], {**extra, "directions_from": str(path)}


def surface(model: nn.Module, data: Any, *, x: Axis | str | None = None, y: Axis | str | None = None,
            directions: DirectionSpec | Sequence[Mapping[str, Tensor]] | str | Path | ModelSource | ModelDirections
            | None = None,
            eval_spec: EvalSpec | None = None, out: str | Path | None = None, overwrite: bool = False,
            provenance: Mapping[str, Any] | None = None, executor: Executor | None = None,
            progress: Progress | None = None, device: str = "cpu", hessian: bool | Any = False) -> xr.Dataset:
    """The loss surface around ``model``'s weights θ (Li et al. 2018).

    Args:
        model: the network at θ (never modified).
        data: a :class:`lossatlas.data.Dataset`.
        x, y: grid axes (``Axis`` or ``"MIN:MAX:N"``); ``y=None`` gives a 1D curve. Default ``x``: ``-1:1:51``;
            for directions from models (``plane:``, ``pca:``) both default to the anchors' extent with a margin
            (:func:`anchor_axes`).
        directions: a :class:`DirectionSpec` (random, normalised; default filter-wise, seed 0), or explicit
            direction dicts (one per axis), used as given, or ``"hessian"``: the top Hessian eigenvectors
            at θ (unit norm; :func:`lossatlas.curvature.maps.hessian_directions`), or directions from models:
            ``"plane:A,B,C"`` / :class:`~lossatlas.directions.PlaneSpec` (the plane through three checkpoints,
            centred at A; Garipov et al. 2018) or ``"pca:RUN_DIR"`` / :class:`~lossatlas.paths.pca.PCASpec`
            (a training run's PCA plane, centred at its final checkpoint; Li et al. 2018). Those replace
            ``model``'s weights by the centre's and store the anchors (A, B, C or the path): coordinates,
            off-plane residual, the loss of each checkpoint as it is and the loss at its projection. Or the
            path of a stored run (``"run/surface.zarr"``): its directions are reused, so one plane can be
            compared across checkpoints and BN settings (:func:`directions_from_store`).
        eval_spec: loss, batch size and BN policy.
        hessian: ``True`` or a :class:`lossatlas.curvature.maps.ConvexitySpec`: also store ``lambda_max``,
            ``lambda_min`` and ``convexity_ratio`` = |λmin/λmax| at every point (Li et al. 2018, Fig. 7).
        out: zarr store path; an existing store of the same configuration is resumed. ``None``: compute in
            a temporary store and return the Dataset only (nothing kept on disk, no resume, and the
            directions are not kept: pass ``out`` to reuse them).
        provenance: strings to record (``model`` and ``data`` specs, ``checkpoint_sha256``, ...).

    Returns:
        Dataset with dims ``x`` (and ``y``) and variables ``train_loss``, ``test_loss``,
        ``train_accuracy``, ``test_accuracy`` (those that apply), shape ``(len(x), len(y))``.
    """
    spec = eval_spec or EvalSpec()
    source = model_source(directions)
    prov = dict(provenance or {})
    if source is not None:
        model = load_checkpoint(model, source.centre)
        prov.update(checkpoint=str(source.centre), checkpoint_sha256=file_sha256(source.centre),
                    weights=f"checkpoint {source.centre}")
    evaluator = Evaluator(model, data, spec, device=device)
    theta = evaluator.theta()
    anchors = None
    if source is not None:
        anchors = source if isinstance(source, ModelDirections) else source.build(theta)
        if x is None and y is None:
            x, y = anchor_axes(anchors.coords)
        elif x is None or y is None:
            raise UserInputError("directions from models span a plane: pass both --x and --y, or neither for the "
                                 "anchors' extent")
    x = "-1:1:51" if x is None else x
    axes = {"x": Axis.parse(x, "--x").values()}
    if y is not None:
        axes["y"] = Axis.parse(y, "--y").values()
    extra: dict[str, Any] = {"x": str(Axis.parse(x)), "y": str(Axis.parse(y)) if y is not None else ""}
    reused: dict[str, Any] = {}
    if anchors is None and directions != "hessian" and is_store_path(directions):
        stored, reused = directions_from_store(directions, len(axes))  # type: ignore[arg-type]
        directions = stored
    elif isinstance(directions, Path):
        raise UserInputError(f"--directions '{directions}' is not a stored run; pass a .zarr store of a lossatlas run")
    if anchors is not None:
        dirs = [{k: d[k].to(theta[k].dtype) for k in theta} for d in anchors.directions]
        extra.update(anchors.attrs)
    elif isinstance(directions, str):
        from lossatlas.curvature.maps import hessian_directions

        if directions != "hessian":
            raise UserInputError(f"--directions must be random, hessian, plane:A,B,C or pca:RUN_DIR, got "
                                 f"'{directions}'")
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
        assert not isinstance(directions, str | Path)
        dirs = [{k: d[k].to(theta[k].dtype) for k in theta} if all(k in d for k in theta) else dict(d)
                for d in directions]  # type: ignore[union-attr]
        try:
            check_directions(dirs, theta)
        except UserInputError as exc:
            if not reused:
                raise
            raise UserInputError(f"--directions '{reused['directions_from']}' does not fit this model: {exc}"
                                 ) from None
        if len(dirs) != len(axes):
            raise UserInputError(f"{len(axes)} grid axes need {len(axes)} directions, got {len(dirs)}")
        extra.update(seed=-1, norm="given", ignore="given",
                     directions="given:" + tensors_sha256({f"{i}.{k}": v for i, d in enumerate(dirs)
                                                           for k, v in d.items()})[:16])
        extra.update(reused)
    task = PointTask(evaluator, theta, dirs)
    if hessian:
        from lossatlas.curvature.maps import ConvexitySpec, CurvatureTask, record_unconverged

        cspec = hessian if isinstance(hessian, ConvexitySpec) else ConvexitySpec()
        task = CurvatureTask(evaluator, theta, dirs, cspec)
        extra["hessian"] = cspec.describe()
    attrs = _provenance("surface", model, data, spec, extra, prov)
    with _result_store(out) as path:
        ds = run_grid(task, axes, path, attrs, overwrite, executor, progress)
        if hessian:
            ds = record_unconverged(path, ds)
        if anchors is not None:
            write_anchors(path, anchors, evaluator, theta, dirs)
            ds = open_surface(path)
    return ds


def model_source(directions: Any) -> ModelSource | None:
    """Directions from models: ``"plane:A,B,C"`` / ``"pca:RUN_DIR"`` parsed, a spec or built directions kept;
    anything else → None."""
    if isinstance(directions, str) and directions.startswith("plane:"):
        return PlaneSpec.parse(directions)
    if isinstance(directions, str) and directions.startswith("pca:"):
        from lossatlas.paths.pca import PCASpec

        return PCASpec.parse(directions)
    if isinstance(directions, ModelDirections) or (hasattr(directions, "centre") and hasattr(directions, "build")):
        return directions  # type: ignore[no-any-return]
    return None


def anchor_axes(coords: np.ndarray, points: int = AUTO_POINTS, margin: float = 0.25) -> tuple[Axis, Axis]:
    """A grid around the anchors (``(k, 2)`` plane coordinates) and the origin: their extent plus ``margin`` of
    its width on each side (Li et al. 2018 Fig. 9; Garipov et al. 2018 Fig. 1), bounds rounded outwards to a
    hundredth of the width, ``points`` per axis."""
    c = np.vstack([np.asarray(coords, dtype=np.float64), np.zeros((1, 2))])
    out = []
    for j in range(2):
        lo, hi = float(c[:, j].min()), float(c[:, j].max())
        width = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
        unit = 10.0 ** math.floor(math.log10(width / 100))
        lo, hi = math.floor((lo - margin * width) / unit) * unit, math.ceil((hi + margin * width) / unit) * unit
        out.append(Axis.parse(f"{lo:.12g}:{hi:.12g}:{points}", "--x" if j == 0 else "--y"))
    return out[0], out[1]


def write_anchors(out: str | Path, anchors: ModelDirections, evaluator: Evaluator, theta: Mapping[str, Tensor],
                  dirs: Sequence[Mapping[str, Tensor]]) -> None:
    """Store each anchor's plane coordinates and residual, its metrics *as is* (``<prefix>_<metric>``: the
    checkpoint with its own BN statistics under ``bn=eval``) and at its projection on the plane
    (``<prefix>_plane_<metric>``: θ₀ + x d₁ + y d₂, the same evaluation as the grid)."""
    dim, p = anchors.dim, anchors.prefix
    plane = evaluator.evaluate_coords(theta, dirs, torch.from_numpy(np.asarray(anchors.coords, dtype=np.float64)))
    true: dict[str, list[float]] = {m: [] for m in evaluator.metric_names}
    for ckpt in anchors.checkpoints:
        state = read_state_dict(ckpt)
        point = {k: state[k].to(theta[k].dtype) for k in theta}
        buffers = ({k: state[k] for k in evaluator.buffers if k in state}
                   if evaluator.spec.bn is BNPolicy.eval else None)
        for m, v in evaluator.evaluate_one(point, buffers).items():
            true[m].append(v)
    variables: dict[str, Any] = {
        f"{p}_x": (dim, anchors.coords[:, 0]), f"{p}_y": (dim, anchors.coords[:, 1]),
        f"{p}_residual": (dim, anchors.residuals),
        **{f"{p}_{m}": (dim, np.asarray(v, dtype=np.float64)) for m, v in true.items()},
        **{f"{p}_plane_{m}": (dim, v.numpy()) for m, v in plane.items()},
        **{f"{p}_{k}": (dim, np.asarray(v)) for k, v in anchors.anchor_variables.items()},
        **{k: (d, np.asarray(v)) for k, (d, v) in anchors.variables.items()}}
    labels = anchors.labels if anchors.kind == "pca" else np.arange(len(anchors.labels))
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)  # appending variables replaces the root attrs
    xr.Dataset(variables, coords={dim: labels}).to_zarr(out, mode="a", consolidated=False)
    update_attrs(out, **{**attrs, "anchor_kind": anchors.kind, "anchor_names": [str(v) for v in anchors.labels],
                         **anchors.results})


def interpolation_point(model: nn.Module) -> ParamDict:
    """Parameters and float buffers (BN running statistics) of a model: what interpolation moves."""
    theta = parameters_of(model)
    buffers = buffers_of(model)
    theta.update({k: buffers[k] for k in float_buffer_names(model)})
    return theta


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Any, *, x: Axis | str = "-0.5:1.5:41",
                eval_spec: EvalSpec | None = None, out: str | Path | None = None, overwrite: bool = False,
                provenance: Mapping[str, Any] | None = None, executor: Executor | None = None,
                progress: Progress | None = None, device: str = "cpu") -> xr.Dataset:
    """L((1 − α) θ_A + α θ_B) for α on ``x`` (Goodfellow et al. 2015; Li et al. 2018 Fig. 2).

    Parameters and BN running statistics are interpolated together, so α = 0 is exactly model A and
    α = 1 exactly model B (include 0 and 1 in ``x`` to get the endpoints). ``out=None`` computes in memory.
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
    alphas = axis.values()
    bad = nonpositive_variance(theta_a, direction, alphas)
    if bad.any() and not (spec.bn is BNPolicy.recompute and evaluator.has_bn):
        extra["nonpositive_variance_at"] = [float(a) for a in alphas[bad]]
    attrs = _provenance("interpolation", model_a, data, spec, extra, prov)
    with _result_store(out) as path:
        return run_grid(PointTask(evaluator, theta_a, [direction]), {"x": alphas}, path, attrs,
                        overwrite, executor, progress)


def nonpositive_variance(theta: Mapping[str, Tensor], direction: Mapping[str, Tensor], alphas: np.ndarray
                         ) -> np.ndarray:
    """Where some BatchNorm ``running_var`` of θ + α d is ≤ 0, a boolean per α.

    Interpolating two models moves their running statistics along the line too; beyond α ∈ [0, 1] a variance
    extrapolates linearly and can reach zero (huge normalised activations: a loss of exactly 0 or inf) or turn
    negative (NaN). Those points say nothing about the landscape; ``--bn recompute`` re-estimates the
    statistics instead.
    """
    bad = np.zeros(len(alphas), dtype=bool)
    for name, value in theta.items():
        if name.endswith("running_var") and name in direction:
            v = value.detach().double().cpu().numpy().ravel()
            d = direction[name].detach().double().cpu().numpy().ravel()
            bad |= ((v[None, :] + np.asarray(alphas)[:, None] * d[None, :]) <= 0).any(axis=1)
    return bad


__all__ = ["anchor_axes", "directions_from_store", "interpolate", "interpolation_point", "is_store_path",
           "nonpositive_variance",
           "model_source", "surface", "write_anchors"]
