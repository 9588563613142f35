"""Hessian-vector products of the dataset-averaged loss, by reverse-over-reverse autodiff.

For a per-sample loss ℓ and a split of N samples, L(θ) = (1/N) Σₙ ℓ(f_θ(xₙ), yₙ) and

    H v = (1/N) Σ_batches Σ_{n ∈ batch} ∇²ℓₙ(θ) v,

computed batch by batch as the vector-Jacobian product of the batch's gradient with v,
``torch.func.vjp(torch.func.grad(batch_loss_sum), θ)[1](v)`` (Pearlmutter 1994; H is symmetric, so vᵀH = (Hv)ᵀ).
Reverse-over-reverse rather than the forward-over-reverse ``jvp(grad)`` the ``torch.func`` documentation
suggests: one whole-split product over one gradient, float32, on a shared 2-core CPU (rough, 3 runs):
2.6-3.0× vs 3.4-3.7× for a 40-256-256-10 MLP, 2.7-3.5× vs 4.0-4.9× for a two-layer ``nn.TransformerEncoder``,
about even (3.1-3.3× vs 3.3-3.7×) for the BN-CNN; and a custom ``autograd.Function`` then needs only a
differentiable backward, not a ``jvp``. Each batch contributes its *sum*;
the total is divided by N once, so an uneven last batch is weighted exactly by its size (unlike tools
that average per-batch means). BatchNorm runs in eval mode with the evaluator's running statistics
(re-estimated once at the point under ``--bn recompute``; perturbed like parameters under ``states``).

:func:`hvp_sum` is the building block a data-sharded executor needs: the sum over the samples of one
``(x, y)`` shard. :class:`HessianOperator` adds the exact full-split average, parameter subsets, float32 or
float64 arithmetic and a product counter; when it fits in memory it also keeps each batch's reverse-mode
graph of ∇L (``torch.func.vjp``), so the many products at one θ cost a single backward sweep each. Products go
through attention on its math kernel (:mod:`lossatlas.curvature.attention`).
:class:`FunctionHessian` is the same operator for a closed-form scalar function L(θ) (the seed-004
examples, quadratic test problems).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, grad_and_value, jvp, vjp, vmap

from lossatlas.batch import num_rows, take, to_device
from lossatlas.curvature.attention import math_attention
from lossatlas.engine import EvalSpec, Evaluator, LossFn, batch_slices, sum_over_batches
from lossatlas.engine.passes import CPU_PASS_FLOATS
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.params import ParamDict, flatten, functional_forward, unflatten

Vector = Tensor | Mapping[str, Tensor]
"""A direction in the selected parameter space: a flat ``(n,)`` tensor or a parameter-name dict."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtype) → torch dtype; one-line error otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if str(dtype) in _DTYPES:
        return _DTYPES[str(dtype)]
    raise UserInputError(f"--dtype must be float32 or float64, got '{dtype}'")


def select_parameters(names: list[str], pattern: str | None) -> list[str]:
    """Names matching the regular expression ``pattern`` (``re.search``); all names for ``None``.

    Raises a one-line :class:`UserInputError` for an invalid expression or one that selects nothing.
    """
    if pattern is None or pattern == "":
        return list(names)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UserInputError(f"--params '{pattern}' is not a valid regular expression ({exc})") from None
    chosen = [n for n in names if regex.search(n)]
    if not chosen:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UserInputError(f"--params '{pattern}' selects no parameter; names look like: {shown}")
    return chosen


def _as_dict(v: Vector, like: Mapping[str, Tensor]) -> ParamDict:
    """A flat vector or dict → a dict shaped and typed like ``like`` (keys of ``like`` only)."""
    if isinstance(v, Tensor):
        return unflatten(v, like)
    return {k: v[k].to(device=t.device, dtype=t.dtype) for k, t in like.items()}


