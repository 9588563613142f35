"""Grids of parameter points: axes, work units and the one driver that fills a store.

A grid-shaped computation (a surface, an interpolation, a convexity map, a path evaluated at many t) is

* axes: ``{"x": values, "y": values}`` (:class:`Axis` parses ``MIN:MAX:N``);
* a *task*: a picklable callable ``task(unit) -> {variable: values}`` with a ``metric_names`` property and
  ``directions`` (what the store records), e.g. :class:`PointTask` (the engine's metrics at
  θ + Σᵢ cᵢ dᵢ) or a subclass that adds variables (:class:`lossatlas.curvature.maps.CurvatureTask`);
* :func:`run_grid`: splits the grid into :class:`~lossatlas.execute.WorkUnit` s, skips those already in the
  store, runs the rest on an executor and writes each finished unit as it arrives (resume for free).

Nothing here knows about curvature or paths: they plug in a task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr

from lossatlas.engine import Evaluator
from lossatlas.errors import UserInputError
from lossatlas.execute import Executor, InProcessExecutor, WorkUnit
from lossatlas.params import ParamDict
from lossatlas.store import RegionWriter, open_surface, prepare_store, update_attrs, write_directions

Progress = Callable[[int, int], None]
"""Called as ``progress(points_done, points_total)`` after every finished chunk."""

MAX_POINTS = 10_000_000


def _decimals(text: str) -> int | None:
    """Digits after the decimal point of a number as typed (``"-0.1"`` → 1, ``"1e-3"`` → 3), None if unknown."""
    try:
        exponent = Decimal(text.strip()).normalize().as_tuple().exponent
    except InvalidOperation:
        return None
    return max(0, -exponent) if isinstance(exponent, int) else None


@dataclass(frozen=True)
class Axis:
    """Grid coordinates ``numpy.linspace(start, stop, num)``, parsed from ``MIN:MAX:N``.

    ``decimals``: when the bounds were typed (``-1:1:21``), the coordinates are rounded to the decimal
    places of the grid step, so ``-0.1`` is stored as ``-0.1`` and ``ds.sel(x=-0.1)`` finds it (plain
    ``linspace`` gives ``-0.09999999999999998``). ``None`` keeps the raw ``linspace`` values.
    """

    start: float
    stop: float
    num: int
    decimals: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.stop)):
            raise UserInputError(f"grid bounds must be finite numbers, got {self.start}:{self.stop}")
        if self.num < 1:
            raise UserInputError(f"a grid needs at least one point, got N={self.num}")
        if self.num > MAX_POINTS:
            raise UserInputError(f"a grid axis has at most {MAX_POINTS} points, got N={self.num}")
        if self.num > 1 and self.stop <= self.start:
            raise UserInputError(f"grid MAX must be larger than MIN, got {self.start}:{self.stop}")
        if self.num > 1 and not math.isfinite((self.stop - self.start) / (self.num - 1)):
            raise UserInputError(f"the grid {self.start}:{self.stop}:{self.num} overflows; use smaller bounds")

    @classmethod
    def parse(cls, text: str | Axis, option: str = "--x") -> Axis:
        """``"-1:1:51"`` → ``Axis(-1.0, 1.0, 51, decimals=2)``; one-line error otherwise."""
        if isinstance(text, Axis):
            return text
        parts = str(text).split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise UserInputError(f"{option} must look like MIN:MAX:N (e.g. -1:1:51), got '{text}'") from None
        if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(stop - start)):
            raise UserInputError(f"{option} bounds must be finite numbers with a finite range, got '{text}'")
        decimals = None
        a, b = _decimals(parts[0]), _decimals(parts[1])
        if a is not None and b is not None and num > 1:
            step = (Decimal(parts[1].strip()) - Decimal(parts[0].strip())) / (num - 1)
            d = _decimals(format(step, "f"))
            decimals = max(a, b, d) if d is not None and d <= 12 else None
        elif a is not None:
            decimals = a if a <= 12 else None
        return cls(start, stop, num, decimals)

    def values(self) -> np.ndarray:
        """The coordinates (float64). Rounded to the typed grid's decimals when known; values within 1e-12 of an
        integer are snapped to it (α = 0 and 1 exactly)."""
        v = np.linspace(self.start, self.stop, self.num)
        if self.decimals is not None:
            v = np.round(v, self.decimals)
        near = np.abs(v - np.round(v)) < 1e-12
        v[near] = np.round(v[near])
        return v

    @property
    def contains_zero(self) -> bool:
        """Whether 0 is a grid point (θ itself is evaluated)."""
        return bool((self.values() == 0.0).any())

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.num}"


class GridTask(Protocol):
    """What :func:`run_grid` needs from a task."""

    directions: list[ParamDict]

    @property
    def metric_names(self) -> list[str]: ...

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]: ...


@dataclass
class PointTask:
    """Evaluates the metrics at θ + Σ coords·d for a :class:`WorkUnit` (picklable for executors)."""

    evaluator: Evaluator
    theta: ParamDict
    directions: list[ParamDict]

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]:
        coords = torch.from_numpy(np.asarray(unit.coords, dtype=np.float64))
        result = self.evaluator.evaluate_coords(self.theta, self.directions, coords)
        return {k: v.numpy() for k, v in result.items()}

    @property
    def metric_names(self) -> list[str]:
        """Variables this task fills (the evaluator's metrics; subclasses such as convexity maps add more)."""
        return self.evaluator.metric_names

    def to(self, device: str | torch.device) -> PointTask:
        """Move the task to ``device`` in place (a Dask worker's own GPU); θ and d follow the evaluator."""
        self.evaluator.to(device)
        return self


def grid_units(axes: Mapping[str, np.ndarray], block: int = 8) -> list[WorkUnit]:
    """Split a grid into work units: a row of ``y`` per ``x`` in 2D, blocks of ``block`` points in 1D."""
    names = list(axes)
    if len(names) == 1:
        xs = axes[names[0]]
        return [WorkUnit({names[0]: slice(i, min(i + block, len(xs)))}, xs[i:i + block, None].copy())
                for i in range(0, len(xs), block)]
    xs, ys = axes[names[0]], axes[names[1]]
    return [WorkUnit({names[0]: slice(i, i + 1), names[1]: slice(0, len(ys))},
                     np.stack([np.full(len(ys), xs[i]), ys], axis=1))
            for i in range(len(xs))]


def run_grid(task: GridTask, axes: Mapping[str, np.ndarray], out: str | Path, attrs: dict[str, Any],
             overwrite: bool = False, executor: Executor | None = None,
             progress: Progress | None = None) -> xr.Dataset:
    """Evaluate ``task`` on every grid point not yet in the store at ``out``, writing chunks as they finish.

    Returns the whole store as a Dataset (``attrs["status"] == "complete"``, ``nonfinite_points`` counted
    over the loss variables).
    """
    n_points = int(np.prod([len(v) for v in axes.values()]))
    if n_points > MAX_POINTS:
        raise UserInputError(f"the grid has {n_points} points; at most {MAX_POINTS} are supported")
    units = grid_units(axes)
    first = units[0].region
    chunks = {name: int(first[name].stop - first[name].start) for name in axes}
    done = prepare_store(out, axes, task.metric_names, attrs, chunks, overwrite=overwrite)
    write_directions(out, task.directions, list(axes))
    todo = [u for u in units if not done[tuple(u.region[d] for d in axes)].all()]
    total = int(done.size)
    finished = int(done.sum()) - sum(int(done[tuple(u.region[d] for d in axes)].sum()) for u in todo)
    if progress:
        progress(finished, total)
    update_attrs(out, status="running")
    with RegionWriter(out, background=True) as writer:  # a unit is written while the next one is computed
        for unit, values in (executor or InProcessExecutor()).run(task, todo):
            writer.write(unit.region, values)
            finished += len(unit.coords)
            if progress:
                progress(finished, total)
    ds = open_surface(out)
    loss_vars = [v for v in ds.data_vars if str(v).endswith("_loss") and ds[v].dims == tuple(axes)]
    nonfinite = int((~np.isfinite(np.stack([ds[v].values for v in loss_vars]))).any(axis=0).sum())
    update_attrs(out, status="complete", nonfinite_points=nonfinite)
    ds.attrs.update(status="complete", nonfinite_points=nonfinite)
    return ds


__all__ = ["MAX_POINTS", "Axis", "GridTask", "PointTask", "Progress", "grid_units", "run_grid"]
