"""Safran & Shamir 2018: how often does gradient descent on a two-layer ReLU net end in a spurious minimum?"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.studies.framework import Context, Row, converged_runs, save_figure, wilson_interval
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.teacher_student import gradient_descent, initial_students, population_loss, teacher
from lossatlas.studies.verdict import MARGIN_RATE, Expected, protocol, published, rate, relative_margin, sample

_T1 = ((6, 6, 0.3, 0.0047, 0.025), (7, 7, 5.5, 0.014, 0.023), (8, 8, 12.6, 0.021, 0.021),
       (9, 9, 21.8, 0.027, 0.02), (10, 10, 34.6, 0.03, 0.022), (11, 11, 45.5, 0.034, 0.022),
       (12, 12, 58.5, 0.035, 0.021), (13, 13, 73.0, 0.037, 0.022), (14, 14, 73.6, 0.038, 0.023),
       (15, 15, 80.3, 0.038, 0.024), (16, 16, 85.1, 0.038, 0.027), (17, 17, 89.7, 0.039, 0.027),
       (18, 18, 90.0, 0.039, 0.029), (19, 19, 93.4, 0.038, 0.031), (20, 20, 94.0, 0.038, 0.033))
_T2 = ((8, 9, 0.1, 0.0059, 0.021), (10, 11, 0.1, 0.0057, 0.018), (11, 12, 0.1, 0.0056, 0.017),
       (12, 13, 0.3, 0.0054, 0.016), (13, 14, 1.5, 0.0015, 0.038), (14, 15, 5.5, 0.002, 0.033),
       (15, 16, 10.1, 0.004, 0.032), (16, 17, 18.0, 0.0055, 0.031), (17, 18, 20.9, 0.007, 0.031),
       (18, 19, 36.9, 0.0064, 0.028), (19, 20, 49.1, 0.0077, 0.027))
TABLE = {(k, n): (t, pct, eig, obj) for t, rows in ((1, _T1), (2, _T2)) for k, n, pct, eig, obj in rows}
"""(k teacher units, n student units) → (table, % spurious, mean minimal eigenvalue, mean objective)."""
SEED_LINE = {**{(row[0], row[1]): 598 + i for i, row in enumerate(_T1)},
             **{(row[0], row[1]): 617 + i for i, row in enumerate(_T2)}}
"""(k, n) → the 1-based line of the lecture notes (``../shared/seeds/004_*.txt``) that quotes the row."""


def _cell(params: SafranShamir, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """``runs`` gradient-descent runs of one (k, n), batched; Hessians at the spurious ends."""
    k, n = int(cell["k"]), int(cell["n"])
    d = k + params.extra_dims
    v = teacher(k, d)
    w0 = initial_students(params.runs, n, d, k, seed, params.init_var_scale)
    stop_below = params.spurious_threshold if params.early_stop else None
    end = gradient_descent(w0, v, params.step_scale / k, grad_tol=params.grad_tol, max_steps=params.max_steps,
                           stop_below=stop_below)
    spurious = end.objective > params.spurious_threshold
    min_eig = np.full(params.runs, np.nan)
    hessian = torch.func.hessian(lambda w: population_loss(w, v))
    for i in np.flatnonzero(spurious)[: params.max_hessians]:
        h = hessian(end.w[i]).reshape(n * d, n * d)
        min_eig[i] = float(torch.linalg.eigvalsh((h + h.T) / 2)[0])
    return {"objective": end.objective, "grad_norm": end.grad_norm, "steps": end.steps, "stop": end.stop,
            "max_increase": end.max_increase, "spurious": spurious, "min_eigenvalue": min_eig}


@study("safran-shamir",
       paper="Safran & Shamir 2018, Spurious local minima are common in two-layer ReLU neural networks (ICML)",
       claim="GD from random init on a Gaussian-input ReLU teacher-student problem ends in spurious local minima "
             "in a fraction of runs growing with k (Table 1, n = k); one extra student unit makes them rare "
             "(Table 2, n = k + 1)")
@dataclass(frozen=True)
class SafranShamir(Study):
    """Two-layer ReLU nets with Gaussian inputs: how often does GD from N(0, 1/k) end in a spurious minimum?

    Protocol (Safran & Shamir 2018, Sec. 5, as summarised in the lecture notes and issue 11): the population
    objective F(W) = ½ E_x[(Σ_{i≤n} relu(w_iᵀx) − Σ_{j≤k} relu(v_jᵀx))²], x ~ N(0, I_d), in closed form
    (:mod:`lossatlas.studies.teacher_student`); teacher = k orthonormal units v_j = e_j in d = k dimensions
    (``extra_dims`` adds more); n student units (Table 1: n = k, Table 2: n = k + 1) initialised i.i.d.
    N(0, 1/k); gradient descent with step 5/k until ‖∇F‖ ≤ 1e-9 or ``max_steps``; a run is *spurious* when
    F > 1e-3 at the end. For spurious runs, the smallest eigenvalue of the exact float64 Hessian (autograd of
    the closed form) and the objective, averaged as in the tables' last two columns. Here k is the
    number of teacher units and n the number of student units (the paper's notation), not the dimension.
    """

    table1_ks: tuple[int, ...] = (6, 8, 10)
    table2_ks: tuple[int, ...] = (8,)
    runs: int = 300
    step_scale: float = 5.0
    init_var_scale: float = 1.0
    grad_tol: float = 1e-9
    max_steps: int = 200_000
    spurious_threshold: float = 1e-3
    early_stop: bool = True
    extra_dims: int = 0
    max_hessians: int = 300
    published_runs: int = 1000

    PUBLISHED = Published(
        source="Safran & Shamir 2018, Tables 1 (n = k) and 2 (n = k + 1), 1000 runs per row; reproduced in the "
               "lecture notes (seed 004, 'Considering Data').",
        columns=("table", "k", "n", "spurious_pct", "min_eigenvalue", "objective"),
        rows=tuple((t, k, n, pct, eig, obj) for (k, n), (t, pct, eig, obj) in TABLE.items()),
        note="min_eigenvalue and objective are averages over the spurious runs.")
    NOTES = """Early stop: GD with step 5/k decreases F monotonically here (max_increase in results.zarr checks
    it per run), so a run whose objective has fallen to the spurious threshold 1e-3 can only end below it:
    it is counted as not spurious at that moment instead of iterating on to ‖∇F‖ ≤ 1e-9 (over-parameterised
    global minima, Table 2, converge sublinearly). Set early_stop=false for the literal protocol; it changes
    no classification, only the time.

    Convergence gate (stated before any run, from the stored stop codes): a run counts only if it converged,
    ‖∇F‖ ≤ grad_tol (stop 0) or early-stopped with F ≤ spurious_threshold (stop 1). Runs that hit max_steps
    (stop 2) are left out of every row and counted in its note and its ``unconverged`` field; a cell where
    fewer than half of the runs converged is "not comparable (unconverged)", never "differs".

    Sources and margins (verdict.py's uniform rules, fixed before any run): spurious_pct, min_eigenvalue and
    objective are published (Safran & Shamir 2018, Tables 1 and 2, 1000 runs per row; each row's ref names
    the line of seed 004 that quotes it). spurious_pct is a rate: margin MARGIN_RATE (5 points), and the
    difference interval includes the paper's own sampling error as a second proportion over its 1000 runs.
    min_eigenvalue and objective are means over the spurious runs: margin relative_margin (10% of the
    published value, or half a unit of its last printed digit when larger); their own standard error, which
    the paper does not print, is estimated as our SD over √(the paper's number of spurious runs). The rows
    of one column of one table form a Holm family. min_eigenvalue_positive_pct = 100 is a protocol check,
    not a published number: our spurious end points must be minima (positive definite Hessian) for
    spurious_pct to count minima, as the paper's "runs converging to local minima" do; a rate, margin
    MARGIN_RATE.

    The full preset covers every published row with 1000 runs (Hessians of at most max_hessians spurious
    runs per row, a random subset since runs are i.i.d.); the quick preset covers k = n = 6, 8, 10 and
    (k, n) = (8, 9) with 300 runs."""

    def __post_init__(self) -> None:
        bad = [k for k in self.table1_ks if k < 1] + [k for k in self.table2_ks if k < 1]
        if bad or self.runs < 1 or self.max_steps < 1 or self.step_scale <= 0 or self.extra_dims < 0:
            raise UserInputError("safran-shamir: ks, runs, max_steps must be positive, step_scale > 0 and "
                                 "extra_dims >= 0")

    @classmethod
    def full(cls) -> SafranShamir:
        return cls(table1_ks=tuple(k for k, n in TABLE if n == k),
                   table2_ks=tuple(k for k, n in TABLE if n == k + 1), runs=1000, max_hessians=200)

    def cells(self) -> list[dict[str, int]]:
        return [{"k": k, "n": k} for k in self.table1_ks] + [{"k": k, "n": k + 1} for k in self.table2_ks]

    def run(self, ctx: Context) -> xr.Dataset:
        cells = self.cells()
        results = ctx.map(functools.partial(_cell, self), cells)
        data = {name: (("cell", "run"), np.stack([r[name] for r in results])) for name in results[0]}
        return xr.Dataset(data, coords={"k": ("cell", [c["k"] for c in cells]),
                                        "n": ("cell", [c["n"] for c in cells]),
                                        "run": np.arange(self.runs)})

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        criterion = f"||grad F|| <= {self.grad_tol:g}, or F <= {self.spurious_threshold:g} (early stop)"
        for i in range(ds.sizes["cell"]):
            cell = ds.isel(cell=i)
            k, n = int(cell.k), int(cell.n)
            key = {"k": k, "n": n}
            table, pct, eig, obj = TABLE.get((k, n), (0, None, None, None))
            stop = cell.stop.values
            converged, enough = converged_runs(stop != 2)
            unconverged = int((~converged).sum())
            spurious = cell.spurious.values.astype(bool) & converged
            notes = [] if pct is not None else ["no published row for this (k, n)"]
            rising = int(((stop == 1) & (cell.max_increase.values > 1e-9)).sum())
            if rising:
                notes.append(f"{rising} early-stopped runs saw F increase by more than 1e-9 along the way: their "
                             "early stop is not covered by monotonicity")
            if unconverged:
                above = int(((stop == 2) & (cell.objective.values > self.spurious_threshold)).sum())
                notes.append(f"{unconverged} runs hit max_steps = {self.max_steps} before converging ({above} of "
                             f"them with F > {self.spurious_threshold:g} at the cap); they are left out")
            note = "; ".join(notes)
            eigs = cell.min_eigenvalue.values[spurious]
            eigs = eigs[np.isfinite(eigs)]
            objectives = cell.objective.values[spurious]
            expected = {
                "spurious_pct": published(pct, self._ref(k, n, "% of runs converging to local minima"), MARGIN_RATE,
                                          runs=self.published_runs),
                "min_eigenvalue": self._published_mean(k, n, eig, "average minimal eigenvalue", eigs),
                "objective": self._published_mean(k, n, obj, "average objective value", objectives),
                "min_eigenvalue_positive_pct": protocol(
                    100.0, "a check of our classification: our spurious end points must be local minima (positive "
                    "definite Hessian), as the paper's are ('Spurious local minima found', seed 004 Table 1); not a "
                    "number the paper prints", MARGIN_RATE)}
            if not enough:
                for quantity, exp in expected.items():
                    rows.append(Row.unconverged_row(quantity, key, exp, runs=stop.size, unconverged=unconverged,
                                                    criterion=criterion, family=self._family(quantity, table),
                                                    note=note))
                continue
            rows.append(Row.compare("spurious_pct", key, expected["spurious_pct"],
                                    rate(int(spurious.sum()), int(converged.sum())), note=note,
                                    family=self._family("spurious_pct", table), unconverged=unconverged))
            for quantity, values in (("min_eigenvalue", eigs), ("objective", objectives)):
                rows.append(self._mean_row(quantity, key, values, expected[quantity], pct,
                                           self._family(quantity, table), unconverged))
            if eigs.size:
                positive = int((eigs > 0).sum())
                note = "Safran & Shamir's spurious points are minima (positive definite Hessian)"
                if positive < eigs.size:
                    note += (f"; here {eigs.size - positive} of {eigs.size} have λmin ≤ 0 (lowest {eigs.min():.2g}): "
                             "saddles or degenerate points where gradient descent stopped")
                rows.append(Row.compare("min_eigenvalue_positive_pct", key, expected["min_eigenvalue_positive_pct"],
                                        rate(positive, eigs.size), note=note, unconverged=unconverged))
        return rows

    @staticmethod
    def _family(quantity: str, table: int) -> str:
        """The rows tested together (Holm): one column of one published table."""
        if quantity == "min_eigenvalue_positive_pct":
            return quantity
        return f"{quantity}, Table {table}" if table else f"{quantity}, no published row"

    def _ref(self, k: int, n: int, column: str) -> str:
        """The source of a published (k, n) row: paper, table, column and the seed line that quotes it."""
        if (k, n) not in TABLE:
            return f"Safran & Shamir 2018: no published row for (k, n) = ({k}, {n})"
        return (f"Safran & Shamir 2018, Table {TABLE[(k, n)][0]} ({column}, k = {k}, n = {n}, "
                f"{self.published_runs} runs); seed 004:{SEED_LINE[(k, n)]}")

    def _published_mean(self, k: int, n: int, value: float | None, column: str, values: np.ndarray) -> Expected:
        """A published average over the paper's spurious runs, with the margin :func:`relative_margin`. Its own
        standard error, which the paper does not print, is estimated as (our SD of ``values``) / √(the paper's
        number of spurious runs, its rate × ``published_runs``)."""
        pct = TABLE.get((k, n), (0, None))[1]
        se = None
        if value is not None and pct is not None and values.size >= 2:
            se = float(np.std(values, ddof=1)) / math.sqrt(max(1, round(pct / 100 * self.published_runs)))
        return published(value, self._ref(k, n, column), relative_margin(value) if value is not None else 0.0,
                         se=se or None)

    def _mean_row(self, quantity: str, key: dict[str, int], values: np.ndarray, expected: Expected,
                  published_pct: float | None, family: str, unconverged: int) -> Row:
        if values.size < 2:
            return Row.compare(quantity, key, expected, sample(values), family=family, unconverged=unconverged,
                               note=f"fewer than 2 spurious runs ({values.size}): no mean with an interval to compare")
        row = Row.compare(quantity, key, expected, sample(values), family=family, unconverged=unconverged)
        if row.verdict == "differs":
            spread = float(np.ptp(values))
            row = dataclasses.replace(row, note=(
                f"{quantity}: our {values.size} spurious runs range over {spread:.2g}"
                + (" (all ended in one minimum up to symmetry)" if spread < 1e-6 else "")
                + f"; the published average over the paper's ~{round((published_pct or 0) * self.published_runs / 100)}"
                " runs may weight other minima differently, and its two printed digits may be truncated rather"
                " than rounded"))
        return row

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for table, extra, colour in ((1, 0, "C0"), (2, 1, "C1")):
            pick = [i for i in range(ds.sizes["cell"]) if int(ds.n[i]) == int(ds.k[i]) + extra]
            ks = [k for (k, n), row in TABLE.items() if row[0] == table]
            ax.plot(ks, [TABLE[(k, k + extra)][1] for k in ks], "s--", color=colour, alpha=0.6,
                    label=f"published, Table {table}")
            if pick:
                s = ds.spurious.values[pick].astype(bool)
                rate = 100 * s.mean(axis=1)
                ci = np.array([wilson_interval(int(x.sum()), x.size) for x in s]) * 100
                ax.errorbar(ds.k.values[pick], rate, yerr=np.clip([rate - ci[:, 0], ci[:, 1] - rate], 0, None),
                            fmt="o", color=colour, capsize=3,
                            label=f"measured, n = k{' + 1' if extra else ''} (95% Wilson)")
        ax.set(xlabel="k (teacher units)", ylabel="% runs ending in a spurious minimum",
               title="Safran & Shamir 2018: spurious minima of two-layer ReLU nets")
        ax.legend(fontsize=8)
        return [save_figure(fig, folder / "spurious.png", dpi=120)]


__all__ = ["SafranShamir", "TABLE"]
