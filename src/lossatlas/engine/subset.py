"""Subset evaluation: one fixed stratified sample of a split, and the standard error of its mean.

A 51×51 surface is 2601 passes over the data. ``EvalSpec(subset=0.1)`` evaluates every point on the
*same* 10% of each split, so the surface keeps its shape (the error at neighbouring points is almost
the same error) and each point costs a tenth. Next to every mean it stores a standard error.

Sampling. For classification the subset is stratified by class with proportional allocation: class c
with N_c of the N samples gets round(n · N_c / N) of the n draws (largest remainders, so the counts add
up to n exactly), drawn without replacement. Regression targets get a simple random sample. The draw
depends only on ``(subset, subset_seed, split)``, never on the point.

Standard error. The stored value is the plain mean ȳ of the per-sample losses (or 0/1 correctness) over
the n sampled points. Because the n samples are drawn *without replacement* from a finite split of N,
its variance carries the finite-population correction (Cochran 1977, *Sampling Techniques*, eq. 2.12)::

    SE(ȳ) = sqrt((1 − n/N) · s² / n),    s² = Σ (yᵢ − ȳ)² / (n − 1).

At n = N the correction is 0 and so is the error: the subset *is* the split. This is the simple-random-
sampling formula; for a proportionally stratified sample the true variance is smaller (stratification
removes the between-class part, Cochran eq. 5.28), so the interval ȳ ± 1.96·SE is slightly
conservative. A 95% interval is :func:`confidence_interval`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lossatlas.errors import UserInputError

if TYPE_CHECKING:
    import xarray as xr

Subset = float | int
"""A fraction in (0, 1] (a ``float``) or a sample count ≥ 2 (an ``int``)."""

STDERR_SUFFIX = "_stderr"
_SPLIT_STREAM = {"train": 0, "test": 1}


def parse_subset(text: str | float | int | None) -> Subset | None:
    """``"0.1"`` → 0.1 (a fraction), ``"500"`` → 500 (a count), None → None; one-line error otherwise."""
    if text is None or isinstance(text, (float, int)) and not isinstance(text, bool):
        return check_subset(text)  # type: ignore[arg-type]
    raw = str(text).strip()
    try:
        value: Subset = int(raw) if raw.isdigit() else float(raw)
    except ValueError:
        raise UserInputError(f"--subset must be a fraction in (0, 1] like 0.1 or a sample count like 500, "
                             f"got '{text}'") from None
    return check_subset(value)


def check_subset(value: Subset | None) -> Subset | None:
    """Validate a subset: a float fraction in (0, 1] or an int count ≥ 2 (one-line errors)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserInputError(f"--subset must be a fraction in (0, 1] or a count >= 2, got {value!r}")
    if isinstance(value, int):
        if value < 2:
            raise UserInputError(f"--subset count must be at least 2 (a standard error needs two samples), "
                                 f"got {value}")
        return value
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise UserInputError(f"--subset fraction must lie in (0, 1], got {value}; give a count as an integer")
    return float(value)


def subset_size(subset: Subset, population: int) -> int:
    """Number of samples drawn from a split of ``population``: at least 2 (when there are 2), at most N."""
    n = round(subset * population) if isinstance(subset, float) else subset
    return int(min(population, max(n, min(2, population))))


