"""Static figures of convexity maps (``surface --hessian``; Li et al. 2018, Sec. 6, Fig. 7).

λmax, λmin and |λmin/λmax| at every grid point, and the bookkeeping of the Lanczos run behind each point:
whether it certified both extremes (``hessian_converged``, 0/1) and how many Hessian-vector products it used
(``hessian_matvecs``, an integer). Points whose run was not certified are masked in the eigenvalue panels
(their numbers are the last Ritz values, not eigenvalues) and hatched in every 2D panel; in 1D they are
marked with red crosses. The flag and the product counts are discrete data: heatmaps with a discrete colour
bar (one colour per value), never contours of a float. Points never analysed (non-finite loss) are grey.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

EIGEN_PANELS = (("lambda_max", "λmax", "viridis"), ("lambda_min", "λmin", "coolwarm"),
                ("convexity_ratio", "|λmin / λmax|", "magma"))
HATCH = "////"
NOT_ANALYSED = "#cccccc"


def unconverged_mask(ds: xr.Dataset) -> np.ndarray:
    """``hessian_converged == 0`` (NaN = not analysed is not unconverged), shaped like the variable."""
    if "hessian_converged" not in ds:
        return np.zeros(ds["lambda_max"].shape, bool)
    return np.asarray(ds["hessian_converged"].values) == 0


def _yx(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].transpose("y", "x").values, dtype=float)


def _cells(coords: np.ndarray) -> np.ndarray:
    """Cell edges around each grid coordinate (half-way to the neighbours)."""
    c = np.asarray(coords, dtype=float)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _hatch(ax: Any, ds: xr.Dataset, bad: np.ndarray) -> int:
    """Hatch the (y, x) cells where ``bad``; returns how many."""
    xe, ye = _cells(ds["x"].values), _cells(ds["y"].values)
    for j, i in zip(*np.nonzero(bad), strict=True):
        ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], fill=False, hatch=HATCH,
                               edgecolor="#d62728", linewidth=0.0))
    return int(bad.sum())


def integer_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ticks, bounds)`` of a discrete scale for integer data: one bin per distinct value (up to 12), else
    integer bins of equal width; boundaries half-way between integers (shared by the static and report figures)."""
    present = np.unique(np.round(values[np.isfinite(values)]).astype(int))
    if present.size == 0:
        present = np.array([0])
    if present.size <= 12:
        bounds = np.concatenate([[present[0] - 0.5], (present[1:] + present[:-1]) / 2, [present[-1] + 0.5]])
        return present, bounds
    step = int(np.ceil((present[-1] - present[0] + 1) / 12))
    ticks = np.arange(present[0], present[-1] + 1, step)
    return ticks, np.concatenate([ticks - 0.5, [ticks[-1] + step - 0.5]])


def integer_norm(values: np.ndarray) -> tuple[BoundaryNorm, np.ndarray, Any]:
    """A discrete colour scale for integer data: one colour per distinct value (up to 12), else integer bins.

    Returns ``(norm, ticks, cmap)``; the colour bar's boundaries fall half-way between integers."""
    ticks, bounds = integer_bins(values)
    cmap = plt.get_cmap("cividis", len(bounds) - 1).with_extremes(bad=NOT_ANALYSED)
    return BoundaryNorm(bounds, len(bounds) - 1), ticks, cmap


