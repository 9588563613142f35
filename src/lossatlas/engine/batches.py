"""THE batch loop: sums over a split, batch by batch, accumulated in float64.

Everything that averages over data — metrics at grid points, Hessian-vector products (also per shard on a
worker), gradients, BatchNorm statistics, training metrics — is a *sum* of per-batch sums divided by the
number of samples once at the end. So an uneven last batch is weighted by its size, and the result does not
depend on the batch size beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from lossatlas.batch import num_rows, take

T = TypeVar("T")


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """``slice(start, stop)`` for consecutive batches of ``batch_size`` covering ``0..n`` (the last may be short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def sum_over_batches(fn: Callable[[Any, Tensor], T], x: Any, y: Any, batch_size: int) -> T:
    """Σ over batches of ``fn(x_batch, y_batch)``, every tensor leaf accumulated in float64.

    Args:
        fn: ``(x (B, ...), y (B, ...)) -> pytree of tensors`` (a dict, tuple, tensor, ...): the *sums* over
            the batch's samples (per point, per parameter, per channel: any shape).
        x, y: the split, ``N`` samples: inputs and targets of the batch contract (:mod:`lossatlas.batch`:
            tensors, tuples or dicts of tensors, or stream columns read batch by batch).
        batch_size: samples per call.

    Returns:
        the same pytree structure with float64 tensors (detached) summed over all batches.
    """
    total: Any = None
    for s in batch_slices(num_rows(x), batch_size):
        part = fn(take(x, s), take(y, s))
        if total is None:
            total = tree_map(lambda t: t.detach().to(torch.float64).clone(), part)
        else:
            total = tree_map(lambda acc, t: acc.add_(t.detach().to(torch.float64)), total, part)
    if total is None:
        raise ValueError("the split is empty")
    return total  # type: ignore[no-any-return]


__all__ = ["batch_slices", "sum_over_batches"]
