"""Second derivatives through attention: :func:`lossatlas.engine.attention.math_attention` (the engine's vmapped
passes use it too), re-exported where the curvature code has always imported it."""

from __future__ import annotations

from lossatlas.engine.attention import math_attention

__all__ = ["math_attention"]
