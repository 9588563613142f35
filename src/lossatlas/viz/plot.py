"""Static matplotlib figures of stored surfaces.

1D stores: loss (train solid, test dashed) on the left axis and accuracy on a twin right axis, as in
Li et al. 2018 Fig. 2, with 95% interval bands (± 1.96 stderr) where a ``<metric>_stderr`` variable is stored.
2D stores: contour lines with Li et al.-style levels ``arange(vmin, vmax, vlevel)`` (their
``plot_2D.py``), filled contours, a heatmap and a 3D surface of a metric, optionally in log10.
Non-finite points (NaN/inf losses of diverged points; non-positive values in log scale) are masked,
never plotted as numbers: they are left blank (grey in heatmaps) and marked with small grey crosses.

:func:`shared_scale` gives one colour range and one set of levels for several arrays; the ``compare``
command (:mod:`lossatlas.viz.compare`) uses it so panels side by side are directly comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lossatlas.engine.subset import Z95  # noqa: E402
from lossatlas.errors import UserInputError  # noqa: E402
from lossatlas.store import COMPLETED, open_surface  # noqa: E402

STDERR = "_stderr"


class PlotKind(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Static 2D figure kinds."""

    contour = "contour"
    """Contour lines with labels (Li et al. 2018 style, ``cmap='summer'``)."""
    contourf = "contourf"
    """Filled contours with a colour bar."""
    heatmap = "heatmap"
    """One cell per grid point (``pcolormesh``); masked points grey."""
    surface3d = "surface3d"
    """A 3D surface."""


@dataclass(frozen=True)
class Levels:
    """Contour levels as in Li et al.'s plotting script: ``arange(vmin, vmax, vlevel)``; None = automatic."""

    vmin: float | None = None
    vmax: float | None = None
    vlevel: float | None = None

    def __post_init__(self) -> None:
        if self.vlevel is not None and not self.vlevel > 0:
            raise UserInputError(f"--vlevel must be positive, got {self.vlevel}")
        if self.vmin is not None and self.vmax is not None and not self.vmax > self.vmin:
            raise UserInputError(f"--vmax must be larger than --vmin, got {self.vmin} and {self.vmax}")

    def bounds(self, z: np.ndarray, log: bool = False) -> tuple[float, float] | None:
        """``(lo, hi)`` of the colour scale in plotted units (log10 if ``log``); None if nothing is finite."""
        finite = z[np.isfinite(z) & ((z > 0) if log else True)]
        if finite.size == 0 and (self.vmin is None or self.vmax is None):
            return None
        lo = self.vmin if self.vmin is not None else float(finite.min())
        hi = self.vmax if self.vmax is not None else float(finite.max())
        if log:
            lo, hi = float(np.log10(max(lo, 1e-12))), float(np.log10(max(hi, 1e-12)))
        if hi <= lo:
            hi = lo + max(1e-6, abs(lo) * 1e-6)
        return lo, hi

    def values(self, z: np.ndarray, log: bool = False) -> np.ndarray:
        """Contour levels (plotted units) for the finite values of ``z`` (pool arrays for a shared scale)."""
        b = self.bounds(np.asarray(z, dtype=float), log)
        if b is None:
            return np.linspace(0.0, 1.0, 11)
        lo, hi = b
        if self.vlevel is not None and not log:
            lv = np.arange(lo, hi + 1e-12, self.vlevel)
            return lv if lv.size >= 2 else np.array([lo, hi])
        return np.linspace(lo, hi, 30)


def masked(z: np.ndarray, log: bool = False) -> np.ma.MaskedArray:
    """``z`` (or log10 z) with NaN, ±inf (and, in log scale, z ≤ 0) masked."""
    z = np.asarray(z, dtype=float)
    bad = ~np.isfinite(z) | ((z <= 0) if log else np.zeros(z.shape, bool))
    zz = np.log10(np.where(bad, 1.0, z)) if log else np.where(bad, 0.0, z)
    return np.ma.masked_array(zz, mask=bad)


_masked = masked  # backwards-compatible name


def shared_scale(arrays: Sequence[np.ndarray], log: bool = False,
                 levels: Levels = Levels()) -> tuple[Normalize, np.ndarray]:
    """One colour normalisation and one set of contour levels for all ``arrays`` (plotted units)."""
    pooled = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays]) if arrays else np.zeros(0)
    lv = levels.values(pooled, log)
    return Normalize(vmin=float(lv[0]), vmax=float(lv[-1])), lv


def metric_label(metric: str, log: bool) -> str:
    return f"log10 {metric}" if log else metric


