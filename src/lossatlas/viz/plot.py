"""Static matplotlib figures of stored surfaces.

1D stores: loss (train solid, test dashed) on the left axis and accuracy on a twin right axis, as in
Li et al. 2018 Fig. 2, with 95% interval bands (± 1.96 stderr, clipped to what the metric can be) where a
``<metric>_stderr`` variable is stored. 2D stores: contour lines, filled contours, a heatmap and a 3D surface
of a metric, optionally in log scale (colour bars then read in the metric's own units).
Contour levels (:class:`Levels`): ``linear`` (evenly spaced), ``log`` (log-spaced: rings around a sharp
minimum), ``li`` (Li et al.'s ``plot_2D.py``: ``arange(0.1, 10, 0.5)``, or ``arange(vmin, vmax, vlevel)``),
``auto`` (log-spaced when the positive values span more than a factor :data:`LOG_RATIO`, else linear).
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
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lossatlas.engine.subset import Z95  # noqa: E402
from lossatlas.errors import UserInputError  # noqa: E402
from lossatlas.store import COMPLETED, open_surface  # noqa: E402
from lossatlas.viz.describe import log_ticks, sig, titled  # noqa: E402

STDERR = "_stderr"
LOG_RATIO = 50.0
"""``auto`` levels (and 1D loss axes) go log-spaced when max/min of the positive values exceeds this."""
LI_LEVELS = (0.1, 10.0, 0.5)
"""Li et al.'s ``plot_2D.py`` defaults: ``levels = arange(vmin=0.1, vmax=10, vlevel=0.5)``."""
FORMATS = ("png", "pdf", "svg")
DISCRETE_MAPS = ("hessian_converged", "hessian_matvecs")
"""Integer-valued maps of a convexity map (stored as float for NaN): never drawn as contours of a float."""


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


class LevelScheme(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """How contour levels are spaced."""

    auto = "auto"
    """log when the positive values span more than :data:`LOG_RATIO`, else linear."""
    linear = "linear"
    """``n`` evenly spaced levels from the lowest to the highest value (or ``--vmin``/``--vmax``)."""
    log = "log"
    """``n`` log-spaced levels: dense near a sharp minimum."""
    li = "li"
    """Li et al.'s ``arange(vmin, vmax, vlevel)``, default ``arange(0.1, 10, 0.5)``."""


def _positive_span(z: np.ndarray) -> float:
    pos = z[np.isfinite(z) & (z > 0)]
    finite = z[np.isfinite(z)]
    if pos.size == 0 or pos.size < finite.size:
        return 1.0  # zero or negative values: log spacing does not apply
    return float(pos.max() / pos.min())


@dataclass(frozen=True)
class Levels:
    """Contour levels and colour range: ``scheme`` (:class:`LevelScheme`), bounds ``vmin``/``vmax`` (None =
    the data's), spacing ``vlevel`` (Li et al.'s ``arange``) and the number ``n`` of linear/log levels."""

    vmin: float | None = None
    vmax: float | None = None
    vlevel: float | None = None
    scheme: LevelScheme | str = LevelScheme.auto
    n: int = 30

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "scheme", LevelScheme(str(getattr(self.scheme, "value", self.scheme))))
        except ValueError:
            choices = "|".join(s.value for s in LevelScheme)
            raise UserInputError(f"--levels must be one of {choices}, got '{self.scheme}'") from None
        if self.vlevel is not None and not self.vlevel > 0:
            raise UserInputError(f"--vlevel must be positive, got {self.vlevel}")
        if self.vmin is not None and self.vmax is not None and not self.vmax > self.vmin:
            raise UserInputError(f"--vmax must be larger than --vmin, got {self.vmin} and {self.vmax}")
        if self.n < 2:
            raise UserInputError(f"at least 2 contour levels are needed, got {self.n}")

    @property
    def is_default(self) -> bool:
        return self == Levels()

    def resolve(self, z: np.ndarray, log: bool = False) -> LevelScheme:
        """The scheme used for the values ``z``: ``auto`` decided, ``li`` when a ``vlevel`` is given."""
        if self.scheme is LevelScheme.auto:
            if self.vlevel is not None and not log:
                return LevelScheme.li
            span = _positive_span(np.asarray(z, dtype=float))
            return LevelScheme.log if span > LOG_RATIO and not log else LevelScheme.linear
        return LevelScheme(self.scheme)

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
        z = np.asarray(z, dtype=float)
        scheme = self.resolve(z, log)
        if scheme is LevelScheme.li and self.scheme is LevelScheme.li:  # Li et al.'s defaults fill the gaps
            vmin, vmax, vlevel = (given if given is not None else default
                                  for given, default in zip((self.vmin, self.vmax, self.vlevel), LI_LEVELS,
                                                            strict=True))
            lv = np.arange(vmin, vmax + 1e-12, vlevel)
            if log:
                lv = np.log10(lv[lv > 0])
            return lv if lv.size >= 2 else np.array([vmin, vmax])
        b = self.bounds(z, log)
        if b is None:
            return np.linspace(0.0, 1.0, 11)
        lo, hi = b
        if scheme is LevelScheme.li and self.vlevel is not None:  # --vlevel alone: arange over the data's range
            lv = np.arange(lo, hi + 1e-12, self.vlevel)
            return lv if lv.size >= 2 else np.array([lo, hi])
        if scheme is LevelScheme.log and not log:
            pos = z[np.isfinite(z) & (z > 0)]
            lo = max(lo, float(pos.min())) if pos.size else lo
            if lo > 0 and hi > lo:
                return np.geomspace(lo, hi, self.n)
        return np.linspace(lo, hi, self.n)