def _batch_loss_sum(theta: Mapping[str, Tensor], model: nn.Module, buffers: Mapping[str, Tensor],
                    loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    return loss_fn(functional_forward(model, theta, buffers, x), y).sum()


def batch_hvp(model: nn.Module, theta: Mapping[str, Tensor], buffers: Mapping[str, Tensor], loss_fn: LossFn,
              x: Any, y: Tensor) -> Callable[[ParamDict], ParamDict]:
    """``v -> Σₙ ∇²_θ ℓ(f_θ(xₙ), yₙ) · v`` over one batch (a dict over ``theta``'s keys in and out).

    The forward pass and the gradient's backward run once, here, recording the gradient's graph; every call is
    one backward sweep through it (reverse-over-reverse), so many products at one θ share that work; ``vmap``
    over calls gives several at once.
    """
    def batch_grad(th: ParamDict) -> ParamDict:
        return grad(_batch_loss_sum)(th, model, buffers, loss_fn, x, y)

    with math_attention():  # the graph is recorded here; the fused CPU attention kernel has no second derivative
        pullback = vjp(batch_grad, dict(theta))[1]

    def product(v: ParamDict) -> ParamDict:
        hv: ParamDict = pullback(v)[0]
        return hv

    return product


def hvp_sum(model: nn.Module, theta: Mapping[str, Tensor], buffers: Mapping[str, Tensor], loss_fn: LossFn,
            x: Any, y: Tensor, v: Vector) -> ParamDict:
    """Σₙ ∇²_θ ℓ(f_θ(xₙ), yₙ) · v over the samples of one batch (a *sum*, not a mean).

    Args:
        model: the network; evaluated functionally, never modified (put it in eval mode for BN).
        theta: the parameters differentiated, ``{name: tensor}``.
        buffers: everything else the forward pass needs (frozen parameters, BN statistics).
        loss_fn: per-sample loss ``(output (B, ...), y (B, ...)) -> (B,)``.
        x, y: one batch (or shard) of B samples.
        v: direction, a dict over ``theta``'s keys or a flat vector in ``theta``'s key order.

    Returns:
        ``{name: tensor}`` shaped like ``theta``; divide the sum over all shards by the split's loss terms
        (N samples, or its unmasked tokens) for H v.
    """
    return batch_hvp(model, theta, buffers, loss_fn, x, y)(_as_dict(v, theta))


def gradient_sum(model: nn.Module, theta: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 loss_fn: LossFn, x: Any, y: Tensor) -> tuple[ParamDict, Tensor]:
    """``(Σₙ ∇_θ ℓₙ, Σₙ ℓₙ)`` over one batch: the gradient and loss *sums* (divide by the loss terms)."""
    g, value = grad_and_value(_batch_loss_sum)(dict(theta), model, buffers, loss_fn, x, y)
    return g, value


class _Operator:
    """Shared machinery: the selected parameters, flat/dict conversion, a product counter."""

    theta: ParamDict
    hvp_count: int

    @property
    def names(self) -> list[str]:
        """Names of the differentiated parameters, in the order of the flat vectors."""
        return list(self.theta)

    @property
    def n(self) -> int:
        """Dimension of the Hessian (number of selected scalar parameters)."""
        return sum(t.numel() for t in self.theta.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.theta.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.theta.values())).device

    def to_dict(self, vector: Tensor) -> ParamDict:
        """A flat ``(n,)`` vector → ``{name: tensor}`` keeping the vector's dtype."""
        return unflatten(vector, self.theta, dtype=vector.dtype)

    def _hv_sum(self, v: ParamDict) -> tuple[ParamDict, float]:  # pragma: no cover - abstract
        """``(Σ H_n v, N)``: the float64 sum of per-sample products and the count it averages over."""
        raise NotImplementedError

    def _hv_mean(self, v: ParamDict) -> ParamDict:
        total, count = self._hv_sum(v)
        return {k: t / count for k, t in total.items()}

    def matvec(self, v: Vector) -> Any:
        """H v. A flat ``(n,)`` vector gives a flat float64 vector; a dict gives a float64 dict."""
        out = self._hv_mean(_as_dict(v, self.theta))
        self.hvp_count += 1
        flat = flatten(out)
        if not bool(torch.isfinite(flat).all()):
            raise NonFiniteError("the Hessian-vector product is not finite at this point (NaN or inf loss); "
                                 "analyse a point where the loss is finite")
        return flat if isinstance(v, Tensor) else out

    __matmul__ = matvec

    def matmat(self, vectors: Tensor) -> Tensor:
        """H applied to every row of ``vectors`` ``(c, n)``: ``(c, n)`` float64, c products (batched as in
        :meth:`dense`)."""
        out = self._dense_columns(vectors.to(device=self.device, dtype=self.dtype))
        self.hvp_count += int(vectors.shape[0])
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError("the Hessian-vector product is not finite at this point (NaN or inf loss); "
                                 "analyse a point where the loss is finite")
        return out

    def value_and_gradient(self) -> tuple[float, ParamDict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def eigenpairs(self, k: int = 1, which: str = "largest", **kwargs: Any) -> Any:
        """Certified extreme eigenpairs (:func:`lossatlas.curvature.krylov.lanczos` on this operator).

        Returns a :class:`~lossatlas.curvature.krylov.LanczosResult` whose ``eigenvectors`` are parameter
        dicts; ``kwargs`` (``tol``, ``max_matvecs``, ``v0``, ``seed``, ...) go to ``lanczos``.
        """
        from lossatlas.curvature.krylov import lanczos

        return lanczos(self.matvec, self.n, k, which, device=self.device, like=self.theta, **kwargs)

    def gradient(self) -> ParamDict:
        """∇L(θ) over the selected parameters (float64)."""
        return self.value_and_gradient()[1]

    def loss(self) -> float:
        """L(θ)."""
        return self.value_and_gradient()[0]

    def check_finite(self) -> float:
        """L(θ), or a one-line error when it is NaN or infinite."""
        value = self.loss()
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteError(f"the loss at this point is {value}; curvature needs a finite loss "
                                 "(check the checkpoint, or lower the learning rate that produced it)")
        return value

    def dense_block(self) -> int:
        """Columns per block of :meth:`dense` (the unit of progress, checkpoints and, on a GPU, of one vmapped pass)."""
        return 32

    def dense(self, chunk: int | None = None, progress: Callable[[int, int], None] | None = None, *,
              columns: Tensor | None = None, on_block: Callable[[list[Tensor]], None] | None = None) -> Tensor:
        """The full ``(n, n)`` float64 Hessian [H e₁, ..., H eₙ] from n products with basis vectors.

        Args:
            chunk: columns per block (default :meth:`dense_block`).
            progress: ``progress(columns done, n)`` after every block.
            columns: the first ``c`` rows of H from an interrupted build (``(c, n)``, c a multiple of the
                block), so only the rest is computed; the result is the same as in one go.
            on_block: called after every block with the list of row blocks so far (``torch.cat`` of it is the
                first rows of H; for checkpoints).

        Returns the symmetrised matrix ``(H + Hᵀ) / 2``; ``hvp_count`` grows by n.
        """
        n = self.n
        chunk = chunk or self.dense_block()
        rows = [columns.to(torch.float64)] if columns is not None and columns.shape[0] else []
        start = int(rows[0].shape[0]) if rows else 0
        if start % chunk and start != n:
            raise ValueError(f"{start} saved columns are not a whole number of blocks of {chunk}")
        if progress and start:
            progress(start, n)
        for lo in range(start, n, chunk):
            hi = min(lo + chunk, n)
            basis = torch.zeros(hi - lo, n, dtype=self.dtype, device=self.device)
            basis[torch.arange(hi - lo), torch.arange(lo, hi)] = 1.0
            rows.append(self._dense_columns(basis).to(torch.float64).cpu())
            if on_block:
                on_block(rows)
            if progress:
                progress(hi, n)
        self.hvp_count += n - start
        h = torch.cat(rows).to(self.device)
        if not bool(torch.isfinite(h).all()):
            raise NonFiniteError("the Hessian is not finite at this point (NaN or inf loss); analyse a point where "
                                 "the loss is finite")
        return (h + h.T) / 2

    def _dense_columns(self, basis: Tensor, batched: bool | None = None) -> Tensor:
        """Rows H e_i for the rows e_i of ``basis`` ``(c, n)``, float64."""
        return torch.stack([flatten(self._hv_mean(self.to_dict(b))) for b in basis])


class HessianOperator(_Operator):
    """H = ∇²L(θ) of the loss averaged over a whole split, as a linear operator.

    Args:
        evaluator: supplies the model (eval mode), per-sample loss, splits, batch size and BN policy.
        point: θ (default ``evaluator.theta()``); may carry BN statistics under ``bn=states``.
        params: regular expression selecting parameter names (``re.search``); ``None`` = all of ``point``.
        dtype: arithmetic of the products, ``float32`` or ``float64`` (results accumulate in float64).
        split: ``train`` or ``test``.
        cache: keep each batch's reverse-mode graph of ∇L between products (``None``: when the estimated
            size fits ``evaluator.spec.memory_bytes``). Every product at a fixed θ then costs one backward
            pass through the stored graph (:func:`batch_hvp`) instead of a forward and two sweeps: about 1.5-2×
            faster for the many products of Lanczos, trace and density. Without it each product is
            :func:`hvp_sum`, which records one batch's graph at a time. Both are exact.

    ``matvec(v)`` = (1/N) Σ_batches (per-batch sum of H_n v); ``hvp_count`` counts full-split products.
    """

    def __init__(self, evaluator: Evaluator, point: Mapping[str, Tensor] | None = None, *,
                 params: str | None = None, dtype: str | torch.dtype = torch.float64,
                 split: str = "train", cache: bool | None = None) -> None:
        dtype = as_dtype(dtype)
        if split not in evaluator.splits:
            raise UserInputError(f"split '{split}' is not available; use one of {', '.join(evaluator.splits)}")
        point = evaluator.theta() if point is None else point
        point = {k: v.to(evaluator.device) for k, v in point.items()}
        # the Hessian is over parameters; BN statistics (θ's own under bn=states) are held fixed
        names = select_parameters([k for k in point if k not in evaluator.buffers], params)
        self.evaluator = evaluator
        self.model = evaluator.model
        self.loss_fn = evaluator.loss_fn
        self.batch_size = evaluator.batch_size
        self.split = split
        buffers = dict(evaluator.statistics_at({k: v for k, v in point.items() if k not in evaluator.buffers}))
        frozen = {**buffers, **{k: v for k, v in point.items() if k not in names}}
        for name, p in self.model.named_parameters():
            frozen.setdefault(name, p.detach())
        self.buffers = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in frozen.items()}
        self.theta = {k: point[k].detach().to(dtype) for k in names}
        x, y = evaluator.splits[split]
        self.x = to_device(x, float_dtype=dtype)
        self.y = to_device(y, float_dtype=dtype)
        self.terms = evaluator.count(split)
        self.hvp_count = 0
        self.cache = self._graph_bytes() <= evaluator.spec.memory_bytes if cache is None else bool(cache)
        self._graphs: list[Callable[[ParamDict], ParamDict]] | None = None

    @classmethod
    def from_model(cls, model: nn.Module, data: Any, spec: EvalSpec | None = None, *, device: str = "cpu",
                   **kwargs: Any) -> HessianOperator:
        """Build the :class:`Evaluator` too (``spec`` default: cross-entropy, batch 1000, BN eval)."""
        return cls(Evaluator(model, data, spec or EvalSpec(splits=("train",)), device=device), **kwargs)

    @property
    def num_samples(self) -> int:
        """N, the samples (rows) of the split."""
        return num_rows(self.x)

    def batches(self) -> Iterator[tuple[Any, Tensor]]:
        """The split in batches of ``batch_size`` (the last one may be smaller)."""
        for s in batch_slices(self.num_samples, self.batch_size):
            yield take(self.x, s), take(self.y, s)

    def _graph_bytes(self) -> int:
        """Rough size of all batches' stored ∇L graphs: activations ×5 plus parameter-sized buffers.

        Measured (growth of the process's resident memory while recording every batch's graph, float32,
        ``benchmarks/hessian.py``'s models): the MLP 83 MiB = 5.1× its activations, the BN-CNN 185 MiB = 2.3×, the
        transformer (zoo:gpt, 2,823 sequences) 368 MiB = 2.3×. ×5 keeps the MLP's estimate above what it uses; the
        earlier ×8 put the transformer at 1.3 GiB, over the default 1 GiB budget, so it lost the cached products
        (3.4× a gradient instead of 2.3×).
        """
        per_sample = int(getattr(self.evaluator, "_per_sample", 0)) or 1
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        batches = -(-self.num_samples // self.batch_size)
        return itemsize * (5 * per_sample * self.num_samples + 4 * self.n * batches)

    def _batch_graphs(self) -> list[Callable[[ParamDict], ParamDict]]:
        """Per batch, ``v -> Σ H_n v`` through the stored reverse-mode graph of the batch's ∇L."""
        if self._graphs is None:
            self._graphs = [batch_hvp(self.model, self.theta, self.buffers, self.loss_fn, xb, yb)
                            for xb, yb in self.batches()]
        return self._graphs

    def _hv_sum(self, v: ParamDict) -> tuple[ParamDict, float]:
        if self.cache:
            graphs = self._batch_graphs()
            total = {k: torch.zeros_like(t, dtype=torch.float64) for k, t in self.theta.items()}
            for graph in graphs:
                for k, t in graph(v).items():
                    total[k] += t.double()
            return total, self.terms
        total = sum_over_batches(lambda xb, yb: hvp_sum(self.model, self.theta, self.buffers, self.loss_fn, xb, yb,
                                                        v), self.x, self.y, self.batch_size)
        return total, self.terms

    def columns_per_pass(self) -> int:
        """Basis vectors that share one vmapped backward pass in :meth:`dense` (1: one after another).

        On the CPU a pass is worth batching while its activations stay cache-sized (the engine's rule,
        :data:`lossatlas.engine.passes.CPU_PASS_FLOATS`): measured on ~2,000-parameter models, a vmapped column
        cost 0.1-0.7x a single product for MLPs and small batches but 1.8x for a BatchNorm CNN whose batch of
        activations is larger. On a GPU, as many as the memory budget allows (at most 256).
        """
        per_sample = int(getattr(self.evaluator, "_per_sample", 0)) or 1
        batch = min(self.batch_size, self.num_samples)
        if self.device.type == "cpu":
            return int(max(1, min(256, CPU_PASS_FLOATS // (per_sample * batch))))
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_column = itemsize * (8 * per_sample * batch + 4 * self.n)
        return int(max(1, min(256, self.evaluator.spec.memory_bytes // max(per_column, 1))))

    def dense_block(self) -> int:
        """Columns per block of :meth:`dense`: at least 32 (the unit of progress and checkpoints), or a pass."""
        return max(32, self.columns_per_pass())

    def _dense_columns(self, basis: Tensor, batched: bool | None = None) -> Tensor:
        """Σ over batches of H_batch e_i for the rows of ``basis`` ``(c, n)``, divided by N (float64).

        With cached graphs each column is one backward sweep through each batch's stored ∇L graph; without, each
        batch's graph is recorded once for all the columns and dropped. Columns go through together in groups of
        :meth:`columns_per_pass`
        (``vmap`` over the basis vectors), or one after another; ``batched`` forces one group or none.
        """
        per_pass = self.columns_per_pass() if batched is None else (basis.shape[0] if batched else 1)
        groups = list(basis.split(max(per_pass, 1)))

        def apply(one: Callable[[Tensor], Tensor]) -> Tensor:
            return torch.cat([vmap(one)(g) if g.shape[0] > 1 else one(g[0])[None] for g in groups])

        if self.cache:
            total = torch.zeros(basis.shape[0], self.n, dtype=torch.float64, device=self.device)
            for graph in self._batch_graphs():
                def through(b: Tensor, graph: Callable[[ParamDict], ParamDict] = graph) -> Tensor:
                    return flatten(graph(self.to_dict(b)))
                total += apply(through).double()
            return total / self.terms

        def columns(xb: Tensor, yb: Tensor) -> Tensor:
            graph = batch_hvp(self.model, self.theta, self.buffers, self.loss_fn, xb, yb)

            def product(b: Tensor) -> Tensor:
                return flatten(graph(self.to_dict(b)))
            return apply(product)
        return sum_over_batches(columns, self.x, self.y, self.batch_size) / self.terms

    def value_and_gradient(self) -> tuple[float, ParamDict]:
        """``(L(θ), ∇L(θ))`` averaged exactly over the split (float64 accumulation)."""
        g, value = sum_over_batches(lambda xb, yb: gradient_sum(self.model, self.theta, self.buffers, self.loss_fn,
                                                                xb, yb), self.x, self.y, self.batch_size)
        n = self.terms
        return float(value) / n, {k: t / n for k, t in g.items()}


class FunctionHessian(_Operator):
    """The Hessian of a closed-form scalar function ``fn(θ: dict) -> Tensor`` at ``theta``.

    Used for seed 004's two-variable examples and for quadratic losses with known spectra.
    """

    def __init__(self, fn: Callable[[ParamDict], Tensor], theta: Mapping[str, Tensor], *,
                 params: str | None = None, dtype: str | torch.dtype = torch.float64) -> None:
        dtype = as_dtype(dtype)
        names = select_parameters(list(theta), params)
        self.fn = fn
        self.theta = {k: theta[k].detach().to(dtype) for k in names}
        self._frozen = {k: v.detach().to(dtype) for k, v in theta.items() if k not in names}
        self.hvp_count = 0

    def _call(self, th: ParamDict) -> Tensor:
        return self.fn({**self._frozen, **th})

    def _hv_sum(self, v: ParamDict) -> tuple[ParamDict, float]:
        with math_attention():
            hv: ParamDict = jvp(grad(self._call), (dict(self.theta),), (v,))[1]
        return {k: t.double() for k, t in hv.items()}, 1.0

    def value_and_gradient(self) -> tuple[float, ParamDict]:
        g, value = grad_and_value(self._call)(dict(self.theta))
        return float(value), {k: t.double() for k, t in g.items()}


__all__ = ["FunctionHessian", "HessianOperator", "as_dtype", "batch_hvp", "gradient_sum", "hvp_sum",
           "select_parameters"]
