"""Several stored surfaces side by side on ONE colour scale with identical contour levels.

Comparisons such as ResNet-56 with and without skip connections, or networks of growing depth (Li et al.
2018, Fig. 5), are only meaningful when every panel maps the same loss to the same colour and draws the
same contour levels; :func:`compare_figure` pools the finite values of all stores (or takes
``--vmin/--vmax/--vlevel``) and draws each panel with that one :class:`~matplotlib.colors.Normalize` and
level array. 1D stores are overlaid on one pair of axes instead. Panel titles name the settings that differ
between the stores (``bn=eval`` vs ``bn=recompute``, checkpoint file names, ...).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from lossatlas.errors import UserInputError
from lossatlas.store import COMPLETED, open_surface
from lossatlas.viz.describe import differing_settings, qualifiers, sig
from lossatlas.viz.plot import (
    FORMATS,
    Levels,
    PlotKind,
    draw_2d,
    draw_path,
    grid_2d,
    log_colorbar,
    masked,
    metric_label,
    shared_scale,
)

_MAX_PANELS = 16


def _planes(paths: Sequence[Path], datasets: Sequence[xr.Dataset]) -> list[str]:
    """``"plane 1"``, ``"plane 2"``, …: stores whose stored directions are identical share a label (a store made
    with ``--directions other.zarr`` lies in the same plane as ``other.zarr``, though its attrs say "given")."""
    from lossatlas.params import tensors_sha256
    from lossatlas.store import load_directions

    seen: dict[str, str] = {}
    labels = []
    for path, ds in zip(paths, datasets, strict=True):
        try:
            dirs = load_directions(path)
            key = tensors_sha256({f"{i}.{k}": v for i, d in enumerate(dirs) for k, v in d.items()})
        except (UserInputError, KeyError, OSError):  # no stored directions: what the attrs say
            key = f"attrs:{ds.attrs.get('directions')}:{ds.attrs.get('seed')}"
        labels.append(seen.setdefault(key, f"plane {len(seen) + 1}"))
    return labels


def titles_of(paths: Sequence[Path], datasets: Sequence[xr.Dataset]) -> list[str]:
    """``"a\ncheckpoint=epoch_0004.safetensors, bn=eval"``: each store's name and the settings that differ between
    the stores (directions compared by content), or the model and the store's qualifiers when nothing does."""
    attrs = []
    for ds, plane in zip(datasets, _planes(paths, datasets), strict=True):
        a = dict(ds.attrs)
        a["directions"] = plane
        attrs.append(a)
    out = []
    for path, ds, what in zip(paths, datasets, differing_settings(attrs), strict=True):
        detail = what or ", ".join([str(ds.attrs.get("model", "")), *qualifiers(ds.attrs)]).strip(", ")
        name = path.name.removesuffix(".zarr")
        out.append(f"{name}\n{textwrap.fill(detail, 48)}" if detail else name)
    return out


def _check_same_dims(stores: Sequence[Path], datasets: Sequence[xr.Dataset]) -> int:
    dims = {p: (2 if "y" in ds.dims else 1) for p, ds in zip(stores, datasets, strict=True)}
    if len(set(dims.values())) != 1:
        listing = ", ".join(f"{p.name} ({d}D)" for p, d in dims.items())
        raise UserInputError(f"compare needs stores of one dimensionality, got {listing}; compare 1D and 2D "
                             "stores separately")
    return next(iter(dims.values()))


def _check_metric(paths: Sequence[Path], datasets: Sequence[xr.Dataset], metric: str) -> None:
    for p, ds in zip(paths, datasets, strict=True):
        if metric not in ds:
            names = ", ".join(str(v) for v in ds.data_vars if v != COMPLETED and ds[v].dtype.kind == "f")
            raise UserInputError(f"store '{p}' has no metric '{metric}'; it has {names}")


