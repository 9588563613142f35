"""Running a study: rows and verdicts, intervals, the resumable per-cell context (used by ``runner.run_study``).

A study's :meth:`~lossatlas.studies.registry.Study.run` hands its cells (the unit of resume: one ``k`` of
Safran & Shamir, one ``(data, activation, optimizer, h)`` of the XOR table) to :meth:`Context.map`. Every
finished cell is saved at once as ``DIR/NAME/cells/<cell>.npz``; a killed run started again with the same
parameters and seed reloads those and computes only the rest, and a run with other parameters in the
same folder is refused unless ``overwrite``. Cells run on the executor of ``--workers``
(:func:`lossatlas.execute.make_executor`), each with its own seed derived from the study seed and the
cell's key, so the numbers do not depend on the order, the executor or on resuming.

Output in ``DIR/NAME/``: ``results.zarr`` (per-run raw data, root attr ``kind = "study"``),
``results.json`` (``{"study", "seed", "preset", "params", "elapsed_s", "cells", "rows"}``), ``table.md``,
the study's PNG figures, and ``study.json`` (the configuration the cells belong to).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.execute import WorkUnit, check_device, make_executor

Value = float | str | None
VERDICTS = ("agrees", "differs", "not comparable")
Z95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


# -- rows ---------------------------------------------------------------------------------------------
def _is_missing(value: Value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


ROUNDING = 8 * 2.220446049250313e-16
"""Relative slack added to every numeric tolerance: a few float64 ulps."""


def decide(published: Value, measured: Value, ci: tuple[float, float] | None, tolerance: float) -> str:
    """The verdict of one comparison.

    ``"not comparable"`` when either value is missing; for text values ``"agrees"`` iff equal; for numbers
    ``"agrees"`` iff the published value lies in ``[lo − tolerance, hi + tolerance]`` of the measured
    interval, or (no interval) iff ``|measured − published| ≤ tolerance``; ``"differs"`` otherwise. The tolerance
    always includes float64 rounding (:data:`ROUNDING` relative), so an exact quantity computed to the last bit
    is never called a difference.
    """
    if _is_missing(published) or _is_missing(measured):
        return "not comparable"
    if isinstance(published, str) or isinstance(measured, str):
        return "agrees" if str(published) == str(measured) else "differs"
    assert isinstance(published, float | int) and isinstance(measured, float | int)
    tolerance += ROUNDING * max(1.0, abs(float(published)))  # 1 − 1.1e-16 is not a difference
    if ci is not None:
        lo, hi = ci
        return "agrees" if lo - tolerance <= published <= hi + tolerance else "differs"
    return "agrees" if abs(measured - published) <= tolerance else "differs"


@dataclass(frozen=True)
class Row:
    """One comparison: a quantity at a key, published beside measured.

    Attributes:
        quantity: what is compared (``spurious_pct``, ``success_pct``, ``eigenvalue``, ``kind``, ...).
        key: where in the published table (``{"k": 10, "n": 10}``).
        published: the published (or closed-form) value; ``None`` when the paper gives none.
        measured: our value; ``None`` (or NaN) when nothing could be measured (the note says why).
        ci: our 95% interval ``(lo, hi)`` or ``None``.
        tolerance: the stated slack added to the interval (or allowed difference without one).
        verdict: ``"agrees"``, ``"differs"`` or ``"not comparable"`` (see :func:`decide`).
        note: why a row differs or cannot be compared, or how to read it.
    """

    quantity: str
    key: Mapping[str, Any]
    published: Value
    measured: Value
    ci: tuple[float, float] | None
    tolerance: float
    verdict: str
    note: str = ""

    @classmethod
    def compare(cls, quantity: str, key: Mapping[str, Any], published: Value, measured: Value, *,
                ci: tuple[float, float] | None = None, tolerance: float = 0.0, note: str = "") -> Row:
        """A row whose verdict is computed by :func:`decide`."""
        measured = None if _is_missing(measured) else measured
        if isinstance(measured, np.generic):
            measured = measured.item()
        ci = None if ci is None or any(_is_missing(c) for c in ci) else (float(ci[0]), float(ci[1]))
        return cls(quantity, dict(key), published, measured, ci, float(tolerance),
                   decide(published, measured, ci, tolerance), note)

    def as_json(self) -> dict[str, Any]:
        """The ``results.json`` form of the row."""
        return {"quantity": self.quantity, "key": dict(self.key), "published": self.published,
                "measured": self.measured, "ci": list(self.ci) if self.ci else None,
                "tolerance": self.tolerance, "verdict": self.verdict, "note": self.note}


# -- intervals ----------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial rate, as fractions in [0, 1].

    centre = (p̂ + z²/2n) / (1 + z²/n),  half = z √(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n).
    ``n = 0`` gives ``(0, 1)``.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no rounding past 0 or 1
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def rate_tolerance(published_pct: float, runs: int) -> float:
    """Sampling slack of a published rate: the larger half-width of its own Wilson 95% interval at the
    paper's number of ``runs``, in percentage points (the published number is an estimate too)."""
    lo, hi = wilson_interval(round(published_pct / 100 * runs), runs)
    p = published_pct / 100
    return 100 * max(p - lo, hi - p)