def _figure_2d(ds: xr.Dataset) -> Figure:
    x, y = ds["x"].values, ds["y"].values
    bad = _yx(ds, "hessian_converged") == 0 if "hessian_converged" in ds else np.zeros((y.size, x.size), bool)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (name, title, cmap) in zip(axes[0], EIGEN_PANELS, strict=True):
        z = _yx(ds, name)
        zm = np.ma.masked_array(z, mask=~np.isfinite(z) | bad)
        norm = None
        if name == "lambda_min" and zm.count():
            lim = float(np.abs(zm).max())
            norm = Normalize(-lim, lim) if lim > 0 else None
        mesh = ax.pcolormesh(x, y, zm, cmap=plt.get_cmap(cmap).with_extremes(bad=NOT_ANALYSED), norm=norm,
                             shading="nearest")
        fig.colorbar(mesh, ax=ax)
        _hatch(ax, ds, bad)
        ax.set(xlabel="x", ylabel="y", title=title)
    flag_ax, count_ax, note_ax = axes[1]
    if "hessian_converged" in ds:
        flag = np.ma.masked_invalid(_yx(ds, "hessian_converged"))
        flag_cmap = ListedColormap(["#d62728", "#2ca02c"]).with_extremes(bad=NOT_ANALYSED)
        mesh = flag_ax.pcolormesh(x, y, flag, cmap=flag_cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5], 2), shading="nearest")
        bar = fig.colorbar(mesh, ax=flag_ax, ticks=[0, 1])
        bar.ax.set_yticklabels(["no", "yes"])
        _hatch(flag_ax, ds, bad)
        flag_ax.set(xlabel="x", ylabel="y", title="λmin, λmax certified (hessian_converged)")
    if "hessian_matvecs" in ds:
        counts = _yx(ds, "hessian_matvecs")
        norm, ticks, cmap = integer_norm(counts)
        mesh = count_ax.pcolormesh(x, y, np.ma.masked_invalid(counts), cmap=cmap, norm=norm, shading="nearest")
        fig.colorbar(mesh, ax=count_ax, ticks=ticks, format="%d")
        _hatch(count_ax, ds, bad)
        count_ax.set(xlabel="x", ylabel="y", title="Hessian-vector products (hessian_matvecs)")
    note_ax.axis("off")
    note_ax.text(0.0, 0.5, _note(ds, int(bad.sum())), fontsize=10, va="center", wrap=True)
    fig.tight_layout()
    return fig


def _note(ds: xr.Dataset, failed: int) -> str:
    total = int(ds["lambda_max"].size)
    text = f"{failed} of {total} points unconverged (hatched, masked in the eigenvalue panels):\n" \
           "their λmin/λmax were not certified within the product budget."
    if "hessian" in ds.attrs:
        text += f"\nLanczos: {ds.attrs['hessian']}"
    return text


def _figure_1d(ds: xr.Dataset) -> Figure:
    x = ds["x"].values
    bad = unconverged_mask(ds)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, names in zip(axes[:2], ((("lambda_max", "λmax", "tab:blue"), ("lambda_min", "λmin", "tab:orange")),
                                    (("convexity_ratio", "|λmin / λmax|", "tab:purple"),)), strict=True):
        for name, lab, color in names:
            v = np.asarray(ds[name].values, dtype=float)
            ax.plot(x, np.where(bad, np.nan, v), color=color, marker=".", label=lab)
            if bad.any():
                ax.plot(x[bad], v[bad], "x", color="#d62728", markersize=7)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(xlabel="x")
        ax.legend(fontsize=8)
    axes[0].set_title("extreme eigenvalues (red ×: not certified)")
    axes[1].set_title("|λmin / λmax|")
    if "hessian_matvecs" in ds:
        counts = np.asarray(ds["hessian_matvecs"].values, dtype=float)
        width = float(np.min(np.diff(x))) * 0.8 if x.size > 1 else 0.8
        ok = np.isfinite(counts)
        axes[2].bar(x[ok & ~bad], counts[ok & ~bad], width=width, color="#2ca02c", label="certified")
        axes[2].bar(x[ok & bad], counts[ok & bad], width=width, color="#d62728", hatch=HATCH, label="not certified")
        axes[2].yaxis.get_major_locator().set_params(integer=True)
        axes[2].legend(fontsize=8)
    axes[2].set(xlabel="x", title=f"Hessian-vector products ({int(bad.sum())} of {x.size} unconverged)")
    fig.tight_layout()
    return fig


def figure_convexity(ds: xr.Dataset) -> Figure:
    """The convexity figure of a 1D or 2D surface store holding ``lambda_max``, ``lambda_min``, ..."""
    return _figure_2d(ds) if "y" in ds.dims else _figure_1d(ds)


def plot_convexity(ds: xr.Dataset, path: Path) -> Path:
    """Write :func:`figure_convexity` to ``path``."""
    fig = figure_convexity(ds)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["figure_convexity", "integer_norm", "plot_convexity", "unconverged_mask"]
