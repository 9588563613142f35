"""Report sections for paths between models and for sublevel-set topology (:mod:`lossatlas.paths`):

* ``curve``: loss along a trained Bézier curve / polygonal chain beside the straight line (Garipov et al. 2018);
* ``string``: dynamic string sampling, the beads' path beside the straight line (Freeman & Bruna 2017);
* ``alignment``: the straight line before and after weight matching (Ainsworth et al. 2023);
* ``topology``: N_λ, the persistence diagram and the minima / saddles of a stored landscape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.store import open_surface
from lossatlas.viz.report.figures import TEMPLATE, TITLE_CHARS, finite, metric_table
from lossatlas.viz.report.registry import Section, plotly_text, register

_COLORS = {"curve": "#2ca02c", "line": "#1f77b4", "before": "#1f77b4", "after": "#d62728", "string": "#2ca02c"}


def _describe(ds: xr.Dataset) -> str:
    return f"{ds.attrs.get('model', '?')} on {ds.attrs.get('data', '?')}"


TITLE_LINE = 56
"""Characters per title line: a half-width figure (about 580 px) holds this many at plotly's title font."""


def _title(text: str) -> str:
    """``text`` shortened to :data:`TITLE_CHARS`, escaped, and broken into lines of at most :data:`TITLE_LINE`
    characters (a long model or data spec, e.g. a transformer's keys, would run out of the figure's box)."""
    import textwrap

    lines = textwrap.wrap(str(text)[:TITLE_CHARS], TITLE_LINE, break_long_words=True) or [""]
    if len(str(text)) > TITLE_CHARS:
        lines[-1] = lines[-1][:-1] + "…"
    return "<br>".join(plotly_text(line) for line in lines)


