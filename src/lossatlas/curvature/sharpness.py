"""Sharpness of a minimum beyond λmax: Keskar et al.'s ε-sharpness and the width of a 1-D loss curve.

* :func:`epsilon_sharpness` — Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017 ("On large-batch training
  for deep learning: generalization gap and sharp minima", Metric 2.1) with A = I (the full space):

      φ_x(ε) = 100 · (max_{y ∈ C_ε} f(x + y) − f(x)) / (1 + f(x)),
      C_ε = {y : |y_i| ≤ ε (|x_i| + 1) for every coordinate i},

  the largest relative rise of the training loss f in a box whose sides scale with |x_i| + 1. Like Keskar
  et al. we solve the inner maximisation inexactly with a few iterations of L-BFGS-B (scipy, box bounds).
  Our choice: the ascent starts from a seeded uniform point of the box (at an exact minimum the gradient
  at y = 0 vanishes and L-BFGS-B would not move), and φ reports the largest f seen, the start included.
  The measure is not invariant to rescaling the weights (Dinh et al. 2017), which is Li et al.'s point.
* :func:`curve_width` — the width of a 1-D curve f(α) = L(θ + α d) at height ``h`` above its value at the
  centre: the distances left and right of α = 0 to the first crossing of L(θ) + h, linearly interpolated
  between grid points. On a filter-normalised direction (Li et al. 2018, Sec. 4) it is the
  "filter-normalised width" whose ordering Li et al. compare with test error; on a unit direction the two
  distances are the radius of the basin along that direction (Im, Tao & Branson 2016, Sec. 4).

Nothing here loops over data: losses and gradients come from the engine (:func:`engine_value_and_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossatlas.engine import Evaluator
from lossatlas.params import ParamDict, flatten, unflatten

ValueAndGradient = Callable[[ParamDict], tuple[float, ParamDict]]
"""``point -> (f(point), ∇f(point))`` for a parameter dict."""


def engine_value_and_gradient(evaluator: Evaluator, *, split: str = "train",
                              dtype: torch.dtype = torch.float32) -> ValueAndGradient:
    """f and ∇f of the split-averaged loss at any point, through the engine's batch loop
    (:meth:`lossatlas.curvature.hvp.HessianOperator.value_and_gradient`; float64 accumulation)."""
    from lossatlas.curvature.hvp import HessianOperator

    def value_and_gradient(point: ParamDict) -> tuple[float, ParamDict]:
        op = HessianOperator(evaluator, point, dtype=dtype, split=split, cache=False)
        return op.value_and_gradient()

    return value_and_gradient


@dataclass(frozen=True)
class EpsilonSharpness:
    """Result of :func:`epsilon_sharpness`.

    Attributes:
        sharpness: φ in percent (Keskar et al.'s unit).
        loss: f(x).
        loss_max: the largest f(x + y) found in the box.
        epsilon: ε.
        evaluations: f/∇f evaluations used.
        seed: seed of the start point.
    """

    sharpness: float
    loss: float
    loss_max: float
    epsilon: float
    evaluations: int
    seed: int


def epsilon_sharpness(value_and_gradient: ValueAndGradient, theta: Mapping[str, Tensor], *,
                      epsilon: float = 1e-3, max_iter: int = 10, seed: int = 0) -> EpsilonSharpness:
    """Keskar et al. 2017's ε-sharpness of f at x = θ over the box C_ε (A = I).

    Args:
        value_and_gradient: f and ∇f at a parameter dict (e.g. :func:`engine_value_and_gradient`).
        theta: x; its keys, shapes and dtypes define the box.
        epsilon: ε (Keskar et al. report 1e-3 and 5e-4).
        max_iter: L-BFGS-B iterations of the inner maximisation.
        seed: seed of the uniform start point in the box.

    Returns:
        :class:`EpsilonSharpness` (φ in percent).
    """
    from scipy.optimize import Bounds, minimize

    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    like = {k: v.detach() for k, v in theta.items()}
    x0 = flatten(like).double().cpu().numpy()
    half = epsilon * (np.abs(x0) + 1.0)
    f0, _ = value_and_gradient(like)
    best = [float(f0)]
    calls = [1]

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        point = unflatten(torch.from_numpy(x0 + y), like)
        value, g = value_and_gradient(point)
        calls[0] += 1
        if np.isfinite(value):
            best[0] = max(best[0], float(value))
        return -float(value), -flatten(g).double().cpu().numpy()

    start = np.random.default_rng(seed).uniform(-half, half)
    minimize(negative, start, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half),
             options={"maxiter": int(max_iter)})
    phi = 100.0 * (best[0] - float(f0)) / (1.0 + float(f0))
    return EpsilonSharpness(sharpness=phi, loss=float(f0), loss_max=best[0], epsilon=float(epsilon),
                            evaluations=calls[0], seed=int(seed))


@dataclass(frozen=True)
class CurveWidth:
    """Where a 1-D curve first rises ``height`` above its centre value, on each side of the centre.

    Attributes:
        left, right: distances (in α units, ≥ 0) from the centre to the first crossing on each side; when
            the curve stays below on a side, the distance to the grid's end and ``censored_*`` is True.
        width: ``left + right``.
        height: the rise h that defines the crossing.
        centre_value: f at the centre.
    """

    left: float
    right: float
    height: float
    centre_value: float
    censored_left: bool
    censored_right: bool

    @property
    def width(self) -> float:
        return self.left + self.right

    @property
    def censored(self) -> bool:
        return self.censored_left or self.censored_right


def _first_crossing(a: np.ndarray, v: np.ndarray, level: float) -> tuple[float, bool]:
    """Distance |a| to where ``v`` first exceeds ``level``, walking the samples outward from ``a[0] = 0``
    (``v[0] < level``); linear interpolation between the two samples around the crossing, or the last finite
    sample before a non-finite one. ``(|a[-1]|, True)`` when ``v`` never exceeds ``level``."""
    for j in range(1, a.size):
        if not np.isfinite(v[j]):
            return float(abs(a[j - 1])), False
        if v[j] > level:
            frac = (level - v[j - 1]) / (v[j] - v[j - 1])
            return float(abs(a[j - 1]) + frac * (abs(a[j]) - abs(a[j - 1]))), False
    return float(abs(a[-1])), True


def curve_width(alpha: np.ndarray, values: np.ndarray, height: float, *, centre: float = 0.0) -> CurveWidth:
    """Width of the curve ``values(alpha)`` at ``height`` above its value at ``alpha == centre``.

    Args:
        alpha: (P,) increasing grid coordinates containing ``centre``.
        values: (P,) the curve (e.g. the train loss of a surface along one direction); a non-finite value
            counts as above every level.
        height: h > 0, the rise above f(centre) that bounds the width.
        centre: the coordinate of θ itself (0 for a surface around θ).

    Returns:
        :class:`CurveWidth`; for a piecewise-linear curve the crossings are exact.
    """
    a = np.asarray(alpha, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape or a.size < 2 or not np.all(np.diff(a) > 0):
        raise ValueError("curve_width needs matching 1-D arrays with increasing alpha")
    hits = np.flatnonzero(a == centre)
    if hits.size != 1:
        raise ValueError(f"alpha must contain the centre {centre} exactly once")
    if not height > 0:
        raise ValueError(f"height must be positive, got {height}")
    i = int(hits[0])
    if not np.isfinite(v[i]):
        raise ValueError(f"the curve is not finite at its centre ({v[i]})")
    level = float(v[i]) + float(height)
    right, cr = _first_crossing(a[i:] - centre, v[i:], level)
    left, cl = _first_crossing((a[:i + 1] - centre)[::-1], v[:i + 1][::-1], level)
    return CurveWidth(left=left, right=right, height=float(height), centre_value=float(v[i]),
                      censored_left=cl, censored_right=cr)


__all__ = ["CurveWidth", "EpsilonSharpness", "ValueAndGradient", "curve_width", "engine_value_and_gradient",
           "epsilon_sharpness"]
