"""Stochastic trace estimates of the Hessian, with standard errors.

* Hutchinson (1989): tr(H) ≈ (1/m) Σᵢ zᵢᵀ H zᵢ for Rademacher probes zᵢ; the standard error is the sample
  standard deviation of zᵢᵀ H zᵢ over √m.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation"): with m
  products, a third sketch Q = orth(H S) for Rademacher S (n × m/3); tr(Qᵀ H Q) exactly, plus Hutchinson
  on the deflated (I − QQᵀ) H (I − QQᵀ) with the last third. Given Q the estimate is unbiased; its standard
  error is that of the deflated Hutchinson part. Much lower variance when a few eigenvalues dominate,
  as they do for neural-network Hessians (Ghorbani, Krishnan & Xiao 2019).

Both are unbiased, unlike a mean of running averages that stops at a tolerance (the rule some tools use).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch
from torch import Tensor

from lossatlas.errors import UserInputError


class SymmetricOperator(Protocol):
    """What the estimators need: the dimension, a device and flat products ``matvec(v (n,)) -> (n,)``."""

    @property
    def n(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def matvec(self, v: Tensor) -> Tensor: ...


class TraceMethod(str, Enum):
    """Trace estimator."""

    hutchinson = "hutchinson"
    """Plain Hutchinson with Rademacher probes."""
    hutchpp = "hutch++"
    """Hutch++: exact trace of a sketched top subspace + Hutchinson on the rest."""


@dataclass(frozen=True)
class TraceEstimate:
    """tr(H) ± standard error.

    Attributes:
        trace: the estimate.
        stderr: its standard error (of the stochastic part).
        matvecs: Hessian-vector products used.
        method: :class:`TraceMethod`.
        samples: the Hutchinson samples zᵀHz (of the deflated operator for Hutch++).
    """

    trace: float
    stderr: float
    matvecs: int
    method: TraceMethod
    samples: tuple[float, ...]


def _rademacher(n: int, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(count, n)`` float64 entries ±1."""
    return (torch.randint(0, 2, (count, n), generator=generator) * 2 - 1).to(device=device, dtype=torch.float64)


def _stderr(samples: Tensor) -> float:
    return float(samples.std(unbiased=True) / math.sqrt(samples.numel())) if samples.numel() > 1 else math.inf


def hutchinson_trace(op: SymmetricOperator, probes: int = 100, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None) -> TraceEstimate:
    """Hutchinson's estimator with ``probes`` Rademacher vectors (one product each)."""
    if probes < 2:
        raise UserInputError(f"a trace estimate needs at least 2 probes for its standard error, got {probes}")
    z = _rademacher(op.n, probes, torch.Generator().manual_seed(seed), op.device)
    samples = []
    for i in range(probes):
        samples.append(float(z[i] @ op.matvec(z[i]).double()))
        if progress:
            progress(i + 1, probes)
    s = torch.tensor(samples, dtype=torch.float64)
    return TraceEstimate(float(s.mean()), _stderr(s), probes, TraceMethod.hutchinson, tuple(samples))


def hutchpp_trace(op: SymmetricOperator, matvecs: int = 99, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> TraceEstimate:
    """Hutch++ with ``matvecs`` products (a multiple of 3; a third each for sketch, projection, residual)."""
    third = matvecs // 3
    if third < 2:
        raise UserInputError(f"Hutch++ needs at least 6 Hessian-vector products, got {matvecs}")
    n, device = op.n, op.device
    generator = torch.Generator().manual_seed(seed)
    done = 0

    def apply(v: Tensor) -> Tensor:
        nonlocal done
        out = op.matvec(v).double()
        done += 1
        if progress:
            progress(done, 3 * third)
        return out

    s = _rademacher(n, third, generator, device)
    q, _ = torch.linalg.qr(torch.stack([apply(v) for v in s]).T)          # (n, r)
    q = q[:, :min(third, n)]
    low_rank = sum(float(q[:, j] @ apply(q[:, j])) for j in range(q.shape[1]))
    g = _rademacher(n, third, generator, device)
    g = g - (g @ q) @ q.T                                                   # (I − QQᵀ) g
    samples = torch.tensor([_deflated_sample(gi, q, apply) for gi in g], dtype=torch.float64)
    return TraceEstimate(low_rank + float(samples.mean()), _stderr(samples), done, TraceMethod.hutchpp,
                         tuple(samples.tolist()))


def _deflated_sample(g: Tensor, q: Tensor, apply: Callable[[Tensor], Tensor]) -> float:
    """gᵀ (I − QQᵀ) H (I − QQᵀ) g for ``g`` already projected: one product."""
    hg = apply(g)
    return float(g @ (hg - q @ (q.T @ hg)))


def estimate_trace(op: SymmetricOperator, method: TraceMethod | str = TraceMethod.hutchpp, matvecs: int = 99,
                   seed: int = 0, progress: Callable[[int, int], None] | None = None) -> TraceEstimate:
    """tr(H) by :class:`TraceMethod` with about ``matvecs`` products."""
    try:
        method = TraceMethod(method)
    except ValueError:
        raise UserInputError(f"--trace-method must be hutchinson or hutch++, got '{method}'") from None
    if method is TraceMethod.hutchinson:
        return hutchinson_trace(op, matvecs, seed, progress)
    return hutchpp_trace(op, matvecs, seed, progress)


__all__ = ["SymmetricOperator", "TraceEstimate", "TraceMethod", "estimate_trace", "hutchinson_trace",
           "hutchpp_trace"]
