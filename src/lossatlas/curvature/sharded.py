"""Data-sharded Hessian-vector products on a Dask cluster.

H v = (1/N) Σₛ Σ_{n ∈ shard s} ∇²ℓₙ(θ) v. The split is cut into S contiguous shards (at batch
boundaries); each shard, with the model, θ and buffers, is scattered to a worker *once*. Every product
then ships only v to the workers, which return their shard's float64 sum (:func:`hvp_sum` over the
shard's batches); the driver adds the shard sums in shard order and divides by N once. So Lanczos,
Hutchinson and the density estimates spread their products over the cluster unchanged, and the result
equals :class:`HessianOperator` to float64 rounding (only the grouping of the sum differs).

A shard whose worker died is scattered again from the driver's copy and its product recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lossatlas.batch import select, to_device
from lossatlas.curvature.hvp import HessianOperator, _Operator, gradient_sum, hvp_sum
from lossatlas.engine import Evaluator, LossFn, sum_over_batches
from lossatlas.errors import UserInputError
from lossatlas.execute import ByValue, DaskExecutor, InProcessExecutor, place_on_worker, set_worker_threads
from lossatlas.params import ParamDict


@dataclass
class HessianShard:
    """One shard of a split with everything a worker needs for Σ_{n ∈ shard} ∇²ℓₙ v (picklable)."""

    model: nn.Module
    theta: ParamDict
    buffers: ParamDict
    loss_fn: LossFn
    x: Any
    y: Any
    batch_size: int

    @property
    def device(self) -> torch.device:
        return next(iter(self.theta.values())).device

    def to(self, device: str | torch.device) -> HessianShard:
        """Move in place (a worker's own GPU)."""
        self.model = self.model.to(device)
        self.theta = {k: v.to(device) for k, v in self.theta.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self.x, self.y = to_device(self.x, device), to_device(self.y, device)
        return self

    def hv_sum(self, v: Mapping[str, Tensor]) -> ParamDict:
        """Σ over this shard's samples of ∇²ℓₙ v, float64 on the CPU."""
        v = {k: t.to(self.device) for k, t in v.items()}
        total = sum_over_batches(lambda xb, yb: hvp_sum(self.model, self.theta, self.buffers, self.loss_fn, xb, yb, v),
                                 self.x, self.y, self.batch_size)
        return {k: t.cpu() for k, t in total.items()}

    def grad_sum(self) -> tuple[ParamDict, float]:
        """(Σₙ ∇ℓₙ, Σₙ ℓₙ) over this shard, float64 on the CPU."""
        g, value = sum_over_batches(lambda xb, yb: gradient_sum(self.model, self.theta, self.buffers, self.loss_fn,
                                                                xb, yb), self.x, self.y, self.batch_size)
        return {k: t.cpu() for k, t in g.items()}, float(value)


def _shard_call(shard: HessianShard, method: str, args: tuple[Any, ...], torch_threads: int | None) -> Any:
    """What a worker runs: configure threads and device, then ``shard.<method>(*args)``."""
    set_worker_threads(torch_threads)
    place_on_worker(shard)
    return getattr(shard, method)(*args)


def shard_bounds(n: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``(start, stop)`` ranges covering 0..n, cut at multiples of ``batch_size``."""
    batches = -(-n // batch_size)
    shards = max(1, min(shards, batches))
    cuts = [round(i * batches / shards) * batch_size for i in range(shards + 1)]
    return [(a, min(b, n)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if a < min(b, n)]


class ShardedHessianOperator(HessianOperator):
    """:class:`HessianOperator` whose products are summed over data shards on Dask workers.

    Args:
        evaluator, point, params, dtype, split: as for :class:`HessianOperator`.
        executor: a :class:`lossatlas.execute.DaskExecutor` (its client and worker thread setting).
        shards: number of shards (default: one per connected worker).
        resubmits: how often a shard lost with its worker is scattered again before giving up.
    """

    def __init__(self, evaluator: Evaluator, point: Mapping[str, Tensor] | None = None, *,
                 executor: DaskExecutor, shards: int | None = None, params: str | None = None,
                 dtype: str | torch.dtype = torch.float64, split: str = "train", resubmits: int = 2) -> None:
        super().__init__(evaluator, point, params=params, dtype=dtype, split=split)
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
            raise UserInputError(f"the number of shards must be a positive integer, got {shards!r}")
        self.client = executor.client
        self.torch_threads = executor.torch_threads
        self.resubmits = resubmits
        bounds = shard_bounds(self.num_samples, shards or max(1, executor.n_workers), self.batch_size)
        self.shards = [HessianShard(self.model, self.theta, self.buffers, self.loss_fn, select(self.x, slice(a, b)),
                                    select(self.y, slice(a, b)), self.batch_size) for a, b in bounds]
        self._scattered = self.client.scatter([ByValue(s) for s in self.shards], hash=False)

    def _map(self, method: str, *args: Any) -> list[Any]:
        """``shard.<method>(*args)`` on every shard's worker; results in shard order."""
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        for attempt in range(self.resubmits + 1):
            lost = [i for i, f in enumerate(self._scattered) if f.status != "finished"]
            if lost:  # their workers died: scatter those shards again from the driver's copy
                again = self.client.scatter([ByValue(self.shards[i]) for i in lost], hash=False)
                for i, f in zip(lost, again, strict=True):
                    self._scattered[i] = f
            futures = [self.client.submit(_shard_call, f, method, args, self.torch_threads, pure=False)
                       for f in self._scattered]
            try:
                return self.client.gather(futures)
            except (KilledWorker, FutureCancelledError):
                if attempt == self.resubmits:
                    raise
        raise AssertionError("unreachable")

    def _hv_sum(self, v: ParamDict) -> tuple[ParamDict, float]:
        parts = self._map("hv_sum", {k: t.detach().cpu() for k, t in v.items()})
        total = {k: torch.zeros_like(t, dtype=torch.float64) for k, t in self.theta.items()}
        for part in parts:
            for k in total:
                total[k] += part[k].to(total[k].device)
        return total, self.terms

    def _dense_columns(self, basis: Tensor, batched: bool | None = None) -> Tensor:
        return _Operator._dense_columns(self, basis)

    def dense_block(self) -> int:
        return 32

    def value_and_gradient(self) -> tuple[float, ParamDict]:
        """``(L(θ), ∇L(θ))`` summed over the shards on the workers (float64)."""
        parts = self._map("grad_sum")
        total = {k: torch.zeros_like(t, dtype=torch.float64) for k, t in self.theta.items()}
        for g, _ in parts:
            for k in total:
                total[k] += g[k].to(total[k].device)
        n = self.terms
        return sum(value for _, value in parts) / n, {k: t / n for k, t in total.items()}

    def close(self) -> None:
        """Release the shards held by the workers."""
        self.client.cancel(self._scattered, force=True)


def hessian_operator(evaluator: Evaluator, executor: DaskExecutor | InProcessExecutor | None = None,
                     **kwargs: Any) -> HessianOperator:
    """:class:`ShardedHessianOperator` on a Dask executor, else the in-process :class:`HessianOperator`."""
    if isinstance(executor, DaskExecutor):
        return ShardedHessianOperator(evaluator, executor=executor, **kwargs)
    return HessianOperator(evaluator, **kwargs)


__all__ = ["HessianShard", "ShardedHessianOperator", "hessian_operator", "shard_bounds"]
