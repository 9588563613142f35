"""Interactive plotly figures of stored results, shared by the report sections.

Conventions (what a store may hold; everything is optional except ``x``):

* metrics on the grid: float variables on ``(x,)`` or ``(x, y)`` — losses (``*_loss``), accuracies
  (``*_accuracy``) and any other map (``lambda_max``, ``lambda_min``, ``convexity_ratio``, ...);
* ``<metric>_stderr``: the standard error of ``<metric>`` (subset evaluation); shown as a band in 1D,
  as ``± stderr`` in the hover text and as its own panel in 2D;
* ``path_x``, ``path_y`` on one other dimension (e.g. ``step``): a path drawn over the contour plots
  (e.g. an optimiser trajectory projected onto the plane, Li et al. 2018 Sec. 7);
* ``anchor_x``, ``anchor_y`` (names in ``attrs["anchor_names"]``): named points marked on the contour plots
  (e.g. the three models a plane passes through, Garipov et al. 2018).

Non-finite values (diverged points) are masked (NaN → gaps/holes), never plotted as numbers. Every
string that ends up in a title, label or hover text passes through
:func:`~lossatlas.viz.report.registry.plotly_text`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.engine.subset import Z95
from lossatlas.store import COMPLETED
from lossatlas.viz.describe import log_ticks, titled
from lossatlas.viz.report.registry import esc, plotly_text

TEMPLATE = "plotly_white"
STDERR = "_stderr"
_SPLIT_DASH = {"train": "solid", "test": "dash"}
TITLE_CHARS = 90
"""Figure titles (which carry user strings such as the model spec) are shortened to this many characters."""
LOG_RATIO = 50.0
"""Loss contours start in log10 when max/min of the positive finite values exceeds this (buttons switch)."""
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def label(name: str) -> str:
    """``train_loss`` → ``train loss`` (escaped for plotly)."""
    return plotly_text(str(name).replace("_", " "))


def finite(values: np.ndarray) -> np.ndarray:
    """float64 copy with ±inf replaced by NaN (plotly draws NaN as gaps/holes)."""
    v = np.asarray(values, dtype=np.float64).copy()
    v[~np.isfinite(v)] = np.nan
    return v


def grid_variables(ds: xr.Dataset, dims: Sequence[str]) -> list[str]:
    """Float variables whose dims are exactly ``dims`` (any order), ``completed`` and ``_stderr`` excluded."""
    out = []
    for name, var in ds.data_vars.items():
        if name == COMPLETED or str(name).endswith(STDERR) or var.dtype.kind != "f":
            continue
        if sorted(map(str, var.dims)) == sorted(dims):
            out.append(str(name))
    def key(v: str) -> tuple[int, int, str]:
        kind = 0 if v.endswith("_loss") else 1 if v.endswith("_accuracy") else 2
        split = v.split("_", 1)[0]
        return kind, {"train": 0, "test": 1}.get(split, 2), v

    return sorted(out, key=key)


def stderr_of(ds: xr.Dataset, name: str) -> str | None:
    """The name of ``name``'s standard-error variable, if the store has one."""
    key = f"{name}{STDERR}"
    return key if key in ds.data_vars else None


def _is_metric(name: str) -> bool:
    return name.endswith("_loss") or name.endswith("_accuracy")


def _yx(ds: xr.Dataset, name: str) -> np.ndarray:
    """A 2D variable as a (len(y), len(x)) array: rows follow y, columns follow x (plotly's z layout)."""
    return finite(ds[name].transpose("y", "x").values)


def _hover(ds: xr.Dataset, names: Sequence[str], two_d: bool) -> tuple[np.ndarray, str]:
    """customdata (…, k) and a hovertemplate that shows x, y and every metric (± stderr where stored)."""
    columns: list[np.ndarray] = []
    parts = ["x = %{x:.4g}"] + (["y = %{y:.4g}"] if two_d else [])
    for name in names:
        arr = _yx(ds, name) if two_d else finite(ds[name].values)
        i = len(columns)
        columns.append(arr)
        text = f"{label(name)} = %{{customdata[{i}]:.5g}}"
        se = stderr_of(ds, name)
        if se is not None:
            columns.append(_yx(ds, se) if two_d else finite(ds[se].values))
            text += f" ± %{{customdata[{i + 1}]:.2g}}"
        parts.append(text)
    return np.stack(columns, axis=-1), "<br>".join(parts) + "<extra></extra>"


def _diverging(z: np.ndarray) -> dict:
    f = z[np.isfinite(z)]
    if f.size and f.min() < 0 < f.max():
        return {"colorscale": "RdBu_r", "zmid": 0.0}
    return {"colorscale": "Viridis"}