def _layout(fig: go.Figure, title: str, xlabel: str, ylabel: str = "loss") -> go.Figure:
    text = _title(title)
    top = 50 + 18 * text.count("<br>")
    fig.update_layout(template=TEMPLATE, height=440, title={"text": text},
                      xaxis={"title": {"text": plotly_text(xlabel)}}, yaxis={"title": {"text": ylabel}},
                      hovermode="x unified", margin={"l": 60, "r": 30, "t": top, "b": 45},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def paths_figure(ds: xr.Dataset, paths: Sequence[tuple[str, str, str]], title: str, xlabel: str) -> go.Figure:
    """Train (solid) and test (dashed) loss of several paths; ``paths`` = (variable prefix, legend name, dim)."""
    fig = go.Figure()
    for prefix, name, dim in paths:
        for split, dash in (("train", "solid"), ("test", "dash")):
            var = f"{prefix}{split}_loss"
            if var in ds:
                fig.add_trace(go.Scatter(x=ds[dim].values, y=finite(ds[var].values), mode="lines",
                                         name=plotly_text(f"{name}, {split}"),
                                         line={"color": _COLORS.get(prefix.rstrip("_") or "string", "#555"),
                                               "dash": dash, "width": 2}))
    return _layout(fig, title, xlabel)


def _barrier_rows(ds: xr.Dataset, prefixes: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    rows = []
    for prefix, name in prefixes:
        for split in ("train", "test"):
            key = f"{prefix}_{split}_loss"
            if f"{key}_barrier" in ds.attrs:
                rows.append((f"{name}: {split} loss", f"max {ds.attrs[f'{key}_max']:.5g}; barrier over the "
                                                      f"endpoints' line {ds.attrs[f'{key}_barrier']:.4g}, over "
                                                      f"their mean {ds.attrs[f'{key}_barrier_mean']:.4g}"))
    return rows


@register("curve", order=400)
def curve_section(store: Path, ds: xr.Dataset) -> Section:
    """Loss along the trained curve and along the straight line, barriers, lengths, training loss."""
    a = ds.attrs
    rows = [("curve", f"{a.get('curve_kind', '?')}, {a.get('bends', '?')} bend(s), {a.get('epochs', '?')} epochs, "
                      f"lr {a.get('lr', '?')}, batch {a.get('train_batch_size', '?')}, seed {a.get('seed', '?')}"),
            ("evaluated", f"{ds.sizes['t']} values of t; BatchNorm statistics re-estimated at each"
                          if a.get("has_batchnorm") else f"{ds.sizes['t']} values of t"),
            ("length in parameter space", f"curve {a.get('curve_length', float('nan')):.5g}, straight line "
                                          f"{a.get('line_length', float('nan')):.5g}")]
    rows += _barrier_rows(ds, (("curve", "curve"), ("line", "straight line")))
    figures = [paths_figure(ds, (("curve_", "curve", "t"), ("line_", "straight line", "t")),
                            f"mode connectivity — {_describe(ds)}", "t")]
    history = a.get("training_loss_history") or []
    if len(history):
        fig = go.Figure(go.Scatter(x=np.arange(1, len(history) + 1), y=np.asarray(history, dtype=float),
                                   mode="lines+markers", name="mean minibatch loss"))
        figures.append(_layout(fig, "curve training: E_t L(φ(t)) per epoch", "epoch"))
    return Section(title=f"Mode-connecting curve: {store.parent.name}/{store.name}", html=metric_table(rows),
                   figures=tuple(figures))


@register("string", order=410)
def string_section(store: Path, ds: xr.Dataset) -> Section:
    """The beads' path on the normalised-length axis beside the straight line, the threshold, the costs."""
    a = ds.attrs
    verdict = "connected" if a.get("success") else "not connected"
    rows = [("result", f"{verdict}: {a.get('reason', '')}"),
            ("threshold λ (train loss)", f"{a.get('threshold', float('nan')):.5g}"),
            ("beads", str(a.get("n_beads", "?"))),
            ("max train loss on the dense path", f"{a.get('max_train_loss', float('nan')):.5g} (straight line: "
                                                 f"{a.get('line_max_train_loss', float('nan')):.5g})"),
            ("normalised geodesic length", f"{a.get('normalized_geodesic_length', float('nan')):.5g}"),
            ("cost", f"{a.get('sgd_steps', '?')} SGD steps, {a.get('evaluated_points', '?')} evaluated points")]
    fig = paths_figure(ds, (("", "string of beads", "s"), ("line_", "straight line", "t")),
                       f"dynamic string sampling — {_describe(ds)}", "path length / ‖θ_B − θ_A‖")
    fig.add_hline(y=float(a.get("threshold", np.nan)), line={"color": "black", "dash": "dot"},
                  annotation_text="threshold")
    beads = np.asarray(a.get("bead_s", []), dtype=float)
    if beads.size > 2 and "train_loss" in ds:
        at = np.interp(beads, ds["s"].values, finite(ds["train_loss"].values))
        fig.add_trace(go.Scatter(x=beads, y=at, mode="markers", name="beads", marker={"size": 9, "color": "black"}))
    return Section(title=f"String sampling: {store.parent.name}/{store.name}", html=metric_table(rows),
                   figures=(fig,))


@register("alignment", order=420)
def alignment_section(store: Path, ds: xr.Dataset) -> Section:
    """The straight line A → B before and after weight matching, and the permutation groups."""
    a = ds.attrs
    groups = json.loads(a.get("groups", "{}") or "{}")
    moved = json.loads(a.get("units_moved", "{}") or "{}")
    rows = [("aligned checkpoint", str(a.get("aligned_checkpoint", "?"))),
            ("permutation groups", f"{len(groups)}: " + ", ".join(f"{g} ({moved.get(g, '?')} of {n} units moved)"
                                                                   for g, n in list(groups.items())[:12])
             + (" …" if len(groups) > 12 else ""))]
    rows += _barrier_rows(ds, (("before", "before alignment"), ("after", "after alignment")))
    fig = paths_figure(ds, (("before_", "A → B", "t"), ("after_", "A → π(B)", "t")),
                       f"weight matching — {_describe(ds)}", "t")
    return Section(title=f"Weight alignment: {store.name}", html=metric_table(rows), figures=(fig,))


@register("topology", order=430)
def topology_section(store: Path, ds: xr.Dataset) -> Section:
    """N_λ against λ, the persistence diagram, and (2D) the landscape with its minima and saddles."""
    a = ds.attrs
    rows = [("source", f"{a.get('source', '?')} ({a.get('metric', '?')}, {a.get('source_kind', '?')})"),
            ("critical points", f"{a.get('n_minima', '?')} minima, {a.get('n_saddles', '?')} saddles, "
                                f"{a.get('n_maxima', '?')} maxima (connectivity: {a.get('connectivity', '?')})"),
            ("most components", f"{int(ds['components'].max()) if ds.sizes.get('level') else 0}")]
    zero = ds["dimension"].values == 0 if "dimension" in ds else np.zeros(0, bool)
    finite_pairs = zero & np.isfinite(ds["death"].values) if zero.size else zero
    order: list[int] = list(np.argsort(-(ds["persistence"].values[finite_pairs]))) if finite_pairs.any() else []
    for i in order[:5]:
        b, d = ds["birth"].values[finite_pairs][i], ds["death"].values[finite_pairs][i]
        rows.append(("minimum → merge", f"{b:.5g} → {d:.5g} (persistence {d - b:.4g})"))
    n_fig = go.Figure(go.Scatter(x=ds["level"].values, y=ds["components"].values, mode="lines",
                                 line={"shape": "hv"}, name="N_λ"))
    figures = [_layout(n_fig, "connected components of {L ≤ λ}", "λ", "N_λ")]
    death = ds["death"].values
    top = float(np.nanmax(np.where(np.isfinite(death), death, np.nan))) if np.isfinite(death).any() \
        else float(ds["level"].max())
    diagram = go.Figure()
    for dim in (0, 1):
        sel = ds["dimension"].values == dim
        if sel.any():
            diagram.add_trace(go.Scatter(x=ds["birth"].values[sel], y=np.where(np.isfinite(death[sel]), death[sel],
                                                                                top), mode="markers", name=f"H{dim}"))
    lo = float(ds["birth"].min()) if ds.sizes.get("pair") else 0.0
    diagram.add_trace(go.Scatter(x=[lo, top], y=[lo, top], mode="lines", line={"dash": "dash", "color": "gray"},
                                 name="birth = death"))
    figures.append(_layout(diagram, "persistence diagram (∞ drawn at the top)", "birth", "death"))
    source = Path(str(a.get("source", "")))
    axes = list(a.get("axes", []))
    if len(axes) == 2 and source.exists():
        field = open_surface(source)[str(a.get("metric"))]
        contour = go.Figure(go.Contour(x=field[axes[0]].values, y=field[axes[1]].values,
                                       z=finite(field.transpose(axes[1], axes[0]).values), ncontours=30,
                                       colorbar={"title": {"text": plotly_text(a.get("metric", ""))}}))
        contour.add_trace(go.Scatter(x=ds[f"birth_{axes[0]}"].values[zero], y=ds[f"birth_{axes[1]}"].values[zero],
                                     mode="markers", name="minima", marker={"color": "white", "size": 9,
                                                                            "line": {"color": "black", "width": 1}}))
        contour.add_trace(go.Scatter(x=np.concatenate([ds[f"death_{axes[0]}"].values[zero],
                                                       ds[f"birth_{axes[0]}"].values[~zero]]),
                                     y=np.concatenate([ds[f"death_{axes[1]}"].values[zero],
                                                       ds[f"birth_{axes[1]}"].values[~zero]]),
                                     mode="markers", name="saddles", marker={"color": "red", "symbol": "x"}))
        figures.append(_layout(contour, "minima and saddles", axes[0], axes[1]))
    return Section(title=f"Sublevel-set topology: {store.name}", html=metric_table(rows), figures=tuple(figures))