def grid_2d(ds: xr.Dataset, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xx, yy, z)`` meshes, rows following y and columns following x (whatever the store's dim order)."""
    if metric not in ds:
        names = ", ".join(str(v) for v in ds.data_vars if v != COMPLETED)
        raise UserInputError(f"the store has no metric '{metric}'; it has {names}")
    if set(ds[metric].dims) != {"x", "y"}:
        raise UserInputError(f"'{metric}' is not a 2D (x, y) variable; plot a 2D surface store")
    xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
    return xx, yy, np.asarray(ds[metric].transpose("y", "x").values, dtype=float)


def draw_2d(fig: Figure, ax: Any, xx: np.ndarray, yy: np.ndarray, z: np.ndarray, kind: PlotKind, log: bool,
            norm: Normalize, lv: np.ndarray, label: str, colorbar: bool = True) -> Any:
    """Draw one 2D panel on ``ax`` (a 3D axes for ``surface3d``); returns the main artist.

    All panels drawn with the same ``norm`` and ``lv`` share colours and contour levels exactly.
    """
    zm = masked(z, log)
    if kind == PlotKind.contour:
        artist = ax.contour(xx, yy, zm, levels=lv, cmap="summer", norm=norm)
        if len(artist.levels):
            ax.clabel(artist, inline=True, fontsize=7)
    elif kind == PlotKind.contourf:
        artist = ax.contourf(xx, yy, zm, levels=lv, cmap="viridis", norm=norm, extend="both")
        ax.contour(xx, yy, zm, levels=lv, colors="k", linewidths=0.3, norm=norm)
    elif kind == PlotKind.heatmap:
        cmap = plt.get_cmap("viridis").with_extremes(bad="#cccccc")
        artist = ax.pcolormesh(xx, yy, zm, cmap=cmap, norm=norm, shading="nearest")
    else:
        artist = ax.plot_surface(xx, yy, np.ma.filled(zm, np.nan), cmap="viridis", norm=norm, linewidth=0,
                                 antialiased=True)
        ax.set_zlim(norm.vmin, norm.vmax)
        ax.set(xlabel="x", ylabel="y", zlabel=label)
    if kind != PlotKind.surface3d:
        if zm.mask.any():
            ax.plot(xx[zm.mask], yy[zm.mask], "x", color="0.45", markersize=4, label="non-finite")
        ax.set(xlabel="x", ylabel="y")
        ax.set_aspect("equal", adjustable="box")
    if colorbar and kind != PlotKind.contour:
        fig.colorbar(artist, ax=ax, label=label, shrink=0.8, pad=0.12 if kind == PlotKind.surface3d else 0.05)
    return artist


def figure_2d(ds: xr.Dataset, metric: str, kind: PlotKind, log: bool = False,
              levels: Levels = Levels(), title: str | None = None) -> Figure:
    """One static figure of a 2D metric (see :class:`PlotKind`)."""
    xx, yy, z = grid_2d(ds, metric)
    norm, lv = shared_scale([z], log, levels)
    fig = plt.figure(figsize=(6, 5) if kind == PlotKind.surface3d else (5.5, 4.5))
    ax = fig.add_subplot(projection="3d") if kind == PlotKind.surface3d else fig.add_subplot()
    label = metric_label(metric, log)
    draw_2d(fig, ax, xx, yy, z, kind, log, norm, lv, label)
    if kind != PlotKind.surface3d:
        draw_path(ax, ds)
    ax.set_title(title or label, fontsize=10)
    return fig


def draw_path(ax: Any, ds: xr.Dataset) -> None:
    """A stored path (``path_x``, ``path_y``: a trajectory on its PCA plane, first and last point labelled by
    their ``step``) and named anchors (``anchor_x``, ``anchor_y``: the models a plane passes through)."""
    if "path_x" in ds and "path_y" in ds:
        px, py = ds["path_x"].values, ds["path_y"].values
        ax.plot(px, py, "-o", color="tab:red", lw=1.5, ms=3, label="path", zorder=5)
        dim = ds["path_x"].dims[0] if ds["path_x"].dims else None
        if dim in ds.coords and len(px):
            for i in (0, len(px) - 1):
                ax.annotate(f"{dim} {ds[dim].values[i]}", (px[i], py[i]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color="tab:red")
    if "anchor_x" in ds and "anchor_y" in ds:
        ax_, ay = ds["anchor_x"].values, ds["anchor_y"].values
        names = list(ds.attrs.get("anchor_names", []))
        ax.plot(ax_, ay, "o", color="white", mec="black", ms=7, zorder=6)
        for i, name in enumerate(names if len(names) == len(ax_) else range(len(ax_))):
            ax.annotate(str(name), (ax_[i], ay[i]), textcoords="offset points", xytext=(5, 5), fontsize=9,
                        fontweight="bold")


def plot_2d(ds: xr.Dataset, out_dir: Path, stem: str, metric: str = "train_loss", log: bool = False,
            levels: Levels = Levels(), kinds: Sequence[PlotKind] = tuple(PlotKind)) -> list[Path]:
    """A PNG of ``metric`` per kind (contour, filled contour, heatmap, 3D surface); returns the paths."""
    paths = []
    for kind in kinds:
        fig = figure_2d(ds, metric, PlotKind(kind), log, levels)
        paths.append(Path(out_dir) / f"{stem}_{metric}_{PlotKind(kind).value}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return paths


def figure_1d(ds: xr.Dataset, log: bool = False, title: str | None = None) -> Figure:
    """Loss and accuracy against ``x`` on twin axes (train solid, test dashed), 95% interval bands."""
    x = ds["x"].values
    fig, ax = plt.subplots(figsize=(6, 4))

    def draw(axis: Any, metric: str, color: str, scale: float) -> None:
        for split, style in (("train", "-"), ("test", "--")):
            name = f"{split}_{metric}"
            if name not in ds:
                continue
            v = scale * masked(ds[name].values, False)
            axis.plot(x, v, style, color=color, label=f"{split} {metric}")
            if f"{name}{STDERR}" in ds:
                se = Z95 * scale * np.ma.filled(masked(ds[f"{name}{STDERR}"].values, False), np.nan)
                vv = np.ma.filled(v, np.nan)
                axis.fill_between(x, vv - se, vv + se, color=color, alpha=0.2, linewidth=0)

    draw(ax, "loss", "tab:blue", 1.0)
    ax.set_xlabel("α" if ds.attrs.get("kind") == "interpolation" else "x")
    ax.set_ylabel("loss", color="tab:blue")
    if log:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if any(f"{s}_accuracy" in ds for s in ("train", "test")):
        ax2 = ax.twinx()
        draw(ax2, "accuracy", "tab:red", 100.0)
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(title or str(ds.attrs.get("model", "")), fontsize=9)
    fig.tight_layout()
    return fig


def plot_1d(ds: xr.Dataset, path: Path, log: bool = False, title: str | None = None) -> Path:
    """Write :func:`figure_1d` to ``path``."""
    fig = figure_1d(ds, log, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_spectrum(ds: xr.Dataset, path: Path) -> Path:
    """A ``lossatlas hessian`` result: extreme eigenvalues (stems) and the SLQ density (log scale, band).

    Left: top-k and bottom-k eigenvalues against their rank. Right: the smoothed spectral density
    (Ghorbani et al. 2019, Fig. 1 style, log y) with its probe band and the eigenvalues as dashed lines.
    """
    panels = [name for name in ("eigen", "density")
              if (name == "eigen" and ("top_eigenvalues" in ds or "bottom_eigenvalues" in ds))
              or (name == "density" and "density" in ds)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False)
    a = ds.attrs
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel == "eigen":
            for end, color in (("top", "tab:blue"), ("bottom", "tab:red")):
                if f"{end}_eigenvalues" in ds:
                    v = ds[f"{end}_eigenvalues"].values
                    ax.stem(np.arange(1, len(v) + 1), v, linefmt=color, markerfmt="o", basefmt=" ",
                            label=f"{end}-{len(v)}")
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(xlabel="rank", ylabel="eigenvalue", title="extreme Hessian eigenvalues")
            ax.legend(fontsize=8)
        else:
            grid = ds["grid"].values
            floor = max(float(np.nanmax(ds["density"].values)) * 1e-6, 1e-300)
            ax.fill_between(grid, np.maximum(ds["density_lo"].values, floor),
                            np.maximum(ds["density_hi"].values, floor),
                            color="tab:blue", alpha=0.25, linewidth=0, label="±2 s.e. across probes")
            ax.set_ylim(bottom=floor)
            ax.plot(grid, np.maximum(ds["density"].values, floor), color="tab:blue", label="density")
            for end in ("top", "bottom"):
                for v in ds[f"{end}_eigenvalues"].values if f"{end}_eigenvalues" in ds else []:
                    ax.axvline(float(v), color="tab:red", ls="--", lw=0.6)
            ax.set_yscale("log")
            ax.set(xlabel="eigenvalue", ylabel="density", title="spectral density (SLQ)")
            ax.legend(fontsize=8)
    notes = [f"n = {a.get('n_params', '?')}", f"dtype {a.get('dtype', '?')}", f"HVPs {a.get('hvp_count', '?')}"]
    if "trace" in a:
        notes.append(f"tr(H) = {float(a['trace']):.4g} ± {float(a['trace_stderr']):.2g}")
    if "negative_mass" in a:
        notes.append(f"negative mass {float(a['negative_mass']):.3g}")
    if "critical_kind" in a:
        notes.append(f"{a['critical_kind']} (index {float(a['index']):.3g})")
    fig.suptitle(f"{a.get('model', '')} — " + "; ".join(notes), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_convexity(ds: xr.Dataset, path: Path) -> Path:
    """λmax, λmin and |λmin/λmax| over a surface's grid (Li et al. 2018, Fig. 7); NaN points left blank."""
    names = [("lambda_max", "λmax", "viridis"), ("lambda_min", "λmin", "coolwarm"),
             ("convexity_ratio", "|λmin / λmax|", "magma")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, title, cmap) in zip(axes, names, strict=True):
        if "y" in ds.dims:
            z = masked(ds[name].transpose("y", "x").values)
            norm = None
            if name == "lambda_min":
                lim = float(np.nanmax(np.abs(np.ma.filled(z, np.nan)))) if z.count() else 1.0
                norm = Normalize(-lim, lim) if lim > 0 else None
            mesh = ax.pcolormesh(ds["x"].values, ds["y"].values, z, cmap=cmap, norm=norm, shading="auto")
            fig.colorbar(mesh, ax=ax)
            ax.set(xlabel="x", ylabel="y")
        else:
            ax.plot(ds["x"].values, masked(ds[name].values), color="tab:blue")
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.set(xlabel="x")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def default_metrics(ds: xr.Dataset) -> list[str]:
    """What ``plot`` draws by default: every loss and other float map on (x, y), not accuracies or stderrs."""
    out = []
    for name, var in ds.data_vars.items():
        n = str(name)
        if n == COMPLETED or n.endswith(STDERR) or n.endswith("_accuracy") or var.dtype.kind != "f":
            continue
        if set(var.dims) == {"x", "y"}:
            out.append(n)
    return sorted(out, key=lambda n: (not n.endswith("_loss"), not n.startswith("train"), n))


def plot_store(store: str | Path, out_dir: str | Path | None = None, log: bool = False,
               levels: Levels = Levels(), metrics: Sequence[str] | None = None,
               kinds: Sequence[PlotKind] | None = None) -> list[Path]:
    """Every static figure for a store; PNGs go to ``out_dir`` (default: beside the store).

    1D stores give one twin-axes PNG; 2D stores one PNG per metric (default: losses and other maps such
    as ``lambda_min``) and kind (default: contour, filled contour, heatmap, 3D surface).
    """
    store = Path(store)
    ds = open_surface(store)
    out = Path(out_dir) if out_dir is not None else store.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = store.name.removesuffix(".zarr")
    if ds.attrs.get("kind") == "hessian":
        return [plot_spectrum(ds, out / f"{stem}_spectrum.png")]
    convexity = [plot_convexity(ds, out / f"{stem}_convexity.png")] if "convexity_ratio" in ds else []
    if "y" not in ds.dims:
        return [plot_1d(ds, out / f"{stem}_1d.png", log=log), *convexity]
    paths = []
    for metric in metrics or default_metrics(ds):
        paths += plot_2d(ds, out, stem, metric, log=log, levels=levels, kinds=kinds or tuple(PlotKind))
    return paths + convexity


def parse_kinds(names: Sequence[str]) -> list[PlotKind]:
    """``["contour", "heatmap"]`` → kinds; a one-line error naming the choices otherwise."""
    out = []
    for name in names:
        try:
            out.append(PlotKind(str(name).lower()))
        except ValueError:
            choices = ", ".join(k.value for k in PlotKind)
            raise UserInputError(f"--kind must be one of {choices}, got '{name}'") from None
    return out


def plot_surface(ds: xr.Dataset, metric: str = "train_loss", kind: str = "contourf", log: bool = False) -> Figure:
    """A matplotlib figure of a surface or interpolation Dataset, oriented like ``lossatlas plot``'s PNGs
    (x to the right, y up): 1D curves with loss and accuracy on twin axes, or a 2D ``kind`` plot of ``metric``.

    ``ds.train_loss.plot()`` alone would put the first dimension (x) on the vertical axis; this does not.
    """
    if "y" not in ds.dims:
        return figure_1d(ds, log=log)
    return figure_2d(ds, metric, parse_kinds([kind])[0], log=log)