def masked(z: np.ndarray, log: bool = False) -> np.ma.MaskedArray:
    """``z`` (or log10 z) with NaN, ±inf (and, in log scale, z ≤ 0) masked."""
    z = np.asarray(z, dtype=float)
    bad = ~np.isfinite(z) | ((z <= 0) if log else np.zeros(z.shape, bool))
    zz = np.log10(np.where(bad, 1.0, z)) if log else np.where(bad, 0.0, z)
    return np.ma.masked_array(zz, mask=bad)


_masked = masked  # backwards-compatible name


def shared_scale(arrays: Sequence[np.ndarray], log: bool = False,
                 levels: Levels = Levels()) -> tuple[Normalize, np.ndarray]:
    """One colour normalisation and one set of contour levels for all ``arrays`` (plotted units).

    Log-spaced levels on linear values come with a :class:`~matplotlib.colors.LogNorm`, so that the colours
    follow the levels (and the colour bar reads in the values' own units)."""
    pooled = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays]) if arrays else np.zeros(0)
    lv = levels.values(pooled, log)
    if not log and levels.resolve(pooled, log) is LevelScheme.log and lv[0] > 0:
        return LogNorm(vmin=float(lv[0]), vmax=float(lv[-1])), lv
    return Normalize(vmin=float(lv[0]), vmax=float(lv[-1])), lv


def metric_label(metric: str, log: bool) -> str:
    return f"{metric} (log scale)" if log else metric


