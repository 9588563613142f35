"""Directions in parameter space: random Gaussian, normalised, and between two models.

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
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from lossatlas.errors import UserInputError
from lossatlas.params import ParamDict

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
