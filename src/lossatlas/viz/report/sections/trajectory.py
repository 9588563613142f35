"""Report section for surfaces on planes defined by models: a training run's PCA plane (``lossatlas trajectory``
or ``surface --directions pca:RUN``; Li et al. 2018, Sec. 7) and the plane through three models (``--directions
plane:A,B,C``; Garipov et al. 2018). The contour with the path or the marked models is drawn by the surface
section (:func:`lossatlas.viz.report.figures.map_2d`); this section adds the numbers: explained variance, the
|cos| of random directions with the path against √(2/(πn)), and each checkpoint's loss as it is beside the loss
at its projection on the plane, with its distance from the plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.viz.report.figures import TEMPLATE, finite, metric_table
from lossatlas.viz.report.registry import Section, esc, register


def _pca_rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    a = ds.attrs
    ratio = a.get("pca_explained_variance", [np.nan, np.nan])
    rows = [("PCA", f"{'centred' if a.get('pca_centred') else 'uncentred'} differences θᵢ − θ_final of "
                    f"{ds.sizes.get('epoch', '?')} checkpoints, ignore {a.get('ignore', '?')}, n = "
                    f"{a.get('pca_dimension', '?')} coordinates"),
            ("explained variance", f"PC1 {100 * ratio[0]:.2f}%, PC2 {100 * ratio[1]:.2f}% (together "
                                   f"{100 * (ratio[0] + ratio[1]):.2f}%)"),
            ("random directions vs the path", f"mean |cos| {a.get('random_cos_mean', np.nan):.3g} ± "
                                              f"{a.get('random_cos_stderr', np.nan):.2g} over "
                                              f"{a.get('pca_cos_samples', '?')} Gaussian directions; √(2/(πn)) = "
                                              f"{a.get('random_cos_expected', np.nan):.3g}")]
    return rows


def _anchor_table(ds: xr.Dataset, prefix: str, labels: list[str]) -> str:
    metric = "train_loss"
    head = ("<tr><th>model</th><th>x</th><th>y</th><th>distance from the plane</th>"
            f"<th>{esc(metric)} as is</th><th>{esc(metric)} on the plane</th></tr>")
    body = []
    for i, label in enumerate(labels):
        cells = [ds[f"{prefix}_x"].values[i], ds[f"{prefix}_y"].values[i], ds[f"{prefix}_residual"].values[i],
                 ds[f"{prefix}_{metric}"].values[i], ds[f"{prefix}_plane_{metric}"].values[i]]
        body.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(f'{c:.5g}')}</td>" for c in cells) + "</tr>")
    return f'<table class="summary">{head}{"".join(body)}</table>'


def _loss_figure(ds: xr.Dataset) -> go.Figure:
    epoch = ds["epoch"].values
    fig = go.Figure()
    for split, dash in (("train", "solid"), ("test", "dash")):
        for kind, color in (("", "#1f77b4"), ("plane_", "#d62728")):
            name = f"path_{kind}{split}_loss"
            if name in ds:
                label = f"{split} loss {'on the plane' if kind else 'as is'}"
                fig.add_trace(go.Scatter(x=epoch, y=finite(ds[name].values), mode="lines+markers", name=label,
                                         line={"color": color, "dash": dash},
                                         hovertemplate=f"{label}<br>epoch %{{x}}<br>%{{y:.5g}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=epoch, y=finite(ds["path_residual"].values), mode="lines", yaxis="y2",
                             name="distance from the plane", line={"color": "#7b8794", "dash": "dot"},
                             hovertemplate="epoch %{x}<br>residual %{y:.4g}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=420, title={"text": "each checkpoint: its loss as is and at its "
                                                                    "projection on the PCA plane"},
                      xaxis_title="epoch", yaxis_title="loss", margin={"l": 60, "r": 60, "t": 50, "b": 45},
                      yaxis2={"title": {"text": "distance from the plane"}, "overlaying": "y", "side": "right",
                              "showgrid": False},
                      legend={"orientation": "h", "y": -0.2})
    return fig


@register("surface", order=120)
def model_plane_section(store: Path, ds: xr.Dataset) -> Section | None:
    """The PCA statistics and the path's true-vs-plane losses, or the three models of a plane."""
    if "path_x" in ds and "epoch" in ds.dims and "path_train_loss" in ds:
        labels = [f"epoch {int(e)}" for e in ds["epoch"].values]
        html = metric_table(_pca_rows(ds)) + _anchor_table(ds, "path", labels)
        return Section(title=f"Trajectory on its PCA plane: {store.name}", html=html, figures=(_loss_figure(ds),))
    if "anchor_x" in ds and "anchor_train_loss" in ds:
        labels = [str(n) for n in ds.attrs.get("anchor_names", [])] or [str(i) for i in range(ds.sizes["anchor"])]
        files = ds.attrs.get("plane_checkpoints", [])
        rows = [("plane", "through " + ", ".join(f"{n} = {f}" for n, f in zip(labels, files, strict=False))
                 + "; unit directions (Gram–Schmidt), A at (0, 0), B at (‖B − A‖, 0)")]
        return Section(title=f"Plane through three models: {store.name}",
                       html=metric_table(rows) + _anchor_table(ds, "anchor", labels))
    return None