def proportional_allocation(class_counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class draws ``n_c`` summing to ``n`` with n_c ≈ n·N_c/N (largest remainders, ties by class)."""
    counts = np.asarray(class_counts, dtype=np.int64)
    quota = n * counts / counts.sum()
    alloc = np.floor(quota).astype(np.int64)
    order = np.lexsort((np.arange(len(counts)), -(quota - alloc)))
    alloc[order[: n - int(alloc.sum())]] += 1
    return np.minimum(alloc, counts)


def subset_indices(y: Tensor, subset: Subset, seed: int, split: str = "train",
                   classification: bool = True) -> np.ndarray:
    """Sorted indices ``(n,)`` of the fixed subset of a split with targets ``y`` (N, ...).

    Classification: stratified by class, proportional allocation; regression: simple random sample.
    Deterministic in ``(subset, seed, split)``.
    """
    population = int(y.shape[0])
    n = subset_size(subset, population)
    rng = np.random.default_rng([seed, _SPLIT_STREAM.get(split, 2)])
    if not classification:
        return np.sort(rng.choice(population, size=n, replace=False))
    labels = y.detach().cpu().numpy().reshape(population)
    classes, counts = np.unique(labels, return_counts=True)
    alloc = proportional_allocation(counts, n)
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(classes, alloc, strict=True) if k > 0]
    return np.sort(np.concatenate(picked))


def mean_stderr(total: Tensor | float, total_sq: Tensor | float, n: int, population: int) -> Tensor:
    """Standard error of the mean of n samples drawn without replacement from ``population``.

    Args:
        total, total_sq: per-point sums Σyᵢ and Σyᵢ² over the n samples, shape (P,) (float64).
    Returns:
        (P,) ``sqrt((1 − n/N) s²/n)`` with the unbiased sample variance s² (0 when n = N or n < 2).
    """
    total = torch.as_tensor(total, dtype=torch.float64)
    total_sq = torch.as_tensor(total_sq, dtype=torch.float64)
    if n < 2 or n >= population:
        return torch.zeros_like(total)
    var = (total_sq - total * total / n).clamp_min(0.0) / (n - 1)
    return torch.sqrt((1.0 - n / population) * var / n)


def ratio_stderr(total: Tensor, total_sq: Tensor, cross: Tensor, weight: Tensor, weight_sq: Tensor, n: int,
                 population: int) -> Tensor:
    """Standard error of a ratio mean R = Σlᵢ / Σwᵢ over n rows drawn without replacement from ``population``.

    Rows are samples with wᵢ = 1 (then this is :func:`mean_stderr`) or sequences with wᵢ unmasked tokens and lᵢ
    the sum of their losses: the token mean of a sample of sequences is a ratio estimator (Cochran 1977, eq. 6.13):
    ``SE(R)² = (1 − n/N) / (n w̄²) · Σ (lᵢ − R wᵢ)² / (n − 1)``, w̄ = Σwᵢ / n.

    Args:
        total, total_sq, cross: per-point Σlᵢ, Σlᵢ², Σlᵢwᵢ, shape (P,) float64.
        weight, weight_sq: Σwᵢ and Σwᵢ² (P,) (the same at every point).
    """
    if n < 2 or n >= population:
        return torch.zeros_like(total)
    ratio = total / weight
    spread = (total_sq - 2 * ratio * cross + ratio * ratio * weight_sq).clamp_min(0.0) / (n - 1)
    mean_weight = weight / n
    return torch.sqrt((1.0 - n / population) * spread / (n * mean_weight * mean_weight))


Z95 = 1.959963984540054
"""Two-sided 95% normal quantile: the half-width of a 95% interval is ``Z95 · SE``."""


def confidence_interval(ds: xr.Dataset, metric: str, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``value ∓ z·SE`` of a stored metric (normal approximation, z(0.95) = 1.96).

    A store without ``<metric>_stderr`` (full-data evaluation) gives the value itself as both bounds.
    """
    from statistics import NormalDist

    if not 0.0 < level < 1.0:
        raise UserInputError(f"confidence level must lie in (0, 1), got {level}")
    value = np.asarray(ds[metric].values, dtype=np.float64)
    name = metric + STDERR_SUFFIX
    if name not in ds:
        return value, value
    z = NormalDist().inv_cdf(0.5 + level / 2)
    half = z * np.asarray(ds[name].values, dtype=np.float64)
    return value - half, value + half


__all__ = ["STDERR_SUFFIX", "Subset", "check_subset", "confidence_interval", "mean_stderr", "parse_subset",
           "proportional_allocation", "ratio_stderr", "subset_indices", "subset_size"]
