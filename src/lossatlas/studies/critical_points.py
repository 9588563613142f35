"""The Hessian at critical points: the lecture notes' two-variable examples, classified by the library."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from lossatlas.curvature import FunctionHessian, Tolerances, critical_point
from lossatlas.errors import UserInputError
from lossatlas.studies.framework import Context, Row, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import Expected, derived, exact, published, sanity


def _xy(theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return theta["x"], theta["y"]


def bowl(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return x**2 + 3 * y**2


def saddle(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return -(x**2) + 3 * y**2


def quartic_min(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return x**2 + y**4


def quartic_saddle(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return x**2 - y**4


def quartic_max(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return -(x**4) - y**4


def monkey_saddle(t: dict[str, Tensor]) -> Tensor:
    x, y = _xy(t)
    return x**3 - 3 * x * y**2


@dataclass(frozen=True)
class Example:
    """One example of the notes: f, its Hessian at (0, 0), the notes' verdict and the true nature."""

    name: str
    fn: Callable[[dict[str, Tensor]], Tensor]
    hessian: tuple[float, float, float]  # H_xx, H_xy, H_yy at (0, 0)
    kind: str  # what the Hessian says (the notes' label)
    nature: str  # what the function does near (0, 0) (higher orders decide)


EXAMPLES = {e.name: e for e in (
    Example("x^2+3y^2", bowl, (2, 0, 6), "minimum", "minimum"),
    Example("-x^2+3y^2", saddle, (-2, 0, 6), "saddle", "saddle"),
    Example("x^2+y^4", quartic_min, (2, 0, 0), "degenerate", "minimum"),
    Example("x^2-y^4", quartic_saddle, (2, 0, 0), "degenerate", "saddle"),
    Example("-x^4-y^4", quartic_max, (0, 0, 0), "degenerate", "maximum"),
    Example("x^3-3xy^2", monkey_saddle, (0, 0, 0), "degenerate", "saddle"),
)}
NATURES = ("minimum", "maximum", "saddle", "flat")


def circle_probe(fn: Callable[[dict[str, Tensor]], Tensor], radius: float, points: int = 720) -> str:
    """What f does around (0, 0): the sign of f(r cos φ, r sin φ) − f(0, 0) on ``points`` angles (multiples of
    π/2 included): all positive → minimum, all negative → maximum, both → saddle, all zero → flat."""
    phi = torch.arange(points, dtype=torch.float64) * (2 * math.pi / points)
    zero = fn({"x": torch.zeros((), dtype=torch.float64), "y": torch.zeros((), dtype=torch.float64)})
    diff = fn({"x": radius * torch.cos(phi), "y": radius * torch.sin(phi)}) - zero
    pos, neg = bool((diff > 0).any()), bool((diff < 0).any())
    return "saddle" if pos and neg else "minimum" if pos else "maximum" if neg else "flat"


def sphere_probe(fn: Callable[[Tensor], Tensor], point: Tensor, radius: float, points: int = 4096,
                 seed: int = 0) -> str:
    """What ``fn`` (of a flat vector) does around ``point``: the sign of f(p + r u) − f(p) over ``points``
    seeded random unit directions u and their negatives; the verdicts of :func:`circle_probe`."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(points, point.numel(), generator=g, dtype=torch.float64)
    u = torch.cat([u, -u]) / u.norm(dim=1, keepdim=True).repeat(2, 1)
    diff = torch.func.vmap(fn)(point + radius * u) - fn(point)
    pos, neg = bool((diff > 0).any()), bool((diff < 0).any())
    return "saddle" if pos and neg else "minimum" if pos else "maximum" if neg else "flat"


NOTES_REF = "Hung-yi Lee 2018, lecture notes 'Optimization'"
"""The lecture notes of seed 004 (``../shared/seeds/004_*.txt``), where the examples are worked out."""
SEED_LINES = {"x^2+3y^2": (300, 303), "-x^2+3y^2": (324, 326), "x^2+y^4": (336, 330), "x^2-y^4": (358, 342),
              "-x^4-y^4": (373, 362)}
"""f → (seed 004 line of its Hessian at (0, 0), line of the notes' label: 'Local minima', 'Saddle',
'Degenerate'). The monkey saddle's Hessian is not printed (only its second derivatives 6x, −6y, −6x)."""
NATURE_BY_INSPECTION = {"x^2+y^4": "f − f(0) = x² + y⁴ > 0 off the origin",
                        "x^2-y^4": "f − f(0) = x² − y⁴ takes both signs (x = 0 or y = 0)",
                        "-x^4-y^4": "f − f(0) = −x⁴ − y⁴ < 0 off the origin",
                        "x^3-3xy^2": "f − f(0) = r³cos 3φ takes both signs"}