def compare_figure(stores: Sequence[str | Path], metric: str = "train_loss", log: bool = False,
                   levels: Levels = Levels(), kind: PlotKind = PlotKind.contourf,
                   titles: Sequence[str] | None = None) -> Figure:
    """A matplotlib figure with one panel per 2D store (shared colour bar and levels), or all 1D curves
    of ``metric`` overlaid on one axes (shared y range)."""
    paths = [Path(s) for s in stores]
    if not paths:
        raise UserInputError("compare needs at least one store")
    if len(paths) > _MAX_PANELS:
        raise UserInputError(f"compare shows at most {_MAX_PANELS} stores side by side, got {len(paths)}")
    datasets = [open_surface(p) for p in paths]
    _check_metric(paths, datasets, metric)
    names = list(titles) if titles else titles_of(paths, datasets)
    if _check_same_dims(paths, datasets) == 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, ds in zip(names, datasets, strict=True):
            ax.plot(ds["x"].values, masked(ds[metric].values, False), label=name.replace("\n", ": "))
        ax.set(xlabel="α" if datasets[0].attrs.get("kind") == "interpolation" else "x", ylabel=metric)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    grids = [grid_2d(ds, metric) for ds in datasets]
    norm, lv = shared_scale([g[2] for g in grids], log, levels)
    label = metric_label(metric, log or isinstance(norm, LogNorm))
    n = len(grids)
    cols = min(n, 4)
    rows = -(-n // cols)
    three_d = kind == PlotKind.surface3d
    fig = plt.figure(figsize=(4.2 * cols + 1.2, 4.0 * rows + 0.4), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1, projection="3d" if three_d else None) for i in range(n)]
    artist = None
    for ax, (xx, yy, z), name, ds in zip(axes, grids, names, datasets, strict=True):
        artist = draw_2d(fig, ax, xx, yy, z, kind, log, norm, lv, label, colorbar=False)
        if not three_d:
            draw_path(ax, ds)  # a stored trajectory or the models a plane passes through
        ax.set_title(name, fontsize=9)
    mappable = artist if kind != PlotKind.contour else plt.cm.ScalarMappable(norm=norm, cmap="summer")
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=axes, label=label, shrink=0.85)
        if log or isinstance(norm, LogNorm):
            log_colorbar(cbar, norm)
    lo, hi = (10 ** norm.vmin, 10 ** norm.vmax) if log else (norm.vmin, norm.vmax)  # type: ignore[operator]
    spacing = "log-spaced" if log or isinstance(norm, LogNorm) else "linear"
    fig.suptitle(f"{metric}: shared colour scale {sig(lo)} to {sig(hi)}, {len(lv)} {spacing} levels", fontsize=10)
    return fig


def compare_stores(stores: Sequence[str | Path], out: str | Path, metric: str = "train_loss",
                   log: bool = False, levels: Levels = Levels(),
                   kind: PlotKind | Sequence[PlotKind] = PlotKind.contourf) -> list[Path]:
    """Write :func:`compare_figure` to ``out`` (``.png``, ``.pdf`` or ``.svg``); several kinds go to
    ``OUT_<kind>.<suffix>`` each. Returns the paths written."""
    out = Path(out)
    if out.suffix.lower().lstrip(".") not in FORMATS:
        raise UserInputError(f"--out must end in .png, .pdf or .svg, got '{out}'")
    kinds = [kind] if isinstance(kind, PlotKind | str) else list(kind)
    targets = [out] if len(kinds) == 1 else [out.with_name(f"{out.stem}_{PlotKind(k).value}{out.suffix}")
                                             for k in kinds]
    out.parent.mkdir(parents=True, exist_ok=True)
    for k, target in zip(kinds, targets, strict=True):
        fig = compare_figure(stores, metric, log, levels, PlotKind(k))
        fig.savefig(target, dpi=120)
        plt.close(fig)
    return targets


__all__ = ["compare_figure", "compare_stores", "titles_of"]
