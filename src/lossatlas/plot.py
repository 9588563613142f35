"""Static matplotlib figures of stored surfaces.

1D stores: loss (train solid, test dashed) on the left axis and accuracy on a twin right axis, as in
Li et al. 2018 Fig. 2. 2D stores: contour lines, filled contours and a 3D surface of a metric.
Non-finite points (NaN/inf losses of diverged points) are masked, never plotted as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from lossatlas.errors import UserInputError  # noqa: E402
from lossatlas.store import open_surface  # noqa: E402


@dataclass(frozen=True)
class Levels:
    """Contour levels as in Li et al.'s plotting script: ``arange(vmin, vmax, vlevel)``; None = automatic."""

    vmin: float | None = None
    vmax: float | None = None
    vlevel: float | None = None

    def values(self, z: np.ndarray, log: bool = False) -> np.ndarray | int:
        finite = z[np.isfinite(z)]
        if finite.size == 0:
            return 10
        lo = self.vmin if self.vmin is not None else float(finite.min())
        hi = self.vmax if self.vmax is not None else float(finite.max())
        if log:
            lo, hi = np.log10(max(lo, 1e-12)), np.log10(max(hi, 1e-12))
        if hi <= lo:
            hi = lo + 1e-6
        if self.vlevel is not None and not log:
            return np.arange(lo, hi + 1e-12, self.vlevel)
        return np.linspace(lo, hi, 30)


def _masked(z: np.ndarray, log: bool) -> np.ma.MaskedArray:
    z = np.asarray(z, dtype=float)
    bad = ~np.isfinite(z) | ((z <= 0) if log else False)
    zz = np.log10(np.where(bad, 1.0, z)) if log else z
    return np.ma.masked_array(zz, mask=bad)


def plot_1d(ds: xr.Dataset, path: Path, log: bool = False, title: str | None = None) -> Path:
    """Loss and accuracy against ``x`` on twin axes (train solid, test dashed)."""
    x = ds["x"].values
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("test", "--")):
        if f"{split}_loss" in ds:
            ax.plot(x, _masked(ds[f"{split}_loss"].values, False), style, color="tab:blue",
                    label=f"{split} loss")
    ax.set_xlabel("α" if ds.attrs.get("kind") == "interpolation" else "x")
    ax.set_ylabel("loss", color="tab:blue")
    if log:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if any(f"{s}_accuracy" in ds for s in ("train", "test")):
        ax2 = ax.twinx()
        for split, style in (("train", "-"), ("test", "--")):
            if f"{split}_accuracy" in ds:
                ax2.plot(x, 100 * _masked(ds[f"{split}_accuracy"].values, False), style, color="tab:red",
                         label=f"{split} accuracy")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(title or ds.attrs.get("model", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_2d(ds: xr.Dataset, out_dir: Path, stem: str, metric: str = "train_loss", log: bool = False,
            levels: Levels = Levels()) -> list[Path]:
    """Contour, filled contour and 3D surface PNGs of ``metric``; returns the written paths."""
    if metric not in ds:
        raise UserInputError(f"the store has no metric '{metric}'; it has {', '.join(map(str, ds.data_vars))}")
    z = ds[metric].transpose("y", "x").values  # rows follow y, columns follow x
    xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
    zm = _masked(z, log)
    lv = levels.values(z, log)
    label = f"log10 {metric}" if log else metric
    paths = []

    fig, ax = plt.subplots(figsize=(5, 4.5))
    cs = ax.contour(xx, yy, zm, levels=lv, cmap="summer")
    ax.clabel(cs, inline=True, fontsize=7)
    ax.set(xlabel="x", ylabel="y", title=label)
    paths.append(out_dir / f"{stem}_{metric}_contour.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cf = ax.contourf(xx, yy, zm, levels=lv, cmap="viridis")
    fig.colorbar(cf, ax=ax, label=label)
    ax.set(xlabel="x", ylabel="y", title=label)
    paths.append(out_dir / f"{stem}_{metric}_contourf.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig = plt.figure(figsize=(6, 5))
    ax3 = fig.add_subplot(projection="3d")
    ax3.plot_surface(xx, yy, np.ma.filled(zm, np.nan), cmap="viridis", linewidth=0, antialiased=True)
    ax3.set(xlabel="x", ylabel="y", zlabel=label)
    paths.append(out_dir / f"{stem}_{metric}_surface3d.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_store(store: str | Path, out_dir: str | Path | None = None, log: bool = False,
               levels: Levels = Levels()) -> list[Path]:
    """Every static figure for a store; PNGs go to ``out_dir`` (default: beside the store)."""
    store = Path(store)
    ds = open_surface(store)
    out = Path(out_dir) if out_dir is not None else store.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = store.name.removesuffix(".zarr")
    if "y" not in ds.dims:
        return [plot_1d(ds, out / f"{stem}_1d.png", log=log)]
    paths = []
    for metric in ("train_loss", "test_loss"):
        if metric in ds:
            paths += plot_2d(ds, out, stem, metric, log=log, levels=levels)
    return paths
