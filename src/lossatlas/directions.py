"""Directions in parameter space: random Gaussian, normalised, between two models, and the plane through three.

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018,
Sec. 4: a random direction ``d`` with entries drawn from N(0, 1) is *filter-normalised* so that each
filter ``d[i]`` (each output slice of a weight tensor) has the norm of the same filter of θ:

    d[i] ← d[i] / ‖d[i]‖ · ‖θ[i]‖.

This makes 1D/2D plots comparable across networks and invariant to the rescaling symmetry of ReLU
networks (layer l × c, layer l+1 × 1/c). Unlike some tools, the raw directions here are Gaussian, not
uniform, and every choice is reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossatlas.errors import UserInputError
from lossatlas.params import ParamDict, file_sha256, inner, read_state_dict
from lossatlas.params import norm as param_norm

_EPS = 1e-10


class Norm(str, Enum):
    """How a random direction is rescaled to the scale of θ."""

    filter = "filter"
    """Each output slice (filter / neuron row) of each tensor gets the norm of θ's slice (Li et al.)."""
    layer = "layer"
    """Each tensor gets the norm of θ's tensor."""
    model = "model"
    """The whole direction gets the norm of θ."""
    none = "none"
    """Raw N(0, 1) entries."""


class Ignore(str, Enum):
    """Which tensors get a zero direction."""

    biasbn = "biasbn"
    """Every 1-D tensor (biases, BatchNorm affine parameters and statistics): Li et al.'s default."""
    none = "none"
    """Perturb every tensor; 1-D tensors are normalised as a single filter."""


@dataclass(frozen=True)
class DirectionSpec:
    """How to draw the random directions of a surface.

    Attributes:
        norm: normalisation (:class:`Norm`).
        ignore: tensors given a zero direction (:class:`Ignore`).
        seed: seed of the ``torch.Generator`` that draws every entry; axis ``i`` uses the i-th draw.
    """

    norm: Norm = Norm.filter
    ignore: Ignore = Ignore.biasbn
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _as_enum(Norm, self.norm, "--norm"))
        object.__setattr__(self, "ignore", _as_enum(Ignore, self.ignore, "--ignore"))
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserInputError(f"seed must be a non-negative integer, got {self.seed!r}")


def _as_enum(kind: type[Enum], value: object, option: str) -> Enum:
    try:
        return kind(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise UserInputError(f"{option} must be one of {choices}; got '{value}'") from None


def gaussian_direction(theta: Mapping[str, Tensor], generator: torch.Generator) -> ParamDict:
    """Entries i.i.d. N(0, 1), same shapes as θ, drawn in key order from ``generator`` (CPU, float32)."""
    return {
        k: torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype)
        for k, t in theta.items()
    }


def normalize_direction(direction: Mapping[str, Tensor], theta: Mapping[str, Tensor],
                        norm: Norm | str = Norm.filter, ignore: Ignore | str = Ignore.biasbn) -> ParamDict:
    """Rescale ``direction`` to the scale of ``theta`` (Li et al. 2018, Sec. 4).

    Args:
        direction: dict of tensors shaped like ``theta``.
        theta: the point the direction is attached to.
        norm: ``filter`` (per output slice ``d[i]`` of each tensor, ‖d[i]‖ → ‖θ[i]‖), ``layer``
            (per tensor), ``model`` (whole vector) or ``none``.
        ignore: ``biasbn`` zeroes every tensor with ``ndim <= 1``; ``none`` keeps them (a 1-D tensor is
            normalised as one filter: unlike Li et al.'s code, which copies θ into the direction).

    Returns:
        a new dict; inputs are not modified.
    """
    norm = Norm(norm)
    ignore = Ignore(ignore)
    out: ParamDict = {}
    for k, d in direction.items():
        w = theta[k]
        if ignore is Ignore.biasbn and d.dim() <= 1:
            out[k] = torch.zeros_like(d)
        elif norm is Norm.filter and d.dim() >= 1:
            flat_d = d.reshape(d.shape[0], -1) if d.dim() > 1 else d.reshape(1, -1)
            flat_w = w.reshape(flat_d.shape)
            scale = flat_w.norm(dim=1, keepdim=True) / (flat_d.norm(dim=1, keepdim=True) + _EPS)
            out[k] = (flat_d * scale).reshape(d.shape)
        elif norm in (Norm.filter, Norm.layer):  # layer, or a 0-d tensor under filter
            out[k] = d * (w.norm() / (d.norm() + _EPS))
        else:
            out[k] = d.clone()
    if norm is Norm.model:
        kept = [k for k in out if not (ignore is Ignore.biasbn and out[k].dim() <= 1)]
        d_norm = torch.sqrt(sum((out[k].double() ** 2).sum() for k in kept))  # type: ignore[arg-type]
        w_norm = torch.sqrt(sum((theta[k].double() ** 2).sum() for k in kept))  # type: ignore[arg-type]
        scale = (w_norm / (d_norm + _EPS)).item()
        out = {k: v * scale for k, v in out.items()}
    return out