def surface_3d(ds: xr.Dataset, title: str = "") -> go.Figure:
    """Rotatable 3D surface of a 2D store; a menu switches between metrics (and log10 of losses).

    Hover shows x, y and every metric of the point.
    """
    names = grid_variables(ds, ("x", "y"))
    custom, template = _hover(ds, names, two_d=True)
    choices: list[tuple[str, np.ndarray]] = []
    for name in names:
        z = _yx(ds, name)
        choices.append((label(name), z))
        if name.endswith("_loss"):
            with np.errstate(divide="ignore", invalid="ignore"):
                choices.append((f"log10 {label(name)}", finite(np.log10(z))))
    x, y = ds["x"].values, ds["y"].values
    first_label, first_z = choices[0]
    fig = go.Figure(go.Surface(x=x, y=y, z=first_z, customdata=custom, hovertemplate=template,
                               colorscale="Viridis", colorbar={"title": {"text": first_label}},
                               contours={"z": {"show": True, "usecolormap": True, "project": {"z": True},
                                               "highlightcolor": "#ffffff"}}))
    buttons = [{"label": lab, "method": "update",
                "args": [{"z": [z], "colorbar.title.text": lab}, {"scene.zaxis.title.text": lab}]}
               for lab, z in choices]
    fig.update_layout(template=TEMPLATE, height=620, title={"text": plotly_text(title, TITLE_CHARS)},
                      margin={"l": 0, "r": 0, "t": 50, "b": 0},
                      scene={"xaxis_title": "x", "yaxis_title": "y", "zaxis_title": first_label,
                             "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 1.0}}},
                      updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.08, "xanchor": "right",
                                    "showactive": True, "direction": "down"}] if len(buttons) > 1 else [])
    return fig


def _path_traces(ds: xr.Dataset) -> list[go.Scatter]:
    """The stored path (``path_x``, ``path_y``; labelled by its ``step`` coordinate, e.g. the epoch) and anchor
    points (``anchor_x``, ``anchor_y`` named by ``attrs["anchor_names"]``, e.g. the models A, B, C of a plane)."""
    traces = []
    if "path_x" in ds.data_vars and "path_y" in ds.data_vars:
        px, py = finite(ds["path_x"].values.ravel()), finite(ds["path_y"].values.ravel())
        dim = ds["path_x"].dims[0] if ds["path_x"].dims else ""
        text = [plotly_text(f"{dim} {v}") for v in ds[dim].values] if dim in ds.coords else None
        traces.append(go.Scatter(x=px, y=py, mode="lines+markers", name="path", text=text,
                                 line={"color": "#d62728", "width": 2}, marker={"size": 5},
                                 hovertemplate="path" + ("<br>%{text}" if text else "")
                                               + "<br>x = %{x:.4g}<br>y = %{y:.4g}<extra></extra>"))
    if "anchor_x" in ds.data_vars and "anchor_y" in ds.data_vars:
        ax, ay = finite(ds["anchor_x"].values.ravel()), finite(ds["anchor_y"].values.ravel())
        names = [plotly_text(n) for n in ds.attrs.get("anchor_names", [])]
        names = names if len(names) == len(ax) else [str(i) for i in range(len(ax))]
        traces.append(go.Scatter(x=ax, y=ay, mode="markers+text", name="models", text=names,
                                 textposition="top center", textfont={"color": "white", "size": 13},
                                 marker={"size": 10, "color": "white", "line": {"color": "black", "width": 1.5}},
                                 hovertemplate="%{text}<br>x = %{x:.4g}<br>y = %{y:.4g}<extra></extra>"))
    return traces