def notes_hessian(name: str, entry: int, margin: float) -> Expected:
    """The expected Hessian entry ``entry`` (0: H_xx, 1: H_xy, 2: H_yy) of example ``name`` at (0, 0): the notes'
    printed matrix where they print one (published), else the notes' second derivatives at 0 (derived)."""
    value = float(EXAMPLES[name].hessian[entry])
    if name in SEED_LINES:
        return published(value, f"{NOTES_REF}, its Hessian at (0, 0); seed 004:{SEED_LINES[name][0]}", margin)
    return derived(value, "lossatlas.studies.critical_points.EXAMPLES: the notes' second derivatives 6x, −6y, −6x "
                   "(seed 004, 'Monkey Saddle') at (0, 0)", margin)


def notes_index(name: str) -> float:
    """The fraction of negative eigenvalues of the notes' Hessian of example ``name`` at (0, 0)."""
    hxx, hxy, hyy = EXAMPLES[name].hessian
    return float((np.linalg.eigvalsh(np.array([[hxx, hxy], [hxy, hyy]], dtype=np.float64)) < 0).mean())


def notes_kind(name: str) -> Expected:
    """What the Hessian says at (0, 0): the notes' label (published) where they give one."""
    kind = EXAMPLES[name].kind
    if name in SEED_LINES:
        return published(kind, f"{NOTES_REF}, the label of its Hessian; seed 004:{SEED_LINES[name][1]}", 0.0)
    return derived(kind, "lossatlas.studies.critical_points.EXAMPLES: the notes' second derivatives vanish at (0, 0), "
                   "so the Hessian is 0: degenerate")


def notes_nature(name: str) -> Expected:
    """What f does near (0, 0), by inspection of f (the notes show it in plots only; the monkey saddle is
    named a saddle in the notes)."""
    return derived(EXAMPLES[name].nature, f"lossatlas.studies.critical_points.EXAMPLES: {NATURE_BY_INSPECTION[name]}")


