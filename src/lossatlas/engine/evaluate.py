"""The one evaluation engine: metrics at many parameter points, batched over data and over points.

Every feature that needs "the loss at these parameter points" (surfaces, interpolations, curves, convexity
maps, studies) calls :class:`Evaluator`. The value at a point is the sample-weighted mean over the whole split
(:func:`lossatlas.engine.batches.sum_over_batches`: an uneven last batch is weighted by its size), accumulated
in float64.

Points are evaluated several at a time with ``torch.func.vmap`` over stacked parameter dicts; the result equals a
plain per-point loop to float rounding. On CPU a point whose batch already fills a cache-sized pass runs alone,
without vmap, and conv nets run in channels-last layout (:mod:`lossatlas.engine.passes`). Points that run alone
are loaded into an inference copy of the model once per point, with Linear(+ReLU) fused on CPU
(:mod:`lossatlas.engine.inference`), and when the logits of a whole split fit a cache-sized pass their metrics are
reduced once per point, not once per batch.

Thread safety: each thread that evaluates gets its own copy of the model (``functional_call`` swaps tensors into
a module, and BatchNorm re-estimation hooks into it), so a Dask worker with several threads gives the numbers of
an in-process run.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from lossatlas.batch import (
    IGNORE_INDEX,
    check_labels,
    float_dtype_of,
    is_stream,
    leaves,
    num_rows,
    per_token,
    probe_model,
    select,
    take,
    to_device,
)
from lossatlas.engine.attention import math_attention
from lossatlas.engine.batches import batch_slices, sum_over_batches
from lossatlas.engine.bn import BNPolicy, has_batchnorm, recompute_statistics
from lossatlas.engine.inference import PointModel, fused_matches
from lossatlas.engine.losses import BUILTIN_LOSSES, SplitLoss, cross_entropy_and_correct, resolve_loss, split_loss
from lossatlas.engine.passes import (
    CPU_PASS_FLOATS,
    POINT_LOGITS_FLOATS,
    activation_numel_per_sample,
    channels_last_works,
    layout,
)
from lossatlas.engine.subset import STDERR_SUFFIX, check_subset, ratio_stderr, subset_indices
from lossatlas.errors import UserInputError
from lossatlas.params import ParamDict, buffers_of, float_buffer_names, functional_forward, private_copy, stack_points

if TYPE_CHECKING:
    from lossatlas.data import Dataset

SPLITS = ("train", "test")
STREAM_COPIES = 8
"""A streamed batch may take at most 1/8 of ``EvalSpec.memory_bytes``: its items, their stacked tensor and the
last batch kept for the targets are about three copies, the forward pass's activations the rest."""


@dataclass(frozen=True)
class EvalSpec:
    """How points are evaluated.

    Attributes:
        loss: ``cross_entropy``, ``mse`` or a ``module:function[:key=value]`` / ``file.py:function`` spec returning
            per-sample losses ``(B,)`` from ``(output, target)``.
        batch_size: samples per forward pass.
        bn: :class:`BNPolicy`.
        splits: which splits to evaluate (``train``, ``test``; a missing test split is skipped).
        memory_bytes: budget for one vmapped pass; decides how many points share a forward pass.
        subset: evaluate every point on one fixed subset of each split: a fraction in (0, 1] (``float``) or a
            sample count (``int``); stratified by class (:mod:`lossatlas.engine.subset`). Adds a
            ``<metric>_stderr`` per metric. None = the whole split.
        subset_seed: seed of the subset draw.
    """

    loss: str = "cross_entropy"
    batch_size: int = 1000
    bn: BNPolicy = BNPolicy.eval
    splits: tuple[str, ...] = SPLITS
    memory_bytes: int = 1 << 30
    subset: float | int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "subset", check_subset(self.subset))
        try:
            object.__setattr__(self, "bn", BNPolicy(self.bn))
        except ValueError:
            raise UserInputError(f"--bn must be one of eval, recompute, states; got '{self.bn}'") from None
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserInputError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if self.memory_bytes < 1 << 20:
            raise UserInputError("the memory budget must be at least 1 MiB")
        object.__setattr__(self, "splits", tuple(self.splits))
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise UserInputError(f"unknown split '{bad[0] if bad else ''}'; use train or test")


