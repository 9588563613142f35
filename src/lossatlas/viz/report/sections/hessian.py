"""Report section for ``lossatlas hessian`` results (``attrs["kind"] == "hessian"``): the certified extreme
eigenvalues with their residuals, the trace, the SLQ spectral density with its probe band (Ghorbani et al.
2019) and the critical-point verdict (seed 004). Zarr stores come through the store registry; a JSON result
is picked up when its file name contains ``hessian`` (e.g. ``run/hessian.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from lossatlas.viz.report.figures import TEMPLATE, finite, metric_table
from lossatlas.viz.report.registry import Section, esc, register, register_artifact


def _summary_rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    a = ds.attrs
    rows = [("model / data", f"{a.get('model', '?')} on {a.get('data', '?')} ({a.get('split', 'train')} split)"),
            ("parameters", f"{a.get('n_params', '?')} (selection: {a.get('params') or 'all'})"),
            ("arithmetic", f"{a.get('dtype', '?')} products, residual tolerance {a.get('tol', '?')}, "
                           f"{a.get('hvp_count', '?')} Hessian-vector products"),
            ("loss, ‖∇L‖", f"{float(a.get('loss_value', np.nan)):.6g}, {float(a.get('grad_norm', np.nan)):.3g}")]
    if "trace" in a:
        rows.append(("trace tr(H)", f"{float(a['trace']):.6g} ± {float(a['trace_stderr']):.2g} "
                                    f"({a.get('trace_method', '?')}, {a.get('trace_hvps', '?')} products)"))
    if "negative_mass" in a:
        rows.append(("negative-eigenvalue mass (SLQ)", f"{float(a['negative_mass']):.4g} (smoothing width "
                                                       f"{float(a.get('density_sigma', np.nan)):.3g})"))
    if "critical_kind" in a:
        rows += _critical_rows(a)
    if "bn_statistics" in a and a["bn_statistics"] != "no BatchNorm layers":
        rows.append(("BatchNorm statistics", f"--bn {a.get('bn', '?')}: {a['bn_statistics']}"))
    return rows


def _critical_rows(a: dict) -> list[tuple[str, str]]:
    """Is θ critical (relative gradient test) and the Hessian's sign pattern, with counts or an honest index."""
    from lossatlas.viz.plot import critical_note

    rows = [("critical point", critical_note(a))]
    if "grad_relative" in a:
        rows.append(("gradient test", f"‖∇L‖/(‖H‖·‖θ‖) = {float(a['grad_relative']):.3g} vs grad-tol "
                                      f"{float(a['grad_tol']):.3g}: critical {a.get('is_critical', '?')}"))
    certified = "certified" if a.get("extremes_certified", True) else "NOT certified (verdict undetermined)"
    r_min, r_max = float(a.get("lambda_min_residual", np.nan)), float(a.get("lambda_max_residual", np.nan))
    rows.append(("λmin, λmax", f"{float(a['lambda_min']):.6g} (residual {r_min:.1e}), {float(a['lambda_max']):.6g} "
                               f"(residual {r_max:.1e}); {certified}"))
    if "index" not in a and "critical_negative_mass" in a:
        rows.append(("SLQ negative mass", f"{float(a['critical_negative_mass']):.3g}: not the index, the density's "
                                          f"width {float(a['critical_density_sigma']):.3g} exceeds |λmin|"))
    return rows


def _eigen_table(ds: xr.Dataset) -> str:
    body = []
    for end in ("top", "bottom"):
        if f"{end}_eigenvalues" not in ds:
            continue
        values, res = ds[f"{end}_eigenvalues"].values, ds[f"{end}_residuals"].values
        ok = ds[f"{end}_converged"].values if f"{end}_converged" in ds else np.ones_like(values, dtype=bool)
        for i, (v, r, c) in enumerate(zip(values, res, ok, strict=True)):
            body.append(f"<tr><td>{esc(end)} {i + 1}</td><td>{esc(f'{v:.8g}')}</td><td>{esc(f'{r:.2e}')}</td>"
                        f"<td>{'yes' if bool(c) else 'no'}</td></tr>")
    if not body:
        return ""
    head = "<tr><th>pair</th><th>eigenvalue λ</th><th>residual ‖Hv − λv‖</th><th>certified</th></tr>"
    return f'<table class="summary">{head}{"".join(body)}</table>'