def map_2d(ds: xr.Dataset, name: str, title: str = "") -> go.Figure:
    """Filled contour of a loss/accuracy (with contour labels, a star at the centre θ and any stored path),
    or a heatmap of any other 2D map (diverging colours around 0 where it changes sign).

    Loss contours get linear/log10 buttons and start in log10 when the loss spans more than
    :data:`LOG_RATIO` (as around a sharp minimum); the hover always shows the values themselves."""
    names = grid_variables(ds, ("x", "y"))
    custom, template = _hover(ds, names, two_d=True)
    z = _yx(ds, name)
    x, y = ds["x"].values, ds["y"].values
    menus: list[dict] = []
    if _is_metric(name):
        # (button, z, colour-bar title, tick positions, tick labels, contour labels)
        choices: list[tuple[str, np.ndarray, str, list | None, list | None, bool]] = [
            ("linear", z, label(name), None, None, True)]
        if name.endswith("_loss"):
            with np.errstate(divide="ignore", invalid="ignore"):
                zlog = finite(np.log10(z))
            ok = zlog[np.isfinite(zlog)]
            ticks = log_ticks(float(ok.min()), float(ok.max())) if ok.size else ([], [])
            # log scale: contours in log10, colour bar labelled in loss units (no log10 values to decode)
            choices.append(("log", zlog, f"{label(name)} (log scale)", ticks[0], ticks[1], False))
            # wide range (pooled over every loss of the store, so that its panels agree): levels near the minimum
            pooled = np.concatenate([_yx(ds, n).ravel() for n in names if n.endswith("_loss")])
            pos = pooled[np.isfinite(pooled) & (pooled > 0)]
            if pos.size and pos.max() / pos.min() > LOG_RATIO:
                choices.reverse()
            menus = [{"buttons": [{"label": lab, "method": "restyle",
                                   "args": [{"z": [zz], "colorbar.title.text": t, "colorbar.tickvals": [tv],
                                             "colorbar.ticktext": [tt], "contours.showlabels": show}, [0]]}
                                  for lab, zz, t, tv, tt, show in choices],
                      "type": "buttons", "direction": "right", "x": 1.0, "y": 1.13, "xanchor": "right",
                      "showactive": True, "font": {"size": 10}}]
        _, shown, title_text, tickvals, ticktext, labels = choices[0]
        trace: go.Contour | go.Heatmap = go.Contour(
            x=x, y=y, z=shown, customdata=custom, hovertemplate=template, colorscale="Viridis", ncontours=30,
            contours={"showlabels": labels, "labelfont": {"size": 9, "color": "white"}},
            colorbar={"title": {"text": title_text}, "tickvals": tickvals, "ticktext": ticktext},
            line={"width": 0.5})
    else:
        trace = go.Heatmap(x=x, y=y, z=z, customdata=custom, hovertemplate=template,
                           colorbar={"title": {"text": label(name)}}, **_diverging(z))
    fig = go.Figure(trace)
    for extra in _path_traces(ds):
        fig.add_trace(extra)
    if x.min() <= 0 <= x.max() and y.min() <= 0 <= y.max():
        fig.add_trace(go.Scatter(x=[0.0], y=[0.0], mode="markers", name="θ (centre)", showlegend=False,
                                 marker={"symbol": "star", "size": 12, "color": "white",
                                         "line": {"color": "black", "width": 1}},
                                 hovertemplate="θ (centre)<extra></extra>"))
    heading = plotly_text(title, TITLE_CHARS) or plotly_text(titled(str(name).replace("_", " "), ds.attrs))
    fig.update_layout(template=TEMPLATE, height=460, title={"text": heading},
                      xaxis_title="x", yaxis_title="y", margin={"l": 50, "r": 10, "t": 50, "b": 45},
                      legend={"orientation": "h", "y": -0.15}, updatemenus=menus)
    fig.update_xaxes(nticks=7)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def stderr_map(ds: xr.Dataset, name: str) -> go.Figure:
    """Heatmap of ``<name>_stderr`` (subset evaluation uncertainty) on the 2D grid."""
    se = f"{name}{STDERR}"
    hover = "x = %{x:.4g}<br>y = %{y:.4g}<br>stderr = %{z:.3g}<extra></extra>"
    fig = go.Figure(go.Heatmap(x=ds["x"].values, y=ds["y"].values, z=_yx(ds, se), colorscale="Magma",
                               colorbar={"title": {"text": label(se)}}, hovertemplate=hover))
    fig.update_layout(template=TEMPLATE, height=460, title={"text": f"standard error of {label(name)}"},
                      xaxis_title="x", yaxis_title="y", margin={"l": 50, "r": 10, "t": 50, "b": 45})
    fig.update_yaxes(scaleanchor="x", scaleratio=1, constrain="domain")
    return fig


