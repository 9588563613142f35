"""Per-sample losses: the built-ins, user losses from a spec, and the contract check.

A loss maps ``(output (B, C), target (B, ...))`` to ``(B,)``: one value per sample. The engine sums these and
divides by the split size once, so a loss that already averages (``reduction="mean"``) would silently divide
everything by the batch size again. :func:`check_per_sample` probes a loss once on two samples and refuses any
other shape with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lossatlas.errors import UserInputError
from lossatlas.specs import load_user_function, parse_spec

LossFn = Callable[[Tensor, Tensor], Tensor]
"""Per-sample loss: ``(output (B, C), target (B, ...)) -> (B,)``."""


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if y.dtype in (torch.int64, torch.int32):
        y = F.one_hot(y, out.shape[-1]).to(out.dtype)
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


def check_per_sample(loss_fn: LossFn, out: Tensor, y: Tensor, spec: str) -> None:
    """One-line error unless ``loss_fn(out[:2], y[:2])`` has shape ``(2,)`` (one loss per sample)."""
    b = min(2, int(out.shape[0]))
    try:
        value = loss_fn(out[:b], y[:b])
    except Exception as exc:  # noqa: BLE001 - any failure here is the loss spec's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"--loss {spec} failed on two samples of the data: {type(exc).__name__}: {first}") \
            from None
    shape = tuple(value.shape) if isinstance(value, Tensor) else None
    if shape != (b,):
        raise UserInputError(
            f"--loss {spec} returned shape {shape} for {b} samples; lossatlas needs one loss per sample, "
            f"shape ({b},): use reduction=\"none\" (e.g. --loss torch.nn.functional:cross_entropy:reduction=none)")


__all__ = ["BUILTIN_LOSSES", "LossFn", "check_per_sample", "cross_entropy_and_correct", "resolve_loss"]
