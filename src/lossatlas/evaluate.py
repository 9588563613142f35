"""The one evaluation engine: metrics at many parameter points, batched over data and over points.

Every feature that needs "the loss at these parameter points" (surfaces, interpolations, curves,
convexity maps) calls :class:`Evaluator`. The value at a point is the sample-weighted mean over the
whole split (an uneven last batch is weighted by its size), accumulated in float64.

Points are evaluated several at a time with ``torch.func.vmap`` over stacked parameter dicts; the
result equals a naive per-point loop (:meth:`Evaluator.evaluate_one`) to float rounding. On CPU a
point whose batch already fills a cache-sized pass runs alone, without vmap, and conv nets run in
channels-last layout (oneDNN's fast path): 2-3x faster there (``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from lossatlas.errors import UserInputError
from lossatlas.params import (
    ParamDict,
    buffers_of,
    float_buffer_names,
    functional_forward,
    parameters_of,
    private_copy,
    stack_points,
)
from lossatlas.subset import STDERR_SUFFIX, check_subset, mean_stderr, subset_indices
from lossatlas.userfunc import load_callable

if TYPE_CHECKING:
    from lossatlas.data import Dataset

LossFn = Callable[[Tensor, Tensor], Tensor]
"""Per-sample loss: ``(output (B, C), target (B, ...)) -> (B,)``."""

_CPU_PASS_FLOATS = 1 << 21
"""Activations (floats) of one vmapped pass on CPU: 8 MiB stays cache-sized; bigger passes ran slower
per point than one point at a time on the benchmark MLP and CNN (``benchmarks/surface.py``)."""


class BNPolicy(str, Enum):
    """How BatchNorm statistics are treated at a perturbed point."""

    eval = "eval"
    """Use the model's running statistics unchanged (default)."""
    recompute = "recompute"
    """Re-estimate running statistics at every point from training batches, then evaluate."""
    states = "states"
    """Treat running statistics as parameters: directions perturb them too (Li et al.'s 'states')."""


@dataclass(frozen=True)
class EvalSpec:
    """How points are evaluated.

    Attributes:
        loss: ``cross_entropy``, ``mse`` or a ``module:function`` / ``file.py:function`` returning
            per-sample losses ``(B,)`` from ``(output, target)``.
        batch_size: samples per forward pass.
        bn: :class:`BNPolicy`.
        splits: which splits to evaluate (``train``, ``test``; missing test splits are skipped).
        memory_bytes: budget for one vmapped pass; decides how many points share a forward pass.
        bn_batches: training batches used to re-estimate BN statistics (``recompute``); 0 = all.
        subset: evaluate every point on one fixed subset of each split: a fraction in (0, 1] (``float``)
            or a sample count (``int``); stratified by class (:mod:`lossatlas.subset`). Adds a
            ``<metric>_stderr`` per metric. None = the whole split.
        subset_seed: seed of the subset draw.
    """

    loss: str = "cross_entropy"
    batch_size: int = 1000
    bn: BNPolicy = BNPolicy.eval
    splits: tuple[str, ...] = ("train", "test")
    memory_bytes: int = 1 << 30
    bn_batches: int = 0
    subset: float | int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "subset", check_subset(self.subset))
        try:
            object.__setattr__(self, "bn", BNPolicy(self.bn))
        except ValueError:
            raise UserInputError(f"--bn must be one of eval, recompute, states; got '{self.bn}'") from None
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserInputError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if self.memory_bytes < 1 << 20:
            raise UserInputError("the memory budget must be at least 1 MiB")
        bad = [s for s in self.splits if s not in ("train", "test")]
        if bad:
            raise UserInputError(f"unknown split '{bad[0]}'; use train or test")


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if y.dtype in (torch.int64, torch.int32):
        y = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return ((out - y.reshape(out.shape)) ** 2).mean(dim=-1)


BUILTIN_LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "mse": _mse}


def resolve_loss(spec: str) -> LossFn:
    """A per-sample loss from its name or ``module:function`` spec."""
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    if ":" not in spec:
        raise UserInputError(f"unknown loss '{spec}'; use cross_entropy, mse or module:function")
    target, _, name = spec.rpartition(":")
    return load_callable(target, name, "loss")  # type: ignore[return-value]