def random_directions(theta: Mapping[str, Tensor], spec: DirectionSpec, count: int) -> list[ParamDict]:
    """``count`` normalised Gaussian directions at θ, reproducible from ``spec.seed``.

    The i-th direction is the i-th draw of one generator, so the x direction of a 2D surface equals the
    direction of the 1D surface with the same seed.
    """
    generator = torch.Generator().manual_seed(spec.seed)
    raw = [gaussian_direction(theta, generator) for _ in range(count)]
    return [normalize_direction(d, theta, spec.norm, spec.ignore) for d in raw]


def direction_between(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor]) -> ParamDict:
    """θ_B − θ_A, so that θ_A + α(θ_B − θ_A) = (1 − α) θ_A + α θ_B (Goodfellow et al. 2015)."""
    missing = [k for k in theta_a if k not in theta_b]
    if missing:
        raise UserInputError(f"the second model has no parameter '{missing[0]}'; both must share one architecture")
    return {k: theta_b[k].to(v.dtype) - v for k, v in theta_a.items()}


def check_directions(directions: Sequence[Mapping[str, Tensor]], theta: Mapping[str, Tensor]) -> None:
    """Raise a one-line error if a direction does not cover θ's keys and shapes."""
    for i, d in enumerate(directions):
        for k, t in theta.items():
            if k not in d:
                raise UserInputError(f"direction {i} has no entry for parameter '{k}'")
            if tuple(d[k].shape) != tuple(t.shape):
                raise UserInputError(
                    f"direction {i} entry '{k}' has shape {tuple(d[k].shape)}, parameter has {tuple(t.shape)}"
                )


# -- directions from trained models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDirections:
    """Two orthonormal directions derived from trained models, the checkpoint the plane is centred at, and the
    models that define it with their coordinates in the plane (stored with the surface so plots can mark them).

    Attributes:
        kind: ``"plane"`` (three models, :func:`plane_through`) or ``"pca"`` (a trajectory,
            :mod:`lossatlas.paths.pca`).
        directions: two unit-norm, orthogonal direction dicts over θ's keys (float64).
        centre: checkpoint file at the plane's origin (0, 0): model A, or the final checkpoint of a run.
        checkpoints: the *anchors*: the models that define the plane (A, B, C; or every checkpoint of a run).
        labels: ``(k,)`` one label per anchor (``"A"``, ``"B"``, ``"C"``; or the epoch).
        coords: ``(k, 2)`` float64 coordinates of each anchor's orthogonal projection onto the plane (in units of
            parameter-space distance, since the directions have unit norm).
        residuals: ``(k,)`` float64 distance of each anchor from the plane (0 for A, B and C).
        attrs: what the store records about the inputs (JSON-able; part of its configuration hash).
        results: derived numbers the store records after the run (not hashed: float rounding may differ between
            machines).
        anchor_variables: more ``(k,)`` arrays stored per anchor (``distance``, ...).
        variables: other 1-D results, ``name -> (dim, values)`` (e.g. explained-variance ratios).
    """

    kind: str
    directions: tuple[ParamDict, ParamDict]
    centre: Path
    checkpoints: tuple[Path, ...]
    labels: np.ndarray
    coords: np.ndarray
    residuals: np.ndarray
    attrs: Mapping[str, Any]
    results: Mapping[str, Any] = field(default_factory=dict)
    anchor_variables: Mapping[str, np.ndarray] = field(default_factory=dict)
    variables: Mapping[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    @property
    def dim(self) -> str:
        """Dimension of the anchors in a store: ``epoch`` (a path) or ``anchor`` (A, B, C)."""
        return "epoch" if self.kind == "pca" else "anchor"

    @property
    def prefix(self) -> str:
        """Prefix of the anchors' variables: ``path_x``, ``path_y``, ... or ``anchor_x``, ``anchor_y``, ..."""
        return "path" if self.kind == "pca" else "anchor"


def plane_directions(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor],
                     theta_c: Mapping[str, Tensor]) -> tuple[tuple[ParamDict, ParamDict], np.ndarray]:
    """The plane through three points by Gram–Schmidt (Garipov et al. 2018, Sec. 5 and their ``plane.py``).

    u = (B − A) / ‖B − A‖,   v = w / ‖w‖ with w = (C − A) − ⟨C − A, u⟩ u,

    so θ(x, y) = A + x u + y v has A at (0, 0), B at (‖B − A‖, 0) and C at (⟨C − A, u⟩, ‖w‖): the directions
    have unit norm and the coordinates are Euclidean distances in parameter space (Garipov's scaling).

    Returns:
        ``((u, v), coords)``: float64 direction dicts over ``theta_a``'s keys and the ``(3, 2)`` coordinates of
        A, B and C.
    """
    ab = {k: theta_b[k].double() - v.double() for k, v in theta_a.items()}
    ac = {k: theta_c[k].double() - v.double() for k, v in theta_a.items()}
    dx = param_norm(ab)
    if dx == 0.0:
        raise UserInputError("the models A and B of plane:A,B,C are the same point; pass three different models")
    u = {k: t / dx for k, t in ab.items()}
    cx = float(inner(ac, u))
    w = {k: ac[k] - cx * u[k] for k in ac}
    dy = param_norm(w)
    if dy <= 1e-12 * max(dx, param_norm(ac)):
        raise UserInputError("the model C of plane:A,B,C lies on the line through A and B; it spans no plane")
    v = {k: t / dy for k, t in w.items()}
    return (u, v), np.array([[0.0, 0.0], [dx, 0.0], [cx, dy]])


