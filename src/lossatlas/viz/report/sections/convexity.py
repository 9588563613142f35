"""Report section for convexity maps (``surface --hessian``; Li et al. 2018, Sec. 6, Fig. 7).

For a surface store that holds ``lambda_max``, ``lambda_min`` and ``convexity_ratio``: heatmaps of the three
(a point whose Lanczos run was not certified is left out of them and marked with a red ×, since its numbers are
the last Ritz values, not eigenvalues), then the run's bookkeeping as discrete data: ``hessian_converged`` with
a two-colour bar (no / yes) and ``hessian_matvecs`` with one colour per product count (or per integer bin),
never as a continuous scale. The table counts the unconverged points. The surface section leaves these
variables to this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.curvature.maps import CONVEXITY_METRICS
from lossatlas.viz.report.figures import TEMPLATE, finite, metric_table
from lossatlas.viz.report.registry import Section, register

_EIGEN = (("lambda_max", "λmax", "Viridis"), ("lambda_min", "λmin", "RdBu_r"), ("convexity_ratio", "|λmin / λmax|",
                                                                                   "Magma"))
_CIVIDIS = ["#00224e", "#35456c", "#666970", "#948e77", "#c8b866", "#fee838"]


def _yx(ds: xr.Dataset, name: str) -> np.ndarray:
    return finite(ds[name].transpose("y", "x").values)


def discrete_scale(values: np.ndarray) -> tuple[list[list], float, float, list[int]]:
    """A plotly colour scale with one flat colour per integer value present (up to 12, else integer bins).

    Returns ``(colorscale, zmin, zmax, tickvals)``: boundaries half-way between integers, ticks on the values."""
    from lossatlas.viz.convexity import integer_bins

    ticks, bounds = integer_bins(values)
    lo, hi = float(bounds[0]), float(bounds[-1])
    scale: list[list] = []
    for i in range(len(bounds) - 1):
        color = _CIVIDIS[min(len(_CIVIDIS) - 1, round(i * (len(_CIVIDIS) - 1) / max(len(bounds) - 2, 1)))]
        scale += [[(bounds[i] - lo) / (hi - lo), color], [(bounds[i + 1] - lo) / (hi - lo), color]]
    return scale, lo, hi, [int(t) for t in ticks]


def _marks(ds: xr.Dataset, bad: np.ndarray) -> go.Scatter:
    yy, xx = np.nonzero(bad)
    return go.Scatter(x=ds["x"].values[xx], y=ds["y"].values[yy], mode="markers", name="not certified",
                      marker={"symbol": "x", "size": 9, "color": "#d62728"},
                      hovertemplate="x %{x:.4g}, y %{y:.4g}: λmin/λmax not certified<extra></extra>")


def _layout(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=420, title={"text": title}, xaxis_title="x", yaxis_title="y",
                      margin={"l": 50, "r": 10, "t": 50, "b": 45}, legend={"orientation": "h", "y": -0.15})
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def _maps_2d(ds: xr.Dataset, bad: np.ndarray) -> list[go.Figure]:
    x, y = ds["x"].values, ds["y"].values
    figures = []
    for name, title, scale in _EIGEN:
        z = np.where(bad, np.nan, _yx(ds, name))
        extra = {"zmid": 0.0} if name == "lambda_min" else {}
        fig = go.Figure(go.Heatmap(x=x, y=y, z=z, colorscale=scale, colorbar={"title": {"text": title}},
                                   hovertemplate=f"x %{{x:.4g}}, y %{{y:.4g}}: {title} %{{z:.6g}}<extra></extra>",
                                   **extra))
        if bad.any():
            fig.add_trace(_marks(ds, bad))
        figures.append(_layout(fig, f"{title} (red ×: not certified)"))
    if "hessian_converged" in ds:
        flag = _yx(ds, "hessian_converged")
        fig = go.Figure(go.Heatmap(x=x, y=y, z=flag, zmin=-0.5, zmax=1.5,
                                   colorscale=[[0, "#d62728"], [0.5, "#d62728"], [0.5, "#2ca02c"], [1, "#2ca02c"]],
                                   colorbar={"title": {"text": "certified"}, "tickvals": [0, 1],
                                             "ticktext": ["no", "yes"]},
                                   hovertemplate="x %{x:.4g}, y %{y:.4g}: certified %{z}<extra></extra>"))
        figures.append(_layout(fig, "λmin, λmax certified (hessian_converged)"))
    if "hessian_matvecs" in ds:
        counts = _yx(ds, "hessian_matvecs")
        steps, lo, hi, ticks = discrete_scale(counts)
        fig = go.Figure(go.Heatmap(x=x, y=y, z=counts, zmin=lo, zmax=hi, colorscale=steps,
                                   colorbar={"title": {"text": "products"}, "tickvals": ticks},
                                   hovertemplate="x %{x:.4g}, y %{y:.4g}: %{z:d} products<extra></extra>"))
        if bad.any():
            fig.add_trace(_marks(ds, bad))
        figures.append(_layout(fig, "Hessian-vector products per point (hessian_matvecs)"))
    return figures


def _curves_1d(ds: xr.Dataset, bad: np.ndarray) -> list[go.Figure]:
    x = ds["x"].values
    fig = go.Figure()
    for name, title, _ in _EIGEN[:2]:
        v = finite(ds[name].values)
        fig.add_trace(go.Scatter(x=x, y=np.where(bad, np.nan, v), mode="lines+markers", name=title))
        if bad.any():
            fig.add_trace(go.Scatter(x=x[bad], y=v[bad], mode="markers", name=f"{title} not certified",
                                     marker={"symbol": "x", "size": 9, "color": "#d62728"}))
    fig.update_layout(template=TEMPLATE, height=380, title={"text": "extreme Hessian eigenvalues"},
                      xaxis_title="x", margin={"l": 50, "r": 10, "t": 50, "b": 45})
    figures = [fig]
    if "hessian_matvecs" in ds:
        counts = finite(ds["hessian_matvecs"].values)
        colors = np.where(bad, "#d62728", "#2ca02c").tolist()
        bars = go.Figure(go.Bar(x=x, y=counts, marker={"color": colors},
                                hovertemplate="x %{x:.4g}: %{y:d} products<extra></extra>"))
        bars.update_layout(template=TEMPLATE, height=320, title={"text": "products per point (red: not certified)"},
                           xaxis_title="x", yaxis={"tickformat": "d"}, margin={"l": 50, "r": 10, "t": 50, "b": 45})
        figures.append(bars)
    return figures


@register("surface", order=150)
def convexity_section(store: Path, ds: xr.Dataset) -> Section | None:
    """Heatmaps of λmax, λmin, |λmin/λmax| with unconverged points marked, the flag and the product counts."""
    if not set(CONVEXITY_METRICS) <= set(ds.data_vars):
        return None
    two_d = "y" in ds.dims
    order = ("y", "x") if two_d else ("x",)
    bad = ds["hessian_converged"].transpose(*order).values == 0
    rows = [("unconverged points", f"{int(bad.sum())} of {bad.size} (λmin/λmax not certified within the product "
                                   "budget; left out of the eigenvalue maps and marked ×)"),
            ("Lanczos at each point", str(ds.attrs.get("hessian", "?")))]
    figures = _maps_2d(ds, bad) if two_d else _curves_1d(ds, bad)
    return Section(title=f"Convexity map: {store.name}", html=metric_table(rows),
                   figures=tuple(figures))
