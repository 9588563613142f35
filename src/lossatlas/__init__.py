"""lossatlas: a laboratory for the loss landscapes of neural networks."""

from __future__ import annotations

__version__ = "0.1.0"