def _cell(params: CriticalPoints, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    example = EXAMPLES[cell["f"]]
    theta = {"x": torch.zeros((), dtype=torch.float64), "y": torch.zeros((), dtype=torch.float64)}
    op = FunctionHessian(example.fn, theta)
    verdict = critical_point(op, tolerances=Tolerances(grad_tol=params.grad_tol))
    h = op.dense()
    grad = torch.stack([g.reshape(()) for g in op.gradient().values()])
    return {"gradient": grad.numpy(), "hessian": h.numpy(), "eigenvalues": torch.linalg.eigvalsh(h).numpy(),
            "index": np.array(verdict.index), "kind": np.array(verdict.kind.value),
            "nature": np.array(circle_probe(example.fn, params.probe_radius))}


@study("critical-points", paper="Lecture notes (Hung-yi Lee, 'Optimization', seed 004): the Hessian at critical "
       "points; examples after J. Kazdan's max-min notes",
       claim="at a critical point the Hessian decides minimum / maximum / saddle unless it has a zero eigenvalue; "
             "degenerate points need higher orders (x^2+y^4 and x^2-y^4 share a Hessian)")
@dataclass(frozen=True)
class CriticalPoints(Study):
    """The notes' examples at (0, 0): gradient, Hessian, eigenvalues, index and the library's verdict.

    Each f is a closed form handed to :class:`lossatlas.curvature.FunctionHessian`; the verdict and the index
    come from :func:`lossatlas.curvature.critical_point` (dense Hessian, exact eigenvalues). The degenerate
    examples are flagged as such — the Hessian cannot decide — and a probe of f on a small circle around
    the point tells what they really are (``nature``): x²+y⁴ a minimum, x²−y⁴ a saddle, −x⁴−y⁴ a maximum,
    the monkey saddle x³−3xy² a saddle.
    """

    functions: tuple[str, ...] = tuple(EXAMPLES)
    grad_tol: float = 1e-10
    probe_radius: float = 1e-2
    tolerance: float = 1e-12

    PUBLISHED = Published(
        source="Lecture notes seed 004, 'Hessian' and 'Degenerate' slides (Hessians written out at x = y = 0).",
        columns=("f", "H_xx", "H_xy", "H_yy", "kind", "nature"),
        rows=tuple((e.name, *e.hessian, e.kind, e.nature) for e in EXAMPLES.values()),
        note="kind is the notes' reading of the Hessian (positive definite: minimum, indefinite: saddle, a zero "
             "eigenvalue: degenerate); nature is what the notes' plots show.")
    NOTES = """Sources: the Hessian entries and the kind of the first five examples are published (Hung-yi Lee
    2018, the lecture notes 'Optimization' of seed 004, which print each Hessian at (0, 0) and its label; every
    row's ref gives the line). The monkey saddle's Hessian is derived from the notes' second derivatives (6x,
    −6y, −6x) at 0, and the index (fraction of negative eigenvalues of the notes' Hessian, notes_index) is
    derived; the nature of the degenerate points is derived by inspection of f (the notes show it in plots
    only). grad_norm = 0 is a sanity check: (0, 0) is a critical point of every example by construction.

    Margins (verdict.py's rule for exact quantities, fixed before any run): the Hessian entries and the
    gradient are autograd values of polynomials, compared within ``tolerance`` (1e-12, float64 rounding);
    the index, kind and nature are exact (a count and labels: margin 0)."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.functions if f not in EXAMPLES]
        if unknown or not self.functions:
            raise UserInputError(f"critical-points: unknown function(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(EXAMPLES)}")
        if self.probe_radius <= 0:
            raise UserInputError("critical-points: probe_radius must be > 0")

    def run(self, ctx: Context) -> xr.Dataset:
        cells = [{"f": f} for f in self.functions]
        out = ctx.map(functools.partial(_cell, self), cells)
        return xr.Dataset(
            {"gradient": (("f", "i"), np.stack([o["gradient"] for o in out])),
             "hessian": (("f", "i", "j"), np.stack([o["hessian"] for o in out])),
             "eigenvalues": (("f", "i"), np.stack([o["eigenvalues"] for o in out])),
             "index": ("f", np.array([float(o["index"]) for o in out])),
             "kind": ("f", np.array([str(o["kind"]) for o in out], dtype=object)),
             "nature": ("f", np.array([str(o["nature"]) for o in out], dtype=object))},
            coords={"f": np.array(list(self.functions), dtype=object), "i": ["x", "y"], "j": ["x", "y"]})

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows = []
        for name in ds.f.values:
            e, cell, key = EXAMPLES[str(name)], ds.sel(f=name), {"f": str(name)}
            h = cell.hessian.values
            rows.append(Row.compare("grad_norm", key, sanity(0.0, "(0, 0) is a critical point of every example: "
                                                             "autograd's gradient of the polynomial there is 0",
                                                             self.tolerance),
                                    exact(float(np.linalg.norm(cell.gradient.values)))))
            for j, (label, value) in enumerate((("H_xx", h[0, 0]), ("H_xy", h[0, 1]), ("H_yy", h[1, 1]))):
                rows.append(Row.compare(label, key, notes_hessian(str(name), j, self.tolerance), exact(float(value)),
                                        family="hessian_entry"))
            rows.append(Row.compare("index", key, derived(notes_index(str(name)), "lossatlas.studies.critical_points."
                                                          "notes_index: the fraction of negative eigenvalues of the "
                                                          "notes' Hessian"),
                                    exact(float(cell.index))))
            note = "the Hessian cannot decide: a zero eigenvalue" if e.kind == "degenerate" else ""
            rows.append(Row.compare("kind", key, notes_kind(str(name)), exact(str(cell.kind.values)), note=note))
            if e.kind == "degenerate":
                rows.append(Row.compare("nature", key, notes_nature(str(name)), exact(str(cell.nature.values)),
                                        note=f"sign of f on a circle of radius {self.probe_radius:g} around (0, 0)"))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [str(n) for n in ds.f.values]
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
        grid = torch.linspace(-1, 1, 121, dtype=torch.float64)
        x, y = torch.meshgrid(grid, grid, indexing="xy")
        for ax, name in zip(axes.flat, names, strict=False):
            z = EXAMPLES[name].fn({"x": x, "y": y}).numpy()
            ax.contourf(x.numpy(), y.numpy(), z, levels=25, cmap="RdBu_r")
            ax.plot(0, 0, "k*")
            cell = ds.sel(f=name)
            ax.set_title(f"{name}\n{cell.kind.values} → {cell.nature.values}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        return [save_figure(fig, folder / "critical_points.png", dpi=110)]


__all__ = ["CriticalPoints", "EXAMPLES", "circle_probe", "sphere_probe"]