def mean_interval(values: Sequence[float] | np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """``(mean, Student-t 95% interval)`` of a sample; the interval is ``None`` below two values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, None
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    from scipy.stats import t

    half = float(t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, (mean - half, mean + half)


# -- the context ----------------------------------------------------------------------------------------
CellFn = Callable[[dict[str, Any], int], dict[str, np.ndarray]]
"""``fn(cell_key, seed) -> {name: array}``: one cell's raw data (picklable for ``--workers``)."""


def cell_id(key: Mapping[str, Any]) -> str:
    """A file-name-safe identity of a cell key: ``k=10,n=10`` → ``k-10_n-10``."""
    text = "_".join(f"{k}-{v}" for k, v in key.items())
    return "".join(c if c.isalnum() or c in "-_." else "~" for c in text)


def cell_seed(seed: int, key: Mapping[str, Any]) -> int:
    """The seed of one cell: a stable function of the study seed and the cell key (not of order)."""
    digest = zlib.crc32(json.dumps(dict(key), sort_keys=True, default=str).encode())
    return int(np.random.SeedSequence([int(seed), digest]).generate_state(1)[0])


@dataclass(frozen=True)
class _CellTask:
    """The executor task: unit i → ``fn(cells[i], seeds[i])`` (picklable when ``fn`` is)."""

    fn: CellFn
    cells: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...]

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]:
        i = int(unit.region["cell"].start)
        return self.fn(dict(self.cells[i]), self.seeds[i])


@dataclass
class Context:
    """What a study's ``run`` gets: seed, output folder, progress, executor, and the cell cache.

    Attributes:
        seed: the study seed (stored in the results).
        folder: ``DIR/NAME``; finished cells live in ``folder / "cells"``.
        executor: from :func:`lossatlas.execute.make_executor` (in-process by default).
        progress: ``progress(done, total)`` over the cells seen so far, or ``None``.
        computed, reused: cells computed in this call / loaded from an earlier, interrupted one.
    """

    seed: int
    folder: Path
    executor: Any = None
    progress: Callable[[int, int], None] | None = None
    computed: int = 0
    reused: int = 0
    _total: int = field(default=0, repr=False)
    _done: int = field(default=0, repr=False)

    def cell_path(self, key: Mapping[str, Any]) -> Path:
        return self.folder / "cells" / f"{cell_id(key)}.npz"

    def map(self, fn: CellFn, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Results of ``fn(cell, seed)`` for every cell, in order; finished cells come from disk.

        Each cell is saved the moment it finishes (an atomic rename), so an interrupt loses at most the
        cells in flight. Cell keys must be distinct.
        """
        keys = [dict(c) for c in cells]
        ids = [cell_id(c) for c in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("cell keys must be distinct")
        (self.folder / "cells").mkdir(parents=True, exist_ok=True)
        results: list[dict[str, np.ndarray] | None] = [None] * len(keys)
        for i, c in enumerate(keys):
            path = self.cell_path(c)
            if path.is_file():
                with np.load(path, allow_pickle=False) as npz:
                    results[i] = {k: npz[k] for k in npz.files}
                self.reused += 1
        self._total += len(keys)
        self._done += sum(r is not None for r in results)
        self._report()
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            task = _CellTask(fn, tuple(keys), tuple(cell_seed(self.seed, c) for c in keys))
            units = [WorkUnit(region={"cell": slice(i, i + 1)}, coords=np.array([[float(i)]])) for i in todo]
            executor = self.executor if self.executor is not None else make_executor(None)
            for unit, out in executor.run(task, units):
                i = int(unit.region["cell"].start)
                arrays = {k: np.asarray(v) for k, v in out.items()}
                _save_npz(self.cell_path(keys[i]), arrays)
                results[i] = arrays
                self.computed += 1
                self._done += 1
                self._report()
        return [r for r in results if r is not None]

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self._done, self._total)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- running a study -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` produced."""

    name: str
    seed: int
    preset: str
    params: dict[str, Any]
    rows: list[Row]
    elapsed_s: float
    folder: Path
    computed: int
    reused: int
    figures: list[Path]
    dataset: xr.Dataset


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out a study's matplotlib figure, write it to ``path`` (PNG) and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def resolve_device(device: str) -> str:
    """A study's ``device`` parameter: ``auto`` → ``cuda`` when a GPU is present, else ``cpu``; ``cpu``, ``cuda``,
    ``cuda:N`` checked (one line naming ``--set device=cpu`` when CUDA is asked for and absent)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device, "--set device=")


__all__ = ["Context", "Row", "StudyResult", "VERDICTS", "cell_id", "cell_seed", "decide", "mean_interval",
           "rate_tolerance", "resolve_device", "save_figure", "wilson_interval"]
