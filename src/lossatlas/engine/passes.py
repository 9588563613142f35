"""How the engine lays out one forward pass: memory estimates, points per pass, channels-last on CPU.

These are speed decisions only; they never change a number beyond float rounding (tested against the plain
per-point loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lossatlas.batch import call_model, take
from lossatlas.params import functional_forward, parameters_of

CPU_PASS_FLOATS = 1 << 21
"""Activations (floats) of one vmapped pass on CPU: 8 MiB stays cache-sized; bigger passes ran slower per point
than one point at a time on the benchmark MLP and CNN (``benchmarks/surface.py``)."""

POINT_LOGITS_FLOATS = CPU_PASS_FLOATS
"""Point by point, the outputs of a whole split are collected and reduced once per point (not once per batch) when
they hold at most this many floats: the metric kernels then run once over all samples, not once per batch."""


def activation_numel_per_sample(model: nn.Module, x: Any) -> int:
    """Sum of output sizes of every leaf module for one sample (a memory estimate for vmap)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out[0].numel() if out.dim() > 0 else 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            call_model(model, take(x, slice(0, 1)))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


def layout(t: Any, channels_last: bool) -> Any:
    """``t`` in channels-last memory layout when asked and a 4-D tensor (same values, other strides)."""
    if channels_last and isinstance(t, Tensor) and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def channels_last_works(model: nn.Module, x: Any, buffers: Mapping[str, Tensor]) -> bool:
    """Whether a Conv2d net on one 4-D input tensor gives the same output in channels-last layout (a ``.view``
    may refuse it)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    theta = parameters_of(model)
    with torch.no_grad():
        ref = functional_forward(model, theta, buffers, x[:4])
        try:
            got = functional_forward(model, {k: layout(v, True) for k, v in theta.items()}, buffers,
                                     layout(x[:4], True))
        except Exception:  # noqa: BLE001 - any failure in the other layout just means "stay in NCHW"
            return False
    return ref.shape == got.shape and bool(torch.allclose(ref, got, rtol=1e-4, atol=1e-5))


__all__ = ["CPU_PASS_FLOATS", "POINT_LOGITS_FLOATS", "activation_numel_per_sample", "channels_last_works", "layout"]
