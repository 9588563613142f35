"""Report section for a training run: ``metrics.csv`` (per-epoch loss and accuracy from the evaluation engine,
‖θ‖₂ and per-tensor norms, written by :func:`lossatlas.training.train`), the run's ``run.json`` configuration,
``weight_histograms.npz`` (Li et al. 2018, Fig. 2) and ``sharpness.csv`` (λmax beside 2/lr, the edge-of-stability
view); an optimiser switch (Im et al. 2016) is marked on every per-epoch plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.viz.describe import sig
from lossatlas.viz.report.figures import TEMPLATE, curves_1d, finite, metric_table
from lossatlas.viz.report.registry import Section, plotly_text, register_artifact

_NORM = "norm:"
_MAX_HISTOGRAMS = 9


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else np.nan
    except ValueError:
        return np.nan


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_metrics(path: Path) -> xr.Dataset:
    """``metrics.csv`` as a Dataset on ``x`` = epoch (unparseable cells become NaN)."""
    rows = _read_csv(path)
    if not rows:
        return xr.Dataset(coords={"x": np.zeros(0)})
    columns = [c for c in rows[0] if c != "epoch"]
    epochs = np.array([_num(r.get("epoch")) for r in rows])
    return xr.Dataset({c: ("x", np.array([_num(r.get(c)) for r in rows])) for c in columns},
                      coords={"x": epochs})


def _mark_switch(fig: go.Figure, train_cfg: dict[str, Any], scale: float = 1.0) -> None:
    switch = train_cfg.get("switch_at")
    if switch:
        text = f"switch to {train_cfg.get('optimizer2')} (lr {train_cfg.get('lr2') or train_cfg.get('lr')})"
        fig.add_vline(x=float(switch) * scale, line={"color": "#7b8794", "dash": "dot", "width": 1},
                      annotation_text=plotly_text(text), annotation_position="top left")


def _norms_figure(ds: xr.Dataset, train_cfg: dict[str, Any]) -> go.Figure | None:
    if "param_norm" not in ds:
        return None
    x = ds["x"].values
    fig = go.Figure(go.Scatter(x=x, y=finite(ds["param_norm"].values), mode="lines+markers", name="‖θ‖₂ (all)",
                               line={"color": "#1f2933", "width": 3},
                               hovertemplate="epoch %{x}<br>‖θ‖₂ = %{y:.5g}<extra></extra>"))
    for name in (str(n) for n in ds.data_vars if str(n).startswith(_NORM)):
        label = plotly_text(name[len(_NORM):])
        fig.add_trace(go.Scatter(x=x, y=finite(ds[name].values), mode="lines", name=label, line={"width": 1},
                                 hovertemplate=f"{label}<br>epoch %{{x}}<br>norm %{{y:.5g}}<extra></extra>"))
    _mark_switch(fig, train_cfg)
    fig.update_layout(template=TEMPLATE, height=420, title={"text": "weight norms per epoch (Li et al. 2018, Fig. 2)"},
                      xaxis_title="epoch", yaxis_title="‖θ‖₂", yaxis_type="log",
                      margin={"l": 60, "r": 10, "t": 50, "b": 45}, legend={"font": {"size": 9}})
    return fig


def _histogram_figure(path: Path) -> tuple[go.Figure | None, list[tuple[str, str]]]:
    if not path.is_file():
        return None, []
    try:
        with np.load(path) as f:
            epochs, edges, counts = f["epochs"], f["edges"], f["counts"]
            below, above = f["below"], f["above"]
    except (OSError, KeyError, ValueError):
        return None, [("weight histograms", "unreadable")]
    if len(epochs) == 0:
        return None, []
    pick = np.unique(np.linspace(0, len(epochs) - 1, min(len(epochs), _MAX_HISTOGRAMS)).round().astype(int))
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for j, i in enumerate(pick):
        shade = int(40 + 180 * j / max(len(pick) - 1, 1))
        fig.add_trace(go.Scatter(x=centres, y=counts[i], mode="lines", name=f"epoch {int(epochs[i])}",
                                 line={"color": f"rgb({255 - shade},{80},{shade})", "width": 1.5},
                                 hovertemplate=f"epoch {int(epochs[i])}<br>w = %{{x:.3g}}<br>count %{{y}}"
                                               "<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=420, title={"text": "weight histograms (tensors with ≥ 2 dims)"},
                      xaxis_title="weight value", yaxis_title="count", yaxis_type="log",
                      margin={"l": 60, "r": 10, "t": 50, "b": 45}, legend={"font": {"size": 9}})
    outside = int(below[-1] + above[-1])
    rows = [("weight histograms", f"{len(epochs)} checkpoints, {len(centres)} bins on [{edges[0]:.3g}, "
                                  f"{edges[-1]:.3g}]; last: {outside} weights outside the bins")]
    return fig, rows


def _sharpness_figure(path: Path) -> tuple[go.Figure | None, list[tuple[str, str]]]:
    if not path.is_file():
        return None, []
    rows = _read_csv(path)
    if not rows:
        return None, []
    step = np.array([_num(r.get("step")) for r in rows])
    lam = finite(np.array([_num(r.get("lambda_max")) for r in rows]))
    limit = np.array([_num(r.get("two_over_lr")) for r in rows])
    ok = np.array([r.get("converged") == "1" for r in rows])
    fig = go.Figure([
        go.Scatter(x=step, y=lam, mode="lines+markers", name="λmax (train loss)", line={"color": "#1f77b4"},
                   marker={"symbol": np.where(ok, "circle", "circle-open").tolist(), "size": 7},
                   hovertemplate="step %{x}<br>λmax = %{y:.5g}<extra></extra>"),
        go.Scatter(x=step, y=limit, mode="lines", name="2 / lr", line={"color": "#d62728", "dash": "dash",
                                                                         "shape": "hv"},
                   hovertemplate="step %{x}<br>2/lr = %{y:.4g}<extra></extra>")])
    fig.update_layout(template=TEMPLATE, height=420, title={"text": "sharpness beside 2/lr (edge of stability)"},
                      xaxis_title="optimiser step", yaxis_title="eigenvalue", yaxis_type="log",
                      margin={"l": 60, "r": 10, "t": 50, "b": 45}, legend={"orientation": "h", "y": -0.18})
    summary = [("sharpness λmax", f"{len(rows)} measurements, last {lam[-1]:.5g} at step {int(step[-1])} "
                                  f"(2/lr = {limit[-1]:.4g}); uncertified: {int((~ok).sum())}")]
    return fig, summary


@register_artifact("metrics.csv", order=500)
def training_section(path: Path) -> Section | None:
    """Loss and accuracy per epoch (train solid, test dashed), weight norms, histograms and sharpness, with the
    run's configuration."""
    ds = read_metrics(path)
    if ds.sizes.get("x", 0) == 0:
        return None
    config: dict = {}
    run_file = path.parent / "run.json"
    if run_file.is_file():
        try:
            config = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            config = {}
    train_cfg = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    rows = [("epochs logged", str(ds.sizes["x"]))]
    if train_cfg:
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in train_cfg.items() if v is not None)))
    metrics = [str(n) for n in ds.data_vars if str(n).endswith(("_loss", "_accuracy"))]
    others = [str(n) for n in ds.data_vars if str(n) not in metrics and not str(n).startswith(_NORM)]
    for name in metrics + others:
        rows.append((f"final {name}", sig(ds[name].values[-1])))
    what = f"{config.get('model', '?')} on {config.get('data', '?')}" if config else ""
    fig = curves_1d(ds[metrics] if metrics else ds, title=f"training — {what}" if what else "training",
                    xlabel="epoch", integer_x=True)
    _mark_switch(fig, train_cfg)
    figures = [fig]
    norms = _norms_figure(ds, train_cfg)
    if norms is not None:
        figures.append(norms)
    for extra, extra_rows in (_histogram_figure(path.parent / "weight_histograms.npz"),
                              _sharpness_figure(path.parent / "sharpness.csv")):
        rows += extra_rows
        if extra is not None:
            figures.append(extra)
    provenance = {k: v for k, v in config.items() if k != "train"}
    provenance.update({f"train.{k}": v for k, v in train_cfg.items()})
    return Section(title=f"Training: {path.parent.name}", html=metric_table(rows), figures=tuple(figures),
                   provenance=provenance)
