"""Report sections for ``surface`` stores (1D curves, 2D surfaces of Li et al. 2018) and ``interpolation``
stores (the straight line between two models, Goodfellow et al. 2015)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from lossatlas.curvature.maps import CONVEXITY_METRICS
from lossatlas.engine.subset import Z95
from lossatlas.viz.describe import sig, subset_note, titled, with_error
from lossatlas.viz.report.figures import (
    curves_1d,
    finite,
    grid_variables,
    map_2d,
    metric_table,
    stderr_map,
    stderr_of,
    surface_3d,
)
from lossatlas.viz.report.registry import Section, register


def _describe(ds: xr.Dataset) -> str:
    """``model on data [subset 10%, untrained weights]`` (the qualifiers a figure must carry)."""
    a = ds.attrs
    return titled(f"{a.get('model', '?')} on {a.get('data', '?')}", a)


def _grid_rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    axes = [f"{d}: {ds.sizes[d]} points on [{float(ds[d].min()):g}, {float(ds[d].max()):g}]"
            for d in ("x", "y") if d in ds.dims]
    rows = [("grid", " × ".join(axes))]
    a = ds.attrs
    source = f"reused from {a['directions_from']}" if a.get("directions_from") else a.get("directions", "?")
    rows.append(("directions", f"{source}, norm {a.get('norm', '?')}, ignore {a.get('ignore', '?')}, "
                               f"seed {a.get('seed', '?')}"))
    rows.append(("non-finite points", str(ds.attrs.get("nonfinite_points", 0))))
    if "completed" in ds:
        done = ds["completed"].values
        rows.append(("completed", f"{int(done.sum())} of {done.size} points ({ds.attrs.get('status', '?')})"))
    return rows


def _evaluation_rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    """Weights (checkpoint or untrained), BN policy, loss and subset: what decides every number below."""
    a = ds.attrs
    rows = []
    if "weights" in a:
        rows.append(("weights", str(a["weights"])))
    text = f"loss {a.get('loss', '?')}, BatchNorm statistics: {a.get('bn', '?')}"
    note = subset_note(a)
    rows.append(("evaluation", text + (f"; {note}" if note else "; every sample of each split")))
    return rows


def _minimum_rows(ds: xr.Dataset, names: list[str]) -> list[tuple[str, str]]:
    rows = []
    for name in names:
        if not name.endswith("_loss"):
            continue
        v = finite(ds[name].values)
        if not np.isfinite(v).any():
            rows.append((f"min {name}", "no finite value"))
            continue
        se = ds.get(f"{name}_stderr")
        half = Z95 * finite(se.values) if se is not None else None

        def show(index: tuple[int, ...], v: np.ndarray = v, half: np.ndarray | None = half) -> str:
            return with_error(v[index], half[index]) if half is not None else sig(v[index])

        idx = tuple(int(i) for i in np.unravel_index(int(np.nanargmin(v)), v.shape))
        where = ", ".join(f"{d} = {sig(ds[d].values[i], 3)}" for d, i in zip(ds[name].dims, idx, strict=True))
        hits = [np.flatnonzero(ds[d].values == 0.0) for d in ds[name].dims]
        centre = (f"at the centre {show(tuple(int(h[0]) for h in hits))}" if all(h.size for h in hits)
                  else "the centre is not a grid point")
        rows.append((f"min {name}", f"{show(idx)} at {where}; {centre}"))
    return rows


@register("surface", order=100)
def surface_section(store: Path, ds: xr.Dataset) -> Section:
    """2D: rotatable 3D surface + a contour/heatmap panel per variable; 1D: loss/accuracy curves."""
    what = _describe(ds)
    if "y" not in ds.dims:
        names = grid_variables(ds, ("x",))
        html = metric_table(_grid_rows(ds) + _evaluation_rows(ds) + _minimum_rows(ds, names))
        fig = curves_1d(ds, title=f"1D loss curve — {what}", xlabel="x (step along the direction)")
        return Section(title=f"1D loss curve: {store.name}", html=html, figures=(fig,))
    names = grid_variables(ds, ("x", "y"))
    if set(CONVEXITY_METRICS) <= set(ds.data_vars):  # a convexity map: its section draws these (convexity.py)
        names = [n for n in names if n not in CONVEXITY_METRICS]
    html = metric_table(_grid_rows(ds) + _evaluation_rows(ds) + _minimum_rows(ds, names))
    figures = [surface_3d(ds, title=f"{what} — drag to rotate, scroll to zoom")]
    figures += [map_2d(ds, name) for name in names]
    figures += [stderr_map(ds, name) for name in names if stderr_of(ds, name)]
    return Section(title=f"2D loss surface: {store.name}", html=html, figures=tuple(figures))


@register("interpolation", order=200)
def interpolation_section(store: Path, ds: xr.Dataset) -> Section:
    """Loss and accuracy along (1 − α) θ_A + α θ_B, train and test, with the barrier between the endpoints."""
    names = grid_variables(ds, ("x",))
    rows = _grid_rows(ds)[:1] + _grid_rows(ds)[2:] + _evaluation_rows(ds)[1:]
    alpha = ds["x"].values
    inside = (alpha >= 0) & (alpha <= 1)
    for name in names:
        if not name.endswith("_loss") or inside.sum() < 2:
            continue
        v = finite(ds[name].values)[inside]
        if np.isfinite(v).all():
            barrier = float(np.max(v) - max(v[0], v[-1]))
            shape = "monotone" if barrier <= 1e-9 else "not monotone"
            rows.append((f"{name} on [0, 1]", f"{v[0]:.5g} → {v[-1]:.5g}; barrier above the endpoints "
                                              f"{barrier:.4g} ({shape})"))
    ckpts = f"{ds.attrs.get('checkpoint', 'model A')} → {ds.attrs.get('checkpoint2', 'model B')}"
    rows.insert(0, ("endpoints (α = 0 → α = 1)", ckpts))
    fig = curves_1d(ds, title=f"interpolation — {_describe(ds)}", xlabel="α")
    return Section(title=f"Interpolation: {store.name}", html=metric_table(rows), figures=(fig,))