class Evaluator:
    """Loss and accuracy of one model on one dataset at any parameter point.

    The user's model is deep-copied; it is never mutated. θ is the copy's parameters (plus float buffers under
    ``bn=states``).

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
        self._master = private_copy(model).to(self.device)  # never run: copied per thread
        self._local = threading.local()
        self._lock = threading.Lock()
        raw_loss = resolve_loss(self.spec.loss)
        self.classification = data.task == "classification"
        self._float_dtype = float_dtype_of(self._master)
        self.splits: dict[str, tuple[Any, Any]] = {}
        self.population: dict[str, int] = {}  # split sizes before any subset
        for split in self.spec.splits:
            if split == "test" and data.x_test is None:
                continue
            self.splits[split] = self._draw(data, split)
        if not self.splits:
            raise UserInputError(f"the data '{data.name}' has none of the splits {', '.join(self.spec.splits)}")
        self.buffers = {k: v.to(self.device) for k, v in buffers_of(self._master).items()}
        self.has_bn = has_batchnorm(self._master)
        # BN statistics are re-estimated on the training split (the evaluated subset of it, if any)
        self.bn_inputs: Any = None
        if self.spec.bn is BNPolicy.recompute and self.has_bn:
            self.bn_inputs = (self.splits["train"] if "train" in self.splits else self._draw(data, "train"))[0]
        x0, y0 = next(iter(self.splits.values()))
        x2, y2 = take(x0, slice(0, 2)), take(y0, slice(0, 2))
        probe = probe_model(self.model, x2, data.name)
        self._streamed = any(is_stream(x) for x, _ in self.splits.values())
        self.batch_size = self.spec.batch_size
        if self._streamed:  # a streamed batch is read, stacked and kept (~3 copies): bound it by the budget
            row_bytes = sum(t.numel() * t.element_size() for t in leaves(x2)) // max(num_rows(x2), 1)
            cap = self.spec.memory_bytes // (STREAM_COPIES * max(row_bytes, 1))
            self.batch_size = max(1, min(self.batch_size, cap))
        if self.classification and not self._streamed:  # streamed labels are checked batch by batch
            for split, (_, y) in self.splits.items():
                check_labels(y, int(probe.shape[-1]), f"{data.name} ({split})")
        self.loss_fn: SplitLoss = split_loss(raw_loss, probe, y2, self.spec.loss)
        self._counts: dict[str, float] = {}
        self._per_sample = activation_numel_per_sample(self.model, x0)
        self._out_per_sample = int(probe[0].numel())
        self._channels_last = self.device.type == "cpu" and channels_last_works(self.model, x0, self.buffers)
        # cross-entropy and accuracy from transposed logits: the built-in loss, integer labels in range
        self._fast_cross_entropy = (raw_loss is BUILTIN_LOSSES["cross_entropy"] and self.classification
                                    and probe.dim() == y2.dim() + 1
                                    and not y2.is_floating_point())
        self._vmap = self._vmap_works(x2)
        self._fuse = self.device.type == "cpu"
        if self._fuse:  # check the fused copy once against the plain model; keep it as this thread's copy
            fused = self.point_model
            cl = self._channels_last
            self._fuse = fused.fused > 0 and fused_matches(
                self.model, fused, {k: layout(v, cl) for k, v in self.theta().items()}, self.buffers,
                layout(take(x0, slice(0, 4)), cl))
            if not self._fuse:
                self._local.__dict__.pop("point_model", None)

    def _draw(self, data: Dataset, split: str) -> tuple[Any, Any]:
        x, y = data.split(split)
        self.population[split] = num_rows(x)
        if self.spec.subset is not None:  # the same samples (sequences) at every point
            stratify = self.classification and not is_stream(y) and not per_token(y)
            labels = y if not is_stream(y) else torch.zeros(num_rows(y))
            keep = subset_indices(labels, self.spec.subset, self.spec.subset_seed, split, stratify)
            x, y = select(x, keep), select(y, keep)
        return to_device(x, self.device, self._float_dtype), to_device(y, self.device)

    def _vmap_works(self, x2: Any) -> bool:
        """Whether two stacked points run through one vmapped pass (a model with data-dependent control flow,
        e.g. a Hugging Face attention mask, may refuse vmap: its points then run one after another)."""
        if self._one_point_per_pass():
            return True
        theta = {k: torch.stack([v, v]) for k, v in self.theta().items()}
        buffers = {k: v for k, v in self.buffers.items() if k not in theta}
        try:
            with torch.no_grad():
                self._vmapped_forward(self.model, theta, buffers)(x2)
        except Exception:  # noqa: BLE001 - any failure under vmap means "one point per pass"
            return False
        return True

    def count(self, split: str) -> float:
        """Loss terms of a split (its samples, or its unmasked tokens): what every mean divides by."""
        if split not in self._counts:
            x, y = self.splits[split]
            if is_stream(y):
                total = sum_over_batches(lambda _xb, yb: self.loss_fn.counts(yb).sum(), x, y, self.batch_size)
            else:
                total = self.loss_fn.counts(y).sum()
            self._counts[split] = float(total)
        return self._counts[split]

    # -- thread-private model ------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """This thread's private copy of the model (eval mode); ``functional_call`` may swap tensors into it."""
        local = self._local.__dict__
        if local.get("device") != self.device:
            with self._lock:
                local.pop("point_model", None)
                local["model"] = copy.deepcopy(self._master)
                local["device"] = self.device
        return local["model"]  # type: ignore[no-any-return]

    @property
    def point_model(self) -> PointModel:
        """This thread's inference copy for the point-by-point path (:mod:`lossatlas.engine.inference`)."""
        self.model  # noqa: B018 - resets this thread's copies when the device changed
        local = self._local.__dict__
        if "point_model" not in local:
            with self._lock:
                local["point_model"] = PointModel(self._master, fuse=self._fuse and self.device.type == "cpu")
        return local["point_model"]  # type: ignore[no-any-return]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- the point we perturb ------------------------------------------------------------------
    def theta(self) -> ParamDict:
        """θ of the model: parameters, plus float buffers under the BN ``states`` policy."""
        theta = {name: p.detach().clone() for name, p in self._master.named_parameters()}
        if self.spec.bn is BNPolicy.states:
            for name in float_buffer_names(self._master):
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
        """Move the model, the data and the buffers to ``device`` in place (e.g. a worker's GPU)."""
        self.device = torch.device(device)
        self._master = self._master.to(self.device)
        self.splits = {s: (to_device(x, self.device), to_device(y, self.device)) for s, (x, y) in self.splits.items()}
        self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}
        if self.bn_inputs is not None:
            self.bn_inputs = to_device(self.bn_inputs, self.device)
        return self

    # -- how points share a pass ---------------------------------------------------------------
    def points_per_pass(self, batch_size: int | None = None) -> int:
        """How many points fit in one vmapped forward pass under the memory budget."""
        b = min(batch_size or self.batch_size, max(num_rows(x) for x, _ in self.splits.values()))
        n_params = sum(p.numel() for p in self._master.parameters())
        per_point = 4 * (3 * self._per_sample * b + 2 * n_params)
        points = self.spec.memory_bytes // max(per_point, 1)
        if not self._one_point_per_pass():
            points = min(points, CPU_PASS_FLOATS // (self._per_sample * b))
        return max(1, min(256, points))

    def _one_point_per_pass(self, points: int = 0) -> bool:
        """Evaluate point after point without vmap: for a single point, and on CPU for conv nets and for points
        whose batch alone fills a cache-sized pass (vmapped passes only ran slower there)."""
        b = min(self.batch_size, max(num_rows(x) for x, _ in self.splits.values()))
        return points == 1 or not getattr(self, "_vmap", True) or self.device.type == "cpu" and (
            self._channels_last or self._per_sample * b * 2 > CPU_PASS_FLOATS)

    def _vmapped_forward(self, model: nn.Module, stacked: Mapping[str, Tensor], buffers: Mapping[str, Tensor]
                         ) -> Callable[[Any], Tensor]:
        """``x (B, ...) -> (P, B, C)`` at the P stacked points in one vmapped pass."""

        def forward(point: Mapping[str, Tensor], x: Any) -> Tensor:
            return functional_forward(model, point, buffers, x)

        batched = vmap(forward, in_dims=(0, None))

        def run(x: Any) -> Tensor:
            with math_attention():  # the fused CPU attention kernel has no vmap rule (a loop over points)
                return batched(dict(stacked), x)  # type: ignore[no-any-return]
        return run

    # -- evaluation ----------------------------------------------------------------------------
    def _batch_sums(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per-point float64 sums over a batch, ``out`` (P, B, ...): :meth:`_row_values` reduced by :meth:`_reduce`."""
        return self._reduce(self._row_values(out, y))

    def _row_values(self, out: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per row of a batch, ``out`` (P, B, ...): loss lᵢ (P, B) (a sample's, or its unmasked tokens' sum), loss
        terms wᵢ (B,), correct predictions cᵢ (P, B) and labels aᵢ (B,), all float64. A row's values do not depend
        on the other rows of the pass, so rows computed batch by batch and concatenated reduce to the same bits."""
        p, b = out.shape[:2]
        if self._streamed and self.classification:
            check_labels(y, int(out.shape[-1]), "the streamed data")
        rows = {"terms": self.loss_fn.counts(y)}
        scored = self.classification and y.dim() == out.dim() - 2 and not y.is_floating_point()
        labelled = (y != IGNORE_INDEX) if scored else None
        if self._fast_cross_entropy:
            per_item, hit = cross_entropy_and_correct(out, y.clamp_min(0) if labelled is not None else y)
            if labelled is not None:
                per_item = per_item.masked_fill(~labelled, 0.0)
            rows["loss"] = per_item.reshape(p, b, -1).sum(dim=2)
        else:
            flat_out = out.reshape(p * b, *out.shape[2:])
            flat_y = y.repeat(p, *([1] * (y.dim() - 1)))
            rows["loss"] = self.loss_fn(flat_out, flat_y).reshape(p, b).double()
            if scored:
                hit = (flat_out.argmax(dim=-1) == flat_y).reshape(p, *y.shape)
        if self.classification:
            if labelled is None:  # no integer label per output: nothing to score (e.g. a custom loss's targets)
                rows["correct"] = torch.zeros(p, b, dtype=torch.float64, device=out.device)
                rows["labels"] = torch.ones(b, dtype=torch.float64, device=out.device)
            else:
                rows["correct"] = (hit & labelled).reshape(p, b, -1).sum(dim=2, dtype=torch.float64)
                rows["labels"] = labelled.reshape(b, -1).sum(dim=1, dtype=torch.float64)
        return rows

    def _reduce(self, rows: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-point sums of :meth:`_row_values`: the loss, its terms (samples or unmasked tokens), correct
        predictions and the labels they are out of; under a subset also the cross sums a ratio's standard error
        needs (Σlᵢ², Σlᵢwᵢ, Σwᵢ², and the same for cᵢ, aᵢ)."""
        per_sample, terms = rows["loss"], rows["terms"]
        p = per_sample.shape[0]
        sums = {"loss": per_sample.sum(dim=1), "count": terms.sum().expand(p).clone()}
        if self.spec.subset is not None:
            sums.update(square=per_sample.square().sum(dim=1), loss_count=(per_sample * terms).sum(dim=1),
                        count_sq=terms.square().sum().expand(p).clone())
        if self.classification:
            correct, labels = rows["correct"], rows["labels"]
            sums.update(correct=correct.sum(dim=1), labels=labels.sum().expand(p).clone())
            if self.spec.subset is not None:
                sums.update(correct_sq=correct.square().sum(dim=1), correct_labels=(correct * labels).sum(dim=1),
                            labels_sq=labels.square().sum().expand(p).clone())
        return sums

    def _metrics(self, split: str, sums: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Means (and subset standard errors) of a split from its float64 sums: Σ loss / Σ terms (samples or
        unmasked tokens), Σ correct / Σ labels."""
        out = {f"{split}_loss": (sums["loss"] / sums["count"]).cpu()}
        if self.classification:
            out[f"{split}_accuracy"] = (sums["correct"] / sums["labels"]).cpu()
        if self.spec.subset is not None:
            n, population = num_rows(self.splits[split][0]), self.population[split]
            out[f"{split}_loss{STDERR_SUFFIX}"] = ratio_stderr(
                sums["loss"], sums["square"], sums["loss_count"], sums["count"], sums["count_sq"], n, population).cpu()
            if self.classification:
                out[f"{split}_accuracy{STDERR_SUFFIX}"] = ratio_stderr(
                    sums["correct"], sums["correct_sq"], sums["correct_labels"], sums["labels"], sums["labels_sq"],
                    n, population).cpu()
        return out

    def statistics_at(self, point: Mapping[str, Tensor]) -> ParamDict:
        """The buffers to evaluate ``point`` with: BN statistics re-estimated there under ``recompute``, else the
        model's (``states`` entries in ``point`` override them in the forward pass)."""
        if self.bn_inputs is None:
            return self.buffers
        return recompute_statistics(self.model, point, self.buffers, self.bn_inputs, self.batch_size)

    @torch.no_grad()
    def evaluate_stacked(self, stacked: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Metrics at P points given stacked parameters ``{name: (P, *shape)}``; returns ``{metric: (P,)}``.

        Under ``bn=recompute`` points are evaluated one by one (statistics are re-estimated per point).
        """
        p = next(iter(stacked.values())).shape[0]
        if self.bn_inputs is not None:
            rows = [self.evaluate_one({k: v[i] for k, v in stacked.items()}) for i in range(p)]
            return {m: torch.tensor([r[m] for r in rows], dtype=torch.float64) for m in self.metric_names}
        buffers = {k: v for k, v in self.buffers.items() if k not in stacked}
        if self._one_point_per_pass(p):
            return self._point_by_point(lambda i: {k: v[i] for k, v in stacked.items()}, p, buffers)
        forward = self._vmapped_forward(self.model, stacked, buffers)
        results: dict[str, Tensor] = {}
        for split, (x, y) in self.splits.items():
            sums = sum_over_batches(lambda xb, yb: self._batch_sums(forward(xb), yb), x, y, self.batch_size)
            results.update(self._metrics(split, sums))
        return results

    @torch.no_grad()
    def _point_by_point(self, point: Callable[[int], Mapping[str, Tensor]], p: int, buffers: Mapping[str, Tensor]
                        ) -> dict[str, Tensor]:
        """Metrics at P points ``point(0), ..., point(P - 1)``, one after another: each point is loaded into this
        thread's inference copy once, then runs one plain forward pass per batch. When the logits of a whole split
        fit a cache-sized pass, they are collected and reduced once per point (the same float64 sums as batch by
        batch)."""
        model = self.point_model
        cl = self._channels_last and self.device.type == "cpu"
        bs = self.batch_size
        batches = {split: (None if num_rows(x) * self._out_per_sample > POINT_LOGITS_FLOATS else
                           _Reread(x, y, bs) if is_stream(x) else  # a stream is read again at every point
                           [layout(take(x, s), cl) for s in batch_slices(num_rows(x), bs)])
                   for split, (x, y) in self.splits.items()}
        sums: dict[str, list[dict[str, Tensor]]] = {split: [] for split in self.splits}
        model.load(buffers)
        for i in range(p):
            model.load({k: layout(v, cl) for k, v in point(i).items()})
            for split, (x, y) in self.splits.items():
                chunks = batches[split]
                if isinstance(chunks, _Reread):  # a streamed split: row values batch by batch, reduced once
                    parts = [self._row_values(model(xb)[None], yb) for xb, yb in chunks]
                    rows = {k: torch.cat([r[k] for r in parts], dim=-1) for k in parts[0]}
                    sums[split].append(self._reduce(rows))
                elif chunks is not None:
                    sums[split].append(self._batch_sums(torch.cat([model(xb) for xb in chunks])[None], y))
                else:
                    sums[split].append(sum_over_batches(
                        lambda xb, yb: self._batch_sums(model(layout(xb, cl))[None], yb), x, y, bs))
        results: dict[str, Tensor] = {}
        for split, parts in sums.items():
            results.update(self._metrics(split, {k: torch.cat([s[k] for s in parts]) for k in parts[0]}))
        return results

    def evaluate_coords(self, theta: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                        coords: Tensor) -> dict[str, Tensor]:
        """Metrics at θ + Σᵢ coords[p, i] dᵢ for every row p of ``coords`` (P, m); returns ``{metric: (P,)}``.

        Points are split into groups of :meth:`points_per_pass`; a group's result does not depend on which other
        groups exist, so a resumed run reproduces an uninterrupted one exactly.
        """
        theta = {k: v.to(self.device) for k, v in theta.items()}
        dirs = [{k: d[k].to(self.device) for k in theta} for d in directions]
        coords = coords.to(self.device, torch.float64)
        chunk = self.points_per_pass()
        parts: list[dict[str, Tensor]] = []
        for start in range(0, coords.shape[0], chunk):
            part = coords[start:start + chunk]
            if self.bn_inputs is None and self._one_point_per_pass(len(part)):  # each point built when it runs
                buffers = {k: v for k, v in self.buffers.items() if k not in theta}
                scratch = {k: torch.empty_like(v) for k, v in theta.items()}
                rows = part.tolist()
                parts.append(self._point_by_point(partial(_point_at, theta, dirs, rows, scratch), len(part), buffers))
            else:
                parts.append(self.evaluate_stacked(stack_points(theta, dirs, part)))
        return {m: torch.cat([p[m] for p in parts]) for m in self.metric_names}

    @torch.no_grad()
    def evaluate_one(self, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor] | None = None
                     ) -> dict[str, float]:
        """Metrics at a single point, one plain forward pass per batch.

        ``buffers`` replaces the model's buffers (e.g. the BN statistics of a model being trained); otherwise
        :meth:`statistics_at` decides them.
        """
        point = {k: v.to(self.device) for k, v in point.items()}
        model = self.model
        if buffers is not None:
            buffers = {k: v.to(self.device) for k, v in buffers.items()}
        else:
            if self.bn_inputs is not None:  # statistics come from the data at this point, not from θ
                point = {k: v for k, v in point.items() if k not in self.buffers}
            buffers = self.statistics_at(point)
        out: dict[str, float] = {}
        for split, (x, y) in self.splits.items():
            sums = sum_over_batches(
                lambda xb, yb: self._batch_sums(functional_forward(model, point, buffers, xb)[None], yb),
                x, y, self.batch_size)
            out.update({k: float(v[0]) for k, v in self._metrics(split, sums).items()})
        return out


class _Reread:
    """The ``(inputs, targets)`` batches of a streamed split, read anew on every iteration (never held)."""

    def __init__(self, x: Any, y: Any, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self) -> Any:
        return ((take(self.x, s), take(self.y, s)) for s in batch_slices(num_rows(self.x), self.batch_size))


def _point_at(theta: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], coords: list[list[float]],
              out: dict[str, Tensor], p: int) -> dict[str, Tensor]:
    """θ + Σᵢ coords[p][i] dᵢ written into ``out`` (reused from point to point); the values of
    :func:`lossatlas.params.add_scaled` (θ + c₁d₁, then + c₂d₂, ...)."""
    coefficients = coords[p]
    for k, t in theta.items():
        if not directions:
            out[k].copy_(t)
            continue
        torch.add(t, directions[0][k], alpha=coefficients[0], out=out[k])
        for d, c in zip(directions[1:], coefficients[1:], strict=True):
            out[k].add_(d[k], alpha=c)
    return out


__all__ = ["SPLITS", "EvalSpec", "Evaluator"]
