"""Second derivatives through attention: every Hessian-vector product runs with PyTorch's math attention kernel.

``F.scaled_dot_product_attention`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, Hugging Face models
with ``attn_implementation="sdpa"``) dispatches on the CPU to a fused kernel
(``_scaled_dot_product_flash_attention_for_cpu``, float32 and float64 alike) that has neither a double backward
nor a forward-mode derivative, so ``jvp(grad(L))`` and grad-of-grad both fail through it. The math kernel is
the same function written with differentiable operations (matmul, softmax), so inside :func:`math_attention`
products go through attention; outside it, evaluation keeps the fast kernel. The engine's vmapped passes over
several points run inside it too: under ``vmap`` the fused kernel has no batching rule and PyTorch falls back to a
loop over the points, while the math kernel's matmuls batch.

PyTorch's backend switch (``torch.nn.attention.sdpa_kernel``) sets process-wide flags, so the context here is
counted: the first thread to enter selects the math kernel, the last to leave restores what was there before; a
thread evaluating meanwhile (a surface beside a convexity map) only runs the slower kernel, never a failing one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch.nn.attention import SDPBackend, sdpa_kernel

_LOCK = threading.Lock()
_DEPTH = 0
_ACTIVE: Any = None  # the sdpa_kernel context entered by the first holder


@contextmanager
def math_attention() -> Iterator[None]:
    """Run the enclosed code with ``scaled_dot_product_attention`` on its math kernel (re-entrant, thread-safe)."""
    global _DEPTH, _ACTIVE
    with _LOCK:
        if _DEPTH == 0:
            _ACTIVE = sdpa_kernel(SDPBackend.MATH)
            _ACTIVE.__enter__()
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                active, _ACTIVE = _ACTIVE, None
                active.__exit__(None, None, None)


__all__ = ["math_attention"]