def log_colorbar(cbar: Any, norm: Normalize) -> None:
    """A log-scale colour bar labelled in the values' own units (ticks at 0.01, 0.1, 1, …): for log10 values
    drawn with a linear norm (``--log``), or for the values themselves with a :class:`LogNorm` (log levels)."""
    if isinstance(norm, LogNorm):
        ticks, labels = log_ticks(float(np.log10(norm.vmin)), float(np.log10(norm.vmax)))  # type: ignore[arg-type]
        cbar.set_ticks([10.0**t for t in ticks], labels=labels)
        cbar.minorticks_off()
    else:
        ticks, labels = log_ticks(float(norm.vmin), float(norm.vmax))  # type: ignore[arg-type]
        if ticks:
            cbar.set_ticks(ticks, labels=labels)


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

    All panels drawn with the same ``norm`` and ``lv`` share colours and contour levels exactly. In log scale
    (``log``: ``z`` drawn as log10) contour labels and the colour bar show the values themselves.
    """
    zm = masked(z, log)
    if kind == PlotKind.contour:
        artist = ax.contour(xx, yy, zm, levels=lv, cmap="summer", norm=norm)
        if len(artist.levels):  # label about ten of the levels: thirty labels would cover the picture
            step = max(1, len(artist.levels) // 10)
            ax.clabel(artist, artist.levels[::step], inline=True, fontsize=7,
                      fmt=(lambda v: sig(10**v, 3)) if log else (lambda v: sig(v, 3)))
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
    for axis in (ax.xaxis, ax.yaxis):  # a few round ticks: labels never run together
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    if kind != PlotKind.surface3d:
        if zm.mask.any():
            ax.plot(xx[zm.mask], yy[zm.mask], "x", color="0.45", markersize=4, label="non-finite")
        ax.set(xlabel="x", ylabel="y")
        ax.set_aspect("equal", adjustable="box")
    if colorbar and kind != PlotKind.contour:
        cbar = fig.colorbar(artist, ax=ax, label=label, shrink=0.8, pad=0.12 if kind == PlotKind.surface3d else 0.05)
        if log or isinstance(norm, LogNorm):
            log_colorbar(cbar, norm)
    return artist


def figure_2d(ds: xr.Dataset, metric: str, kind: PlotKind, log: bool = False,
              levels: Levels = Levels(), title: str | None = None) -> Figure:
    """One static figure of a 2D metric (see :class:`PlotKind`); the title carries the store's qualifiers
    (subset, untrained weights, BN policy)."""
    xx, yy, z = grid_2d(ds, metric)
    norm, lv = shared_scale([z], log, levels)
    fig = plt.figure(figsize=(6, 5) if kind == PlotKind.surface3d else (5.5, 4.5))
    ax = fig.add_subplot(projection="3d") if kind == PlotKind.surface3d else fig.add_subplot()
    label = metric_label(metric, log or isinstance(norm, LogNorm))
    draw_2d(fig, ax, xx, yy, z, kind, log, norm, lv, label)
    if kind != PlotKind.surface3d:
        draw_path(ax, ds)
    ax.set_title(title or titled(metric, ds.attrs), fontsize=10)
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


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_2d(ds: xr.Dataset, out_dir: Path, stem: str, metric: str = "train_loss", log: bool = False,
            levels: Levels = Levels(), kinds: Sequence[PlotKind] = tuple(PlotKind), fmt: str = "png") -> list[Path]:
    """A file of ``metric`` per kind (contour, filled contour, heatmap, 3D surface); returns the paths."""
    return [_save(figure_2d(ds, metric, PlotKind(kind), log, levels),
                  Path(out_dir) / f"{stem}_{metric}_{PlotKind(kind).value}.{fmt}") for kind in kinds]


def _interval(ds: xr.Dataset, name: str, scale: float, log: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The 95% interval of ``name`` (``scale`` × value ± 1.96 stderr), clipped to what the metric can be:
    accuracy in [0, 100] %, a non-negative loss at 0 (on a log axis: at half its smallest positive value)."""
    if f"{name}{STDERR}" not in ds:
        return None
    v = scale * np.ma.filled(masked(ds[name].values, False), np.nan)
    se = Z95 * scale * np.ma.filled(masked(ds[f"{name}{STDERR}"].values, False), np.nan)
    lo, hi = v - se, v + se
    if name.endswith("_accuracy"):
        return np.clip(lo, 0.0, 100.0), np.clip(hi, 0.0, 100.0)
    finite = v[np.isfinite(v)]
    if finite.size and (finite >= 0).all():
        pos = finite[finite > 0]
        lo = np.maximum(lo, float(pos.min()) / 2 if log and pos.size else 0.0)
    return lo, hi


def figure_1d(ds: xr.Dataset, log: bool = False, title: str | None = None) -> Figure:
    """Loss and accuracy against ``x`` on twin axes (train solid, test dashed), 95% interval bands (clipped,
    and in the legend); the title carries the store's qualifiers (subset, untrained weights, BN policy)."""
    x = ds["x"].values
    fig, ax = plt.subplots(figsize=(6.4, 4.4))

    def draw(axis: Any, metric: str, color: str, scale: float) -> None:
        for split, style in (("train", "-"), ("test", "--")):
            name = f"{split}_{metric}"
            if name not in ds:
                continue
            v = scale * masked(ds[name].values, False)
            axis.plot(x, v, style, color=color, label=f"{split} {metric}")
            band = _interval(ds, name, scale, log and metric == "loss")
            if band is not None:
                axis.fill_between(x, *band, color=color, alpha=0.15 if split == "test" else 0.25, linewidth=0,
                                  label=f"{split} {metric} 95% interval")

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
    if handles:  # below the axes: eight entries (curves and bands) would hide the curves
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7,
                  ncol=min(4, len(handles)), frameon=False)
    ax.set_title(title or titled(str(ds.attrs.get("model", "")), ds.attrs), fontsize=9)
    fig.tight_layout()
    return fig