def _activation_numel_per_sample(model: nn.Module, x: Tensor) -> int:
    """Sum of output sizes of every leaf module for one sample (a memory estimate for vmap)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out[0].numel() if out.dim() > 0 else 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


def _layout(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` in channels-last memory layout when asked and 4-D (same values, other strides)."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _channels_last_works(model: nn.Module, x: Tensor, buffers: Mapping[str, Tensor]) -> bool:
    """Whether a Conv2d net gives the same output in channels-last layout (a ``.view`` may refuse it)."""
    if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    theta = parameters_of(model)
    with torch.no_grad():
        ref = functional_forward(model, theta, buffers, x[:4])
        try:
            got = functional_forward(model, {k: _layout(v, True) for k, v in theta.items()}, buffers,
                                     _layout(x[:4], True))
        except Exception:  # noqa: BLE001 - any failure in the other layout just means "stay in NCHW"
            return False
    return ref.shape == got.shape and bool(torch.allclose(ref, got, rtol=1e-4, atol=1e-5))


class Evaluator:
    """Loss and accuracy of one model on one dataset at any parameter point.

    The user's model is deep-copied once; it is never mutated. θ is the copy's parameters (plus float
    buffers under ``bn=states``).

    Args:
        model: an ``nn.Module`` (weights already loaded).
        data: a :class:`lossatlas.data.Dataset`.
        spec: :class:`EvalSpec`.
        device: where to evaluate (``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(self, model: nn.Module, data: Dataset, spec: EvalSpec | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.spec = spec or EvalSpec()
        self.device = torch.device(device)
        self.model = private_copy(model).to(self.device)
        self.loss_fn = resolve_loss(self.spec.loss)
        self.classification = data.task == "classification"
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.population: dict[str, int] = {}  # split sizes before any subset
        for split in self.spec.splits:
            if split == "test" and data.x_test is None:
                continue
            x, y = data.split(split)
            self.population[split] = int(x.shape[0])
            if self.spec.subset is not None:  # the same samples at every point
                keep = torch.from_numpy(subset_indices(y, self.spec.subset, self.spec.subset_seed, split,
                                                       self.classification))
                x, y = x[keep], y[keep]
            self.splits[split] = (x.to(self.device), y.to(self.device))
        self.buffers = {k: v.to(self.device) for k, v in buffers_of(self.model).items()}
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self._per_sample = _activation_numel_per_sample(self.model, self.splits["train"][0])
        self._channels_last = self.device.type == "cpu" and _channels_last_works(
            self.model, self.splits["train"][0], self.buffers)

    # -- the point we perturb ------------------------------------------------------------------
    def theta(self) -> ParamDict:
        """θ of the model: parameters, plus float buffers under the BN ``states`` policy."""
        theta = parameters_of(self.model)
        if self.spec.bn is BNPolicy.states:
            for name in float_buffer_names(self.model):
                theta[name] = self.buffers[name].clone()
        return theta

    @property
    def metric_names(self) -> list[str]:
        """Names of the metrics returned, e.g. ``train_loss, train_accuracy, test_loss, ...``."""
        names = []
        for split in self.splits:
            names.append(f"{split}_loss")
            if self.classification:
                names.append(f"{split}_accuracy")
        if self.spec.subset is not None:
            names += [name + STDERR_SUFFIX for name in names]
        return names

    def to(self, device: str | torch.device) -> Evaluator:
        """Move the model copy, the data and the buffers to ``device`` in place (e.g. a worker's GPU)."""
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        self.splits = {s: (x.to(self.device), y.to(self.device)) for s, (x, y) in self.splits.items()}
        self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}
        return self

    def points_per_pass(self, batch_size: int | None = None) -> int:
        """How many points fit in one vmapped forward pass under the memory budget."""
        b = min(batch_size or self.spec.batch_size, max(x.shape[0] for x, _ in self.splits.values()))
        n_params = sum(t.numel() for t in self.theta().values())
        per_point = 4 * (3 * self._per_sample * b + 2 * n_params)
        points = self.spec.memory_bytes // max(per_point, 1)
        if not self._one_point_per_pass():
            points = min(points, _CPU_PASS_FLOATS // (self._per_sample * b))
        return max(1, min(256, points))

    def _one_point_per_pass(self, points: int = 0) -> bool:
        """Evaluate point after point without vmap: for a single point, and on CPU for conv nets and for
        points whose batch alone fills a cache-sized pass (vmapped passes only ran slower there)."""
        b = min(self.spec.batch_size, max(x.shape[0] for x, _ in self.splits.values()))
        return points == 1 or self.device.type == "cpu" and (
            self._channels_last or self._per_sample * b * 2 > _CPU_PASS_FLOATS)

    def _points_forward(self, forward: Callable[[Mapping[str, Tensor], Tensor], Tensor],
                        stacked: Mapping[str, Tensor]) -> Callable[[Mapping[str, Tensor], Tensor], Tensor]:
        """``(stacked, x (B, ...)) -> (P, B, C)``: vmap over points, or a loop (see ``_one_point_per_pass``)."""
        p = next(iter(stacked.values())).shape[0]
        if not self._one_point_per_pass(p):
            return vmap(forward, in_dims=(0, None))  # type: ignore[no-any-return]
        cl = self._channels_last and self.device.type == "cpu"
        points = [{k: _layout(v[i], cl) for k, v in stacked.items()} for i in range(p)]

        def one_by_one(_stacked: Mapping[str, Tensor], x: Tensor) -> Tensor:
            x = _layout(x, cl)
            return torch.stack([forward(point, x) for point in points])

        return one_by_one

    # -- evaluation ----------------------------------------------------------------------------
    def _batch_totals(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-point sums of loss, correct predictions and squared loss over a batch; ``out`` is (P, B, C)."""
        p, b = out.shape[:2]
        flat_out = out.reshape(p * b, *out.shape[2:])
        flat_y = y.repeat(p, *([1] * (y.dim() - 1)))
        per_sample = self.loss_fn(flat_out, flat_y).reshape(p, b).double()
        losses, squares = per_sample.sum(dim=1), per_sample.square().sum(dim=1)
        if self.classification:
            correct = (flat_out.argmax(dim=-1) == flat_y).reshape(p, b).double().sum(dim=1)
        else:
            correct = torch.zeros(p, dtype=torch.float64, device=out.device)
        return losses, correct, squares

    @torch.no_grad()
    def evaluate_stacked(self, stacked: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Metrics at P points given stacked parameters ``{name: (P, *shape)}``; returns ``{metric: (P,)}``.

        Under ``bn=recompute`` points are evaluated one by one (statistics are re-estimated per point).
        """
        if self.spec.bn is BNPolicy.recompute and self.has_bn:
            p = next(iter(stacked.values())).shape[0]
            rows = [self.evaluate_one({k: v[i] for k, v in stacked.items()}) for i in range(p)]
            return {m: torch.tensor([r[m] for r in rows], dtype=torch.float64) for m in self.metric_names}
        buffers = {k: v for k, v in self.buffers.items() if k not in stacked}

        def forward(point: Mapping[str, Tensor], x: Tensor) -> Tensor:
            return functional_forward(self.model, point, buffers, x)

        batched = self._points_forward(forward, stacked)
        results: dict[str, Tensor] = {}
        for split, (x, y) in self.splits.items():
            n = x.shape[0]
            p_points = next(iter(stacked.values())).shape[0]
            loss_sum = torch.zeros(p_points, dtype=torch.float64, device=self.device)
            correct_sum = torch.zeros_like(loss_sum)
            square_sum = torch.zeros_like(loss_sum)
            for start in range(0, n, self.spec.batch_size):
                xb, yb = x[start:start + self.spec.batch_size], y[start:start + self.spec.batch_size]
                ls, cs, ss = self._batch_totals(batched(dict(stacked), xb), yb)
                loss_sum = loss_sum + ls
                correct_sum = correct_sum + cs
                square_sum = square_sum + ss
            results[f"{split}_loss"] = (loss_sum / n).cpu()
            if self.classification:
                results[f"{split}_accuracy"] = (correct_sum / n).cpu()
            results.update(self._stderr(split, loss_sum, square_sum, correct_sum))
        return results

    def _stderr(self, split: str, loss_sum: Tensor | float, square_sum: Tensor | float,
                correct_sum: Tensor | float) -> dict[str, Tensor]:
        """``<metric>_stderr`` of a subset evaluation (finite-population corrected); {} on the whole split."""
        if self.spec.subset is None:
            return {}
        n, population = self.splits[split][0].shape[0], self.population[split]
        out = {f"{split}_loss{STDERR_SUFFIX}": mean_stderr(loss_sum, square_sum, n, population).cpu()}
        if self.classification:  # correctness is 0/1, so its square sum is its sum
            acc = mean_stderr(correct_sum, correct_sum, n, population)
            out[f"{split}_accuracy{STDERR_SUFFIX}"] = acc.cpu()
        return out

    def evaluate_coords(self, theta: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                        coords: Tensor) -> dict[str, Tensor]:
        """Metrics at θ + Σᵢ coords[p, i] dᵢ for every row p of ``coords`` (P, m); returns ``{metric: (P,)}``.

        Points are split into groups of :meth:`points_per_pass`; a group's result does not depend on
        which other groups exist, so a resumed run reproduces an uninterrupted one exactly.
        """
        theta = {k: v.to(self.device) for k, v in theta.items()}
        dirs = [{k: d[k].to(self.device) for k in theta} for d in directions]
        coords = coords.to(self.device, torch.float64)
        chunk = self.points_per_pass()
        parts: list[dict[str, Tensor]] = []
        for start in range(0, coords.shape[0], chunk):
            stacked = stack_points(theta, dirs, coords[start:start + chunk])
            parts.append(self.evaluate_stacked(stacked))
        return {m: torch.cat([p[m] for p in parts]) for m in self.metric_names}

    @torch.no_grad()
    def recompute_bn_buffers(self, point: Mapping[str, Tensor]) -> ParamDict:
        """BN running statistics re-estimated at ``point`` from training batches (cumulative average)."""
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        bn_modules = {n: m for n, m in self.model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
        for name, _m in bn_modules.items():
            prefix = f"{name}." if name else ""
            buffers[prefix + "running_mean"].zero_()
            buffers[prefix + "running_var"].fill_(1.0)
            buffers[prefix + "num_batches_tracked"].zero_()
        momenta = {n: m.momentum for n, m in bn_modules.items()}
        x, _ = self.splits["train"]
        n_batches = math.ceil(x.shape[0] / self.spec.batch_size)
        if self.spec.bn_batches:
            n_batches = min(n_batches, self.spec.bn_batches)
        try:
            for m in bn_modules.values():
                m.momentum = None  # cumulative moving average over the batches seen
            self.model.train()
            for i in range(n_batches):
                xb = x[i * self.spec.batch_size:(i + 1) * self.spec.batch_size]
                functional_forward(self.model, point, buffers, xb)
        finally:
            self.model.eval()
            for n, m in bn_modules.items():
                m.momentum = momenta[n]
        return buffers

    @torch.no_grad()
    def evaluate_one(self, point: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor] | None = None) -> dict[str, float]:
        """Metrics at a single point with a plain loop over batches: the reference for batched code.

        ``buffers`` replaces the model's buffers (e.g. the BN statistics of a model being trained).
        """
        point = {k: v.to(self.device) for k, v in point.items()}
        if buffers is not None:
            buffers = {k: v.to(self.device) for k, v in buffers.items()}
        elif self.spec.bn is BNPolicy.recompute and self.has_bn:
            # statistics come from the data at this point, not from θ (even when θ carries them)
            point = {k: v for k, v in point.items() if k not in self.buffers}
            buffers = self.recompute_bn_buffers(point)
        else:
            buffers = self.buffers
        out: dict[str, float] = {}
        for split, (x, y) in self.splits.items():
            loss_sum, correct_sum, square_sum, n = 0.0, 0.0, 0.0, x.shape[0]
            for start in range(0, n, self.spec.batch_size):
                xb, yb = x[start:start + self.spec.batch_size], y[start:start + self.spec.batch_size]
                logits = functional_forward(self.model, point, buffers, xb)
                per_sample = self.loss_fn(logits, yb).double()
                loss_sum += float(per_sample.sum())
                square_sum += float(per_sample.square().sum())
                if self.classification:
                    correct_sum += float((logits.argmax(dim=-1) == yb).double().sum())
            out[f"{split}_loss"] = loss_sum / n
            if self.classification:
                out[f"{split}_accuracy"] = correct_sum / n
            stderr = self._stderr(split, loss_sum, square_sum, correct_sum)
            out.update({k: float(v) for k, v in stderr.items()})
        return out