def _band(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, axis: str, name: str) -> list[go.Scatter]:
    """The 95% interval as a filled band with its own legend entry (toggled together with its curve)."""
    common = {"x": x, "mode": "lines", "line": {"width": 0, "color": color}, "yaxis": axis,
              "hoverinfo": "skip", "legendgroup": name}
    return [go.Scatter(y=hi, showlegend=False, **common),
            go.Scatter(y=lo, fill="tonexty", fillcolor=_rgba(color, 0.18), name=f"{label(name)} 95% interval",
                       showlegend=True, **common)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def curves_1d(ds: xr.Dataset, title: str = "", xlabel: str = "x", integer_x: bool = False) -> go.Figure:
    """Loss (left axis) and accuracy in % (right axis) along ``x``: train solid, test dashed
    (Li et al. 2018 Fig. 2); 95% interval bands (± 1.96 stderr) where stored, in the legend, clipped to what
    the metric can be (accuracy in [0, 100] %, a non-negative loss at 0, and on a log axis at the bottom of the
    plotted range); other 1D variables on the left axis.

    The loss axis starts in log scale when the positive losses span more than :data:`LOG_RATIO` (a training
    log from 1 to 1e-4); buttons switch. ``integer_x``: integer ticks (epochs)."""
    names = grid_variables(ds, ("x",))
    custom, template = _hover(ds, names, two_d=False)
    x = ds["x"].values
    fig = go.Figure()
    has_acc = any(n.endswith("_accuracy") for n in names)
    losses = [finite(ds[n].values) for n in names if not n.endswith("_accuracy")]
    pooled = np.concatenate(losses) if losses else np.zeros(0)
    positive = pooled[np.isfinite(pooled) & (pooled > 0)]
    log_y = bool(positive.size) and bool((pooled[np.isfinite(pooled)] > 0).all()) and \
        positive.max() / positive.min() > LOG_RATIO
    log_floor = float(positive.min()) / 2 if positive.size else 0.0
    lower_bands: list[tuple[int, np.ndarray, np.ndarray]] = []  # (trace index, linear lower, log lower)
    for k, name in enumerate(names):
        split = name.split("_", 1)[0]
        acc = name.endswith("_accuracy")
        scale = 100.0 if acc else 1.0
        color = ("#d62728" if acc else "#1f77b4") if _is_metric(name) else _PALETTE[(k + 2) % len(_PALETTE)]
        axis = "y2" if acc else "y"
        v = finite(ds[name].values) * scale
        se = stderr_of(ds, name)
        if se is not None:
            half = Z95 * finite(ds[se].values) * scale
            lo, hi = v - half, v + half
            if acc:
                lo, hi = np.clip(lo, 0.0, 100.0), np.clip(hi, 0.0, 100.0)
            elif name.endswith("_loss") and (v[np.isfinite(v)] >= 0).all():
                lo = np.maximum(lo, 0.0)
            lo_log = np.maximum(lo, log_floor) if not acc else lo
            for band in _band(x, lo_log if (log_y and not acc) else lo, hi, color, axis, name):
                fig.add_trace(band)
            if not acc:
                lower_bands.append((len(fig.data) - 1, lo, lo_log))
        fig.add_trace(go.Scatter(x=x, y=v, mode="lines", name=label(name) + (" (%)" if acc else ""),
                                 yaxis=axis, legendgroup=name, customdata=custom, hovertemplate=template,
                                 line={"color": color, "dash": _SPLIT_DASH.get(split, "dot"), "width": 2}))
    layout: dict = {"template": TEMPLATE, "height": 460, "title": {"text": plotly_text(title, TITLE_CHARS)},
                    "xaxis": {"title": {"text": plotly_text(xlabel)}},
                    "yaxis": {"title": {"text": "loss"}, "type": "log" if log_y else "linear",
                              "exponentformat": "power"},
                    "hovermode": "closest", "margin": {"l": 60, "r": 60, "t": 50, "b": 45},
                    "legend": {"orientation": "h", "y": -0.18}}
    if integer_x:
        layout["xaxis"].update(tick0=0, dtick=max(1, int(np.ceil((len(x) - 1) / 10))))
    if has_acc:
        layout["yaxis2"] = {"title": {"text": "accuracy (%)"}, "overlaying": "y", "side": "right",
                            "range": [0, 100], "showgrid": False,
                            "tickmode": "linear", "tick0": 0, "dtick": 10}
    if positive.size:
        buttons = []
        for text, kind, col in (("linear", "linear", 1), ("log", "log", 2)):
            data = {"y": [band[col] for band in lower_bands]} if lower_bands else {}
            buttons.append({"label": f"{text} loss", "method": "update",
                            "args": [data, {"yaxis.type": kind}, [i for i, _, _ in lower_bands]]})
        if log_y:
            buttons.reverse()
        layout["updatemenus"] = [{"buttons": buttons, "type": "buttons", "direction": "right", "x": 1.0,
                                  "y": 1.12, "xanchor": "right", "showactive": True, "font": {"size": 10}}]
    fig.update_layout(**layout)
    return fig


def metric_table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column HTML table; both columns are escaped."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="summary">{body}</table>'