def plot_1d(ds: xr.Dataset, path: Path, log: bool = False, title: str | None = None) -> Path:
    """Write :func:`figure_1d` to ``path``."""
    return _save(figure_1d(ds, log, title), path)


def _eigen_panels(ds: xr.Dataset, ax: Any) -> None:
    """Top-k and bottom-k eigenvalues against rank, each end on its own y axis (the bottom end, |λ| ≪ λmax,
    would be a flat row at 0 on the top end's axis): ``ax`` is split in two side by side."""
    ends = [(end, color) for end, color in (("top", "tab:blue"), ("bottom", "tab:red")) if f"{end}_eigenvalues" in ds]
    spec = ax.get_subplotspec().subgridspec(1, len(ends), wspace=0.45)
    fig = ax.figure
    ax.remove()
    for i, (end, color) in enumerate(ends):
        sub = fig.add_subplot(spec[0, i])
        v = ds[f"{end}_eigenvalues"].values
        sub.stem(np.arange(1, len(v) + 1), v, linefmt=color, markerfmt="o", basefmt=" ")
        if np.nanmin(v) <= 0 <= np.nanmax(v):
            sub.axhline(0.0, color="grey", lw=0.5)
        sub.xaxis.set_major_locator(MaxNLocator(integer=True))
        sub.set(xlabel="rank", ylabel="eigenvalue" if i == 0 else None,
                title=f"{'largest' if end == 'top' else 'smallest'} {len(v)}")


