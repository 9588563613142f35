"""Per-sample and per-token losses: the built-ins, user losses from a spec, and the contract check.

A loss maps ``(output (B, ...), target (B, ...))`` to one value per sample ``(B,)`` or one value per token
``(B, T, ...)`` (a prefix of the target's shape). The engine sums these and divides by the number of loss terms
of the split once (:class:`SplitLoss`): samples, or unmasked tokens (labels equal to -100 carry no loss). So a
loss that already averages (``reduction="mean"``) would silently divide everything by the batch size again:
:func:`check_per_sample` probes a loss once on two samples and refuses any other shape with a one-line error.
The built-in ``cross_entropy`` and ``mse`` take class labels ``(B,)``, per-token labels ``(B, T)`` with -100
ignored, and (``mse``) float targets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lossatlas.batch import IGNORE_INDEX
from lossatlas.errors import UserInputError
from lossatlas.specs import load_user_function, parse_spec

LossFn = Callable[[Tensor, Tensor], Tensor]
"""Per-sample (or per-token) loss: ``(output (B, ..., C), target (B, ...)) -> (B,)`` or ``(B, T, ...)``."""


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    if y.dim() == out.dim() - 1 and not y.is_floating_point():  # class labels, per sample or per token
        flat = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none",
                               ignore_index=IGNORE_INDEX)
        return flat.reshape(y.shape)
    return F.cross_entropy(out, y, reduction="none")


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if not y.is_floating_point():  # one-hot targets; ignored positions get any valid class (masked later)
        y = F.one_hot(y.clamp_min(0), out.shape[-1]).to(out.dtype)
    return ((out - y.reshape(out.shape)) ** 2).mean(dim=-1)


BUILTIN_LOSSES: dict[str, LossFn] = {"cross_entropy": _cross_entropy, "mse": _mse}
"""``cross_entropy`` (classification) and ``mse`` (mean over outputs of the squared error; one-hot targets for
integer labels)."""


def cross_entropy_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropy (float64) and correctness of ``logits (..., C)`` with integer labels ``y`` (``...``).

    The numbers of ``F.cross_entropy(reduction="none")`` and ``argmax(-1) == y`` (first maximum on ties), from
    the logits laid out as ``(C, R)``: with a few classes, ``log_softmax`` over a short last dimension runs
    ~3× slower than the same reductions over contiguous rows of all R samples. As in ``log_softmax`` the loss is
    ``log Σ exp(z − m) − (z_y − m)``, ``m`` the row maximum (no cancellation when the loss is tiny); ``exp`` and
    ``log`` run in float64, which costs nothing here and makes a sample's value independent of its position in
    the pass (vectorised and scalar float32 ``exp`` differ in the last bit). No autograd: the engine's metrics.
    """
    c = logits.shape[-1]
    lead = logits.shape[:-1]
    zt = logits.reshape(-1, c).t().clone(memory_format=torch.contiguous_format)  # (C, R), a copy: changed below
    top, predicted = zt.max(dim=0)                        # first index of the maximum, like argmax
    log_sum = zt.sub_(top).double().exp_().sum(dim=0).log_()
    picked = logits.gather(-1, y.expand(lead).unsqueeze(-1)).reshape(-1)
    return (log_sum - (picked - top)).reshape(lead), predicted.reshape(lead) == y


def resolve_loss(spec: str) -> LossFn:
    """A per-sample loss from its name or ``module:function[:key=value,...]`` / ``file.py:function`` spec.

    Keys are passed to the function as keyword arguments on every call, e.g.
    ``torch.nn.functional:cross_entropy:reduction=none``.
    """
    parsed = parse_spec(spec, "loss", builtins=BUILTIN_LOSSES)
    if parsed.builtin:
        if parsed.options:
            raise UserInputError(f"the built-in loss '{parsed.name}' takes no options; got '{spec}'")
        return BUILTIN_LOSSES[parsed.name]
    return load_user_function(parsed, "loss")  # type: ignore[return-value]