def plane_through(checkpoints: Sequence[str | Path], keys: Sequence[str]) -> ModelDirections:
    """The plane through three checkpoint files A, B, C over the tensors ``keys`` (θ's: parameters, and BN
    statistics under the ``states`` policy); see :func:`plane_directions`."""
    if len(checkpoints) != 3:
        raise UserInputError(f"plane:A,B,C needs three checkpoint files, got {len(checkpoints)}")
    paths = tuple(Path(p) for p in checkpoints)
    points = [_read_point(p, keys) for p in paths]
    shapes = {k: tuple(t.shape) for k, t in points[0].items()}
    for p, point in zip(paths[1:], points[1:], strict=True):
        for k, t in point.items():
            if tuple(t.shape) != shapes[k]:
                raise UserInputError(f"checkpoint '{p}' has '{k}' of shape {tuple(t.shape)} but '{paths[0]}' has "
                                     f"{shapes[k]}; the three models must share one architecture")
    dirs, coords = plane_directions(*points)
    names = ("A", "B", "C")
    attrs = {"directions": "plane", "norm": "unit", "ignore": "none", "seed": -1,
             "plane_checkpoints": [str(p) for p in paths], "plane_sha256": [file_sha256(p) for p in paths]}
    results = {"anchors": {n: [float(c[0]), float(c[1])] for n, c in zip(names, coords, strict=True)}}
    return ModelDirections("plane", dirs, paths[0], paths, np.array(names), coords, np.zeros(3), attrs, results)


def _read_point(path: Path, keys: Sequence[str]) -> ParamDict:
    state = read_state_dict(path)
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserInputError(f"checkpoint '{path}' has no tensor '{missing[0]}'; all models must share the "
                             "architecture given by --model")
    return {k: state[k] for k in keys}


@dataclass(frozen=True)
class PlaneSpec:
    """``plane:A,B,C``: the plane through three checkpoint files, centred at A (:func:`plane_directions`)."""

    checkpoints: tuple[Path, Path, Path]

    @classmethod
    def parse(cls, text: str) -> PlaneSpec:
        """``"plane:a.safetensors,b.safetensors,c.safetensors"`` → ``PlaneSpec``; one-line error otherwise."""
        files = [f.strip() for f in text.split(":", 1)[1].split(",")] if text.startswith("plane:") else []
        if len(files) != 3 or not all(files):
            raise UserInputError(f"--directions plane needs three checkpoint files: plane:A,B,C, got '{text}'")
        return cls((Path(files[0]), Path(files[1]), Path(files[2])))

    @property
    def centre(self) -> Path:
        """Model A, at the origin of the plane."""
        return self.checkpoints[0]

    def build(self, theta: Mapping[str, Tensor]) -> ModelDirections:
        """The plane's directions over θ's keys."""
        return plane_through(self.checkpoints, list(theta))