def plot_spectrum(ds: xr.Dataset, path: Path) -> Path:
    """A ``lossatlas hessian`` result: extreme eigenvalues (stems) and the SLQ density (log scale, band).

    Left: top-k and bottom-k eigenvalues against their rank, each end on its own axis. Right: the smoothed density
    (Ghorbani et al. 2019, Fig. 1 style, log y) with its probe band and the eigenvalues as dashed lines.
    """
    panels = [name for name in ("eigen", "density")
              if (name == "eigen" and ("top_eigenvalues" in ds or "bottom_eigenvalues" in ds))
              or (name == "density" and "density" in ds)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False)
    a = ds.attrs
    for ax, panel in zip(axes[0], panels, strict=False):
        if panel == "eigen":
            _eigen_panels(ds, ax)
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
        notes.append(f"SLQ negative mass {float(a['negative_mass']):.3g}")
    if "critical_kind" in a:
        notes.append(critical_note(a))
    fig.suptitle(f"{a.get('model', '')} — " + "; ".join(notes), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def critical_note(a: Any) -> str:
    """``saddle, indefinite: 6 of 33 negative (index 0.182)`` from a Hessian result's attrs (no index claimed
    where it is unknown)."""
    head = f"{a['critical_kind']}, {str(a.get('hessian_sign', '?')).replace('_', ' ')}"
    if "negative_count" in a:
        n = int(a["negative_count"]) + int(a["zero_count"]) + int(a["positive_count"])
        return f"{head}: {a['negative_count']} of {n} negative (index {float(a['index']):.3g})"
    if "index" in a:
        return f"{head} (index ≈ {float(a['index']):.3g}, {a.get('index_method', '?')})"
    return f"{head} (index unknown)"


def plot_convexity(ds: xr.Dataset, path: Path) -> Path:
    """λmax, λmin, |λmin/λmax| (Li et al. 2018, Fig. 7), the certified flag and the product counts over a
    surface's grid, unconverged points marked (:mod:`lossatlas.viz.convexity`)."""
    from lossatlas.viz.convexity import plot_convexity as draw

    return draw(ds, path)


def default_metrics(ds: xr.Dataset) -> list[str]:
    """What ``plot`` draws by default: every loss and other float map on (x, y), not accuracies or stderrs."""
    out = []
    for name, var in ds.data_vars.items():
        n = str(name)
        if n == COMPLETED or n.endswith(STDERR) or n.endswith("_accuracy") or var.dtype.kind != "f":
            continue
        if n in DISCRETE_MAPS:  # flags and counts: drawn as discrete heatmaps in the convexity figure
            continue
        if set(var.dims) == {"x", "y"}:
            out.append(n)
    return sorted(out, key=lambda n: (not n.endswith("_loss"), not n.startswith("train"), n))


def _not_for_1d(log: bool, levels: Levels, metrics: Sequence[str] | None, kinds: Sequence[PlotKind] | None
                ) -> list[str]:
    """The options a 1D store cannot use (``--log`` can: it is the loss axis)."""
    given = [("--metric", bool(metrics)), ("--kind", bool(kinds)), ("--vmin", levels.vmin is not None),
             ("--vmax", levels.vmax is not None), ("--vlevel", levels.vlevel is not None),
             ("--levels", levels.scheme is not LevelScheme.auto)]
    return [name for name, used in given if used]


def plot_store(store: str | Path, out_dir: str | Path | None = None, log: bool = False,
               levels: Levels = Levels(), metrics: Sequence[str] | None = None,
               kinds: Sequence[PlotKind] | None = None, fmt: str = "png") -> list[Path]:
    """Every static figure for a store; files (``fmt``: png, pdf or svg) go to ``out_dir`` (default: beside it).

    1D stores give one twin-axes figure (options for 2D plots are refused in one line); 2D stores one figure per
    metric (default: losses and other maps such as ``lambda_min``) and kind (default: contour, filled contour,
    heatmap, 3D surface).
    """
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    store = Path(store)
    ds = open_surface(store)
    stem = store.name.removesuffix(".zarr")
    one_d = ds.attrs.get("kind") != "hessian" and "y" not in ds.dims
    unused = _not_for_1d(log, levels, metrics, kinds) if one_d else []
    if unused:
        raise UserInputError(f"{', '.join(unused)} only appl{'ies' if len(unused) == 1 else 'y'} to 2D stores; "
                             f"'{store.name}' is a 1D curve "
                             "(its plot shows every loss and accuracy; --log and --format apply)")
    out = Path(out_dir) if out_dir is not None else store.parent
    out.mkdir(parents=True, exist_ok=True)
    if ds.attrs.get("kind") == "hessian":
        return [plot_spectrum(ds, out / f"{stem}_spectrum.{fmt}")]
    convexity = [plot_convexity(ds, out / f"{stem}_convexity.{fmt}")] if "convexity_ratio" in ds else []
    if one_d:
        return [plot_1d(ds, out / f"{stem}_1d.{fmt}", log=log), *convexity]
    paths = []
    for metric in metrics or default_metrics(ds):
        paths += plot_2d(ds, out, stem, metric, log=log, levels=levels, kinds=kinds or tuple(PlotKind), fmt=fmt)
    return paths + convexity


def parse_kinds(names: Sequence[str]) -> list[PlotKind]:
    """``["contour", "heatmap"]`` (or ``["contour,heatmap"]``) → kinds; a one-line error naming the choices."""
    out = []
    for name in (part for text in names for part in str(text).split(",") if part.strip()):
        try:
            out.append(PlotKind(name.strip().lower()))
        except ValueError:
            choices = ", ".join(k.value for k in PlotKind)
            raise UserInputError(f"--kind must be one of {choices}, got '{name}'") from None
    return out


def plot_surface(ds: xr.Dataset, metric: str = "train_loss", kind: str = "contourf", log: bool = False,
                 levels: Levels = Levels()) -> Figure:
    """A matplotlib figure of a surface or interpolation Dataset, oriented like ``lossatlas plot``'s files
    (x to the right, y up, whatever the Dataset's dim order): 1D curves with loss and accuracy on twin axes,
    or a 2D ``kind`` plot of ``metric``.

    ``ds.train_loss.plot()`` alone would put the first dimension (x) on the vertical axis; this does not
    (``ds.train_loss.plot(x="x", y="y")`` does the same by hand).
    """
    if "y" not in ds.dims:
        return figure_1d(ds, log=log)
    return figure_2d(ds, metric, parse_kinds([kind])[0], log=log, levels=levels)