class SplitLoss:
    """A loss as every sum over a split uses it: per-row sums of loss terms and per-row counts of terms.

    ``loss(out, y)`` is ``(B,)``: a sample's loss, or the sum of its unmasked tokens' losses; ``loss.counts(y)``
    ``(B,)`` the number of terms in each (1 per sample; unmasked tokens). The split's mean is
    Σ loss / Σ counts over all its batches, so the value is the same at any batch size.

    Args:
        fn: the per-sample or per-token loss.
        ndim: dimensions of its value (1: per sample; k > 1: per token over ``y.shape[:k]``).
    """

    def __init__(self, fn: LossFn, ndim: int = 1) -> None:
        self.fn = fn
        self.ndim = int(ndim)

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        value = self.fn(out, y)
        mask = self.mask(y)
        if mask is not None:
            value = torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))
        return value if self.ndim == 1 else value.reshape(value.shape[0], -1).sum(dim=1)

    def mask(self, y: Tensor) -> Tensor | None:
        """True where a sample or token carries a loss, shaped like integer labels ``y`` (None for float
        targets and for a per-sample loss of per-token labels)."""
        if y.is_floating_point() or y.dim() != self.ndim:
            return None
        return y != IGNORE_INDEX

    def counts(self, y: Tensor) -> Tensor:
        """``(B,)`` float64: loss terms per row (0 for a sample labelled -100)."""
        b = int(y.shape[0])
        mask = self.mask(y)
        if mask is not None:
            return mask.reshape(b, -1).sum(dim=1, dtype=torch.float64)
        terms = 1
        for size in y.shape[1:self.ndim]:
            terms *= int(size)
        return torch.full((b,), float(terms), dtype=torch.float64, device=y.device)


def batch_mean(value: Tensor, y: Tensor) -> Tensor:
    """Mean of per-sample or per-token loss values over the loss terms of a batch: positions labelled -100 left
    out when ``value`` is shaped like integer labels ``y``."""
    if not y.is_floating_point() and value.shape == y.shape:
        mask = y != IGNORE_INDEX
        if not bool(mask.all()):
            kept = torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))
            return kept.sum() / mask.sum().to(value.dtype).clamp_min(1)
    return value.mean()


def minibatch_loss(spec: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The training objective of a loss spec: ``(output, target) ->`` the batch's mean over its loss terms
    (samples, or unmasked tokens of per-token labels)."""
    fn = resolve_loss(spec)
    return lambda out, y: batch_mean(fn(out, y), y)


def split_loss(loss_fn: LossFn, out: Tensor, y: Tensor, spec: str) -> SplitLoss:
    """:class:`SplitLoss` of ``loss_fn``, its kind (per sample / per token) read from a probe on two samples."""
    check_per_sample(loss_fn, out, y, spec)
    b = min(2, int(out.shape[0]))
    with torch.no_grad():
        return SplitLoss(loss_fn, loss_fn(out[:b], y[:b]).dim())


def check_per_sample(loss_fn: LossFn, out: Tensor, y: Tensor, spec: str) -> None:
    """One-line error unless ``loss_fn(out[:2], y[:2])`` has shape ``(2,)`` (one loss per sample) or a prefix of
    the targets' shape of length > 1 (one loss per token)."""
    b = min(2, int(out.shape[0]))
    try:
        value = loss_fn(out[:b], y[:b])
    except Exception as exc:  # noqa: BLE001 - any failure here is the loss spec's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--loss {spec} failed on two samples of the data: {type(exc).__name__}: {first}") \
            from None
    shape = tuple(value.shape) if isinstance(value, Tensor) else None
    target = tuple(y[:b].shape)
    if shape != (b,) and not (shape and len(shape) > 1 and shape == target[:len(shape)]):
        raise UserInputError(
            f"--loss {spec} returned shape {shape} for {b} samples; lossatlas needs one loss per sample, "
            f"shape ({b},), or one per token, shaped like the targets {target}: use reduction=\"none\" "
            "(e.g. --loss torch.nn.functional:cross_entropy:reduction=none)")


__all__ = ["BUILTIN_LOSSES", "LossFn", "SplitLoss", "batch_mean", "check_per_sample", "cross_entropy_and_correct",
           "minibatch_loss", "resolve_loss", "split_loss"]
