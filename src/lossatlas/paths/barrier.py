"""What the path methods share: endpoint checks, the evaluation spec of a path, and loss barriers.

A path γ: [0, 1] → Θ between two models has a *barrier* (Garipov et al. 2018; Frankle et al. 2020;
Ainsworth et al. 2023): the largest excess of the loss over what the endpoints promise,

* ``barrier``      = max_t L(γ(t)) − ((1 − t) L(γ(0)) + t L(γ(1)))   (over the linear interpolation of the
  endpoint losses; Frankle et al. 2020, Ainsworth et al. 2023),
* ``barrier_mean`` = max_t L(γ(t)) − (L(γ(0)) + L(γ(1))) / 2          (over the mean of the endpoint losses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lossatlas.engine import BNPolicy, EvalSpec, Evaluator
from lossatlas.errors import UserInputError


def check_same_architecture(a: Mapping[str, Tensor], b: Mapping[str, Tensor], what: str = "the two models") -> None:
    """One-line error unless two state (or parameter) dicts share names and shapes."""
    for name, t in a.items():
        if name not in b:
            raise UserInputError(f"{what} differ: '{name}' exists only in the first; both must share one "
                                 "architecture (same --model)")
        if tuple(b[name].shape) != tuple(t.shape):
            raise UserInputError(f"{what} differ at '{name}': shapes {tuple(t.shape)} and {tuple(b[name].shape)}; "
                                 "both must share one architecture (same --model)")
    extra = [k for k in b if k not in a]
    if extra:
        raise UserInputError(f"{what} differ: '{extra[0]}' exists only in the second; both must share one "
                             "architecture (same --model)")


def path_eval_spec(loss: str = "cross_entropy", batch_size: int = 1000) -> EvalSpec:
    """The evaluation spec of every point on a path: BN statistics re-estimated on the train split.

    A point between two models has no running statistics of its own; Garipov et al. 2018 (Sec. 5) re-estimate
    them at every evaluated t, so t = 0 reproduces model A with its statistics re-estimated (the engine's
    whole-split statistics, :func:`lossatlas.engine.recompute_statistics`). Nets without BatchNorm are
    unaffected (the ``recompute`` policy is then a no-op).
    """
    return EvalSpec(loss=loss, batch_size=batch_size, bn=BNPolicy.recompute)


def loss_barrier(t: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Barrier heights of one metric along a path sampled at ``t`` (increasing, from 0 to 1).

    Args:
        t: (P,) path parameters with ``t[0] = 0`` and ``t[-1] = 1``.
        values: (P,) the metric (e.g. train loss) at those points.

    Returns:
        ``{"max": max_t L, "barrier": max_t L − linear interpolation of the endpoint values,
        "barrier_mean": max_t L − mean of the endpoint values, "t_max": argmax t}``.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or t.size < 2 or t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError("loss_barrier needs matching 1-D arrays whose t runs from 0 to 1")
    with np.errstate(invalid="ignore"):
        excess = v - ((1.0 - t) * v[0] + t * v[-1])
    if not np.isfinite(v).all():
        return {"max": float("nan"), "barrier": float("nan"), "barrier_mean": float("nan"), "t_max": float("nan")}
    i = int(np.argmax(v))
    return {"max": float(v[i]), "barrier": float(excess.max()),
            "barrier_mean": float(v[i] - 0.5 * (v[0] + v[-1])), "t_max": float(t[i])}


def evaluate_combinations(evaluator: Evaluator, points: Sequence[Mapping[str, Tensor]],
                           coefficients: Tensor) -> dict[str, Tensor]:
    """Metrics at Σ_k coefficients[p, k] P_k for every row p of ``coefficients`` (P, K), through the engine.

    Returns ``{metric: (P,)}`` (float64). A row that is a unit vector gives P_k bit-exactly (0 · x + 1 · y = y),
    so path endpoints reproduce the models themselves.
    """
    chunk = evaluator.points_per_pass()
    parts = []
    for start in range(0, coefficients.shape[0], chunk):
        c = coefficients[start:start + chunk]
        stacked = {name: torch.tensordot(c.to(points[0][name].dtype).to(evaluator.device),
                                         torch.stack([p[name].to(evaluator.device) for p in points]), dims=1)
                   for name in points[0]}
        parts.append(evaluator.evaluate_stacked(stacked))
    return {m: torch.cat([p[m] for p in parts]) for m in evaluator.metric_names}
