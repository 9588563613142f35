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

import dataclasses
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
from lossatlas.studies.verdict import ALPHA, VERDICTS, Estimate, Expected, family_verdict, holm, judge, runs_needed

Value = float | str | None
Z95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


def _is_missing(value: Value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Row:
    """One comparison: a quantity at a key, the expected value (with its source and margin) beside the measured.

    Build rows with :meth:`compare` (the verdict rule of :mod:`lossatlas.studies.verdict`) or :meth:`unconverged`;
    :func:`settle` applies Holm's correction across each family once a study's rows are complete.

    Attributes:
        quantity: what is compared (``spurious_pct``, ``success_pct``, ``eigenvalue``, ``kind``, ...).
        key: where in the table (``{"k": 10, "n": 10}``).
        expected: the expected value (published, derived, or a protocol choice); ``None`` when there is none.
        measured: our value; ``None`` when nothing could be measured (the note says why).
        ci: our 95% interval of the measured value ``(lo, hi)``, or ``None``.
        source: where the expected value comes from (:data:`~lossatlas.studies.verdict.SOURCES`).
        ref: the paper, table and ``seed NNN:LINE``; or the function; or the protocol choice.
        margin: the stated equivalence margin (in the quantity's units).
        verdict: ``agrees``, ``differs``, ``inconclusive`` or ``not comparable``.
        note: why a row differs or cannot be compared, or how to read it.
        family: the rows tested together (Holm); defaults to the quantity.
        diff_ci90: the 90% interval of ``measured − expected`` (the equivalence test), when there is one.
        p: the unadjusted p-value of ``measured = expected``; ``p_holm`` after Holm's correction in the family.
        family_verdict: the verdict of the whole family (:func:`~lossatlas.studies.verdict.family_verdict`).
        runs_needed: the fewest runs with which a result at the expected value would agree (rates, means).
        runs, unconverged: runs counted, and runs left out because they did not converge.
    """

    quantity: str
    key: Mapping[str, Any]
    expected: Value
    measured: Value
    ci: tuple[float, float] | None
    source: str
    ref: str
    margin: float
    verdict: str
    note: str = ""
    family: str = ""
    diff_ci90: tuple[float, float] | None = None
    p: float | None = None
    p_holm: float | None = None
    family_verdict: str = ""
    runs_needed: int | None = None
    runs: int | None = None
    unconverged: int = 0

    @classmethod
    def compare(cls, quantity: str, key: Mapping[str, Any], expected: Expected, measured: Estimate, *,
                note: str = "", family: str | None = None, unconverged: int = 0) -> Row:
        """A row judged by :func:`lossatlas.studies.verdict.judge` (before the family correction)."""
        j = judge(expected, measured)
        ci = measured.interval(0.95)
        value = measured.value
        if isinstance(value, np.generic):
            value = value.item()
        runs = measured.n if measured.kind in ("rate", "sample", "direction") else None
        return cls(quantity, dict(key), expected.value, None if _is_missing(value) else value, ci, expected.source,
                   expected.ref, float(expected.margin), j.verdict, note, family or quantity, j.ci90, j.p, j.p,
                   j.verdict, runs_needed(expected, measured), runs, int(unconverged))

    @classmethod
    def unconverged_row(cls, quantity: str, key: Mapping[str, Any], expected: Expected, *, runs: int,
                        unconverged: int, criterion: str, family: str | None = None, note: str = "") -> Row:
        """``not comparable (unconverged)``: too few of ``runs`` met the convergence ``criterion``."""
        text = (f"not comparable (unconverged): {unconverged} of {runs} runs did not converge ({criterion})"
                + (f"; {note}" if note else ""))
        return cls(quantity, dict(key), expected.value, None, None, expected.source, expected.ref,
                   float(expected.margin), "not comparable", text, family or quantity, runs=runs - unconverged,
                   unconverged=unconverged, family_verdict="not comparable")

    def as_json(self) -> dict[str, Any]:
        """The ``results.json`` form of the row."""
        return {"quantity": self.quantity, "key": dict(self.key), "expected": self.expected,
                "measured": self.measured, "ci": list(self.ci) if self.ci else None, "source": self.source,
                "ref": self.ref, "margin": self.margin, "verdict": self.verdict, "note": self.note,
                "family": self.family, "diff_ci90": list(self.diff_ci90) if self.diff_ci90 else None,
                "p": self.p, "p_holm": self.p_holm, "family_verdict": self.family_verdict,
                "runs_needed": self.runs_needed, "runs": self.runs, "unconverged": self.unconverged}

    @classmethod
    def from_json(cls, r: Mapping[str, Any]) -> Row:
        """The inverse of :meth:`as_json`."""
        pair = lambda v: tuple(v) if v else None  # noqa: E731
        return cls(r["quantity"], r["key"], r["expected"], r["measured"], pair(r.get("ci")), r["source"], r["ref"],
                   r["margin"], r["verdict"], r.get("note", ""), r.get("family", r["quantity"]),
                   pair(r.get("diff_ci90")), r.get("p"), r.get("p_holm"), r.get("family_verdict", ""),
                   r.get("runs_needed"), r.get("runs"), r.get("unconverged", 0))


def settle(rows: Sequence[Row]) -> list[Row]:
    """Holm's correction across each family (rows with the same ``family``): a row that differs before the
    correction stays *differs* only if its Holm-adjusted p-value is below 5%, else it is *inconclusive*; every
    row gets its family's verdict. Exact and text rows (p = 0 or 1) take part unchanged."""
    families: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        families.setdefault(r.family or r.quantity, []).append(i)
    out = list(rows)
    for members in families.values():
        tested = [i for i in members if rows[i].p is not None]
        adjusted = holm([float(rows[i].p) for i in tested])  # type: ignore[arg-type]
        for i, p_adj in zip(tested, adjusted, strict=True):
            verdict = rows[i].verdict
            if verdict == "differs" and p_adj >= ALPHA:
                verdict = "inconclusive"
            out[i] = dataclasses.replace(out[i], p_holm=p_adj, verdict=verdict)
        fam = family_verdict([out[i].verdict for i in members])
        for i in members:
            out[i] = dataclasses.replace(out[i], family_verdict=fam)
    return out


def converged_runs(converged: np.ndarray, *, min_fraction: float = 0.5) -> tuple[np.ndarray, bool]:
    """The convergence gate: ``(mask of runs that count, enough?)``. A cell is comparable when at least
    ``min_fraction`` of its runs (and at least 2) met the stated criterion; the others are counted and reported,
    never counted as failures."""
    mask = np.asarray(converged, dtype=bool)
    return mask, bool(mask.sum() >= max(2, math.ceil(min_fraction * mask.size)))


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


__all__ = ["Context", "Row", "StudyResult", "VERDICTS", "cell_id", "cell_seed", "converged_runs", "mean_interval",
           "resolve_device", "save_figure", "settle", "wilson_interval"]
