"""Executors: where chunks of grid points are evaluated.

Every grid-shaped computation (surfaces, interpolations, convexity maps) is a list of
:class:`WorkUnit` s and one picklable task ``task(unit) -> {metric: values}``. An executor yields
``(unit, result)`` pairs as they finish; the driver writes each one to the store straight away, so
resume works the same way whichever executor ran the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class WorkUnit:
    """A chunk of grid points.

    Attributes:
        region: ``{dim: slice}`` of the store this chunk fills (e.g. ``{"x": slice(3, 4), "y": slice(0, 31)}``).
        coords: ``(P, m)`` coefficients of the m directions for the P points, in row-major order of region.
    """

    region: dict[str, slice]
    coords: np.ndarray


Task = Callable[[WorkUnit], dict[str, np.ndarray]]


class Executor(Protocol):
    """Runs a task over work units, yielding results in completion order."""

    def run(self, task: Task, units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, dict[str, np.ndarray]]]:
        ...


class InProcessExecutor:
    """Evaluate units one after another in this process (the default)."""

    def run(self, task: Task, units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, dict[str, np.ndarray]]]:
        for unit in units:
            yield unit, task(unit)