def _spectrum_figure(ds: xr.Dataset) -> go.Figure | None:
    """Top-k and bottom-k eigenvalues against their rank, each end in its own panel with its own linear y axis:
    on one axis the bottom end (often |λ| ≪ λmax, near 0) would be a flat row of dots at zero."""
    from plotly.subplots import make_subplots

    ends = [(end, color) for end, color in (("top", "#1f77b4"), ("bottom", "#d62728"))
            if f"{end}_eigenvalues" in ds]
    if not ends:
        return None
    titles = [f"{'largest' if end == 'top' else 'smallest'} {ds.sizes[end]}" for end, _ in ends]
    fig = make_subplots(rows=1, cols=len(ends), subplot_titles=titles, horizontal_spacing=0.14)
    for col, (end, color) in enumerate(ends, start=1):
        v = finite(ds[f"{end}_eigenvalues"].values)
        r = finite(ds[f"{end}_residuals"].values)
        fig.add_trace(go.Scatter(x=np.arange(1, len(v) + 1), y=v, mode="markers", name=f"{end}-{len(v)}",
                                 marker={"color": color, "size": 9}, showlegend=False,
                                 error_y={"type": "data", "array": r, "visible": True},
                                 hovertemplate="rank %{x}<br>λ = %{y:.8g}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="rank", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="eigenvalue" if col == 1 else None, exponentformat="power", row=1, col=col)
        if np.isfinite(v).any() and np.nanmin(v) <= 0 <= np.nanmax(v):  # a sign change: show zero
            fig.add_hline(y=0.0, line={"color": "grey", "width": 0.5}, row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=380, title={"text": "extreme Hessian eigenvalues"},
                      margin={"l": 60, "r": 20, "t": 70, "b": 45})
    return fig


def _density_figure(ds: xr.Dataset) -> go.Figure | None:
    if "density" not in ds:
        return None
    grid, phi = ds["grid"].values, finite(ds["density"].values)
    floor = max(float(np.nanmax(phi)) * 1e-6, 1e-300)
    lo, hi = np.maximum(finite(ds["density_lo"].values), floor), np.maximum(finite(ds["density_hi"].values), floor)
    fig = go.Figure([
        go.Scatter(x=grid, y=hi, mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False),
        go.Scatter(x=grid, y=lo, mode="lines", line={"width": 0}, fill="tonexty", fillcolor="rgba(31,119,180,0.2)",
                   name="±2 s.e. across probes", hoverinfo="skip"),
        go.Scatter(x=grid, y=np.maximum(phi, floor), mode="lines", name="density", line={"color": "#1f77b4"},
                   hovertemplate="λ = %{x:.4g}<br>density %{y:.3g}<extra></extra>"),
    ])
    for end in ("top", "bottom"):
        for v in ds[f"{end}_eigenvalues"].values if f"{end}_eigenvalues" in ds else []:
            fig.add_vline(x=float(v), line={"color": "#d62728", "dash": "dash", "width": 1})
    fig.update_layout(template=TEMPLATE, height=380, title={"text": "spectral density (stochastic Lanczos quadrature)"},
                      xaxis_title="eigenvalue", yaxis_title="density", yaxis_type="log",
                      yaxis_exponentformat="power",
                      margin={"l": 50, "r": 10, "t": 50, "b": 45}, legend={"orientation": "h", "y": -0.2})
    return fig


@register("hessian", order=300)
def hessian_section(store: Path, ds: xr.Dataset) -> Section:
    """Eigenvalue table, spectrum and density plots and the scalar results of one Hessian analysis."""
    html = metric_table(_summary_rows(ds)) + _eigen_table(ds)
    figures = tuple(f for f in (_spectrum_figure(ds), _density_figure(ds)) if f is not None)
    return Section(title=f"Hessian spectrum: {store.name}", html=html, figures=figures)


@register_artifact("*hessian*.json", order=300)
def hessian_json_section(path: Path) -> Section | None:
    """The same section for a JSON result (``lossatlas hessian --out NAME.json``)."""
    from lossatlas.curvature.analysis import open_hessian
    from lossatlas.errors import UserInputError

    try:
        ds = open_hessian(path)
    except UserInputError:
        return None
    if ds.attrs.get("kind") != "hessian":
        return None
    return hessian_section(path, ds)
