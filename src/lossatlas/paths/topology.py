"""Sublevel-set topology of a stored 1D/2D landscape: Freeman & Bruna's N_λ made measurable.

For a loss sampled on a grid, Ω(λ) = {grid points with L ≤ λ}, two points being neighbours when they differ by
one step along one axis (4-connectivity in 2D, the grid graph; ``scipy.ndimage.label``'s default). Its
0-dimensional persistent homology (Edelsbrunner & Harer 2010, Ch. VII; computed by gudhi's cubical complex
on the vertex values, ``gudhi.CubicalComplex(vertices=...)``) gives

* one pair (birth b, death d) per local minimum: the component born at the minimum's value b merges into an
  older (lower) one at the saddle value d (elder rule); the global minimum never dies (d = ∞);
* N_λ = #{pairs with b ≤ λ < d}, the number of connected components of Ω(λ), exactly, for every λ;
* a merge tree: each minimum's branch joins its *parent* — the lowest minimum in the same component of Ω(d)
  — at height d;
* in 2D also 1-dimensional pairs: a loop of Ω(λ) closes at a saddle (birth) and its hole fills at a local
  maximum (death).

Local minima are the births of 0-dim pairs, saddles their deaths and the births of 1-dim pairs, local maxima
the deaths of 1-dim pairs (pairs of zero persistence, from ties, are dropped). Non-finite grid values are
treated as +∞ (never in a sublevel set).

:func:`topology_of_store` writes the result beside the store, ``<store>.topology.zarr`` (kind
``"topology"``): dim ``level`` with ``components`` (N_λ on ``levels`` values from min to max), dim ``pair``
with ``dimension``, ``birth``, ``death``, ``persistence``, ``parent`` and the grid coordinates of the
birth and death points (``birth_<dim>``, ``death_<dim>``); attrs: counts, the source store and metric.
A PNG ``<store>.topology.png`` shows N_λ, the persistence diagram and the minima and saddles on the contour.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas import __version__
from lossatlas.errors import UserInputError
from lossatlas.store import open_surface

_META = {"completed"}


def _pairs(values: np.ndarray) -> list[tuple[int, float, float, int, int]]:
    """(dimension, birth, death, birth flat index, death flat index or −1) from gudhi, C-order indices."""
    import gudhi

    complex_ = gudhi.CubicalComplex(vertices=values)
    complex_.compute_persistence(homology_coeff_field=2, min_persistence=0)
    regular, essential = complex_.vertices_of_persistence_pairs()
    shape = values.shape

    def c_index(fortran: Any) -> int:  # gudhi numbers vertices in Fortran order
        return int(np.ravel_multi_index(np.unravel_index(int(fortran), shape, order="F"), shape))

    flat = values.reshape(-1)
    out: list[tuple[int, float, float, int, int]] = []
    for dim, pairs in enumerate(regular):
        for b, d in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
            bi, di = c_index(b), c_index(d)
            if flat[di] > flat[bi]:  # zero-persistence pairs (ties) carry no topology
                out.append((dim, float(flat[bi]), float(flat[di]), bi, di))
    for dim, births in enumerate(essential):
        for b in np.asarray(births, dtype=np.int64).reshape(-1):
            bi = c_index(b)
            out.append((dim, float(flat[bi]), float("inf"), bi, -1))
    return out


def _parents(values: np.ndarray, pairs: list[tuple[int, float, float, int, int]]) -> list[int]:
    """Merge-tree parent of every 0-dim pair: the lowest minimum alive in the component of Ω(death) that holds
    the death point (−1 for essential pairs and higher dimensions)."""
    from scipy import ndimage

    parents = [-1] * len(pairs)
    zero = [i for i, p in enumerate(pairs) if p[0] == 0]
    labelled: dict[float, np.ndarray] = {}
    for i in zero:
        death, where = pairs[i][2], pairs[i][4]
        if not np.isfinite(death):
            continue
        if death not in labelled:
            labelled[death] = ndimage.label(values <= death)[0].reshape(-1)
        labels = labelled[death]
        alive = [j for j in zero if j != i and pairs[j][1] <= death < pairs[j][2]
                 and labels[pairs[j][3]] == labels[where]]
        if alive:
            parents[i] = min(alive, key=lambda j: (pairs[j][1], pairs[j][3]))
    return parents


def components_at(pairs_birth: np.ndarray, pairs_death: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """N_λ = #{0-dim pairs with birth ≤ λ < death} for every λ in ``levels``."""
    b, d = np.asarray(pairs_birth)[:, None], np.asarray(pairs_death)[:, None]
    return ((b <= levels[None]) & (levels[None] < d)).sum(axis=0).astype(np.int64)


def sublevel_topology(values: np.ndarray, coords: Mapping[str, np.ndarray] | None = None,
                      levels: int | Sequence[float] | np.ndarray = 200) -> xr.Dataset:
    """Components of {L ≤ λ}, persistence pairs and merge tree of a 1D or 2D grid of values.

    Args:
        values: (n,) or (n, m) grid values (non-finite = +∞).
        coords: coordinates per axis, e.g. ``{"x": (n,), "y": (m,)}`` (default: indices ``x``, ``y``).
        levels: number of λ values from the minimum to the maximum finite value, or the λ values themselves.

    Returns:
        Dataset with dims ``level`` (``components``) and ``pair`` (``dimension``, ``birth``, ``death``,
        ``persistence``, ``parent``, ``birth_<axis>``, ``death_<axis>``), pairs sorted by dimension then birth.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2):
        raise UserInputError(f"topology needs a 1D or 2D grid, got {values.ndim} dimensions")
    names = list(coords) if coords else ["x", "y"][: values.ndim]
    axes = {n: np.asarray(coords[n]) if coords else np.arange(s, dtype=np.float64)
            for n, s in zip(names, values.shape, strict=True)}
    clean = np.where(np.isfinite(values), values, np.inf)
    finite = clean[np.isfinite(clean)]
    if finite.size == 0:
        raise UserInputError("the grid holds no finite value; nothing to analyse")
    pairs = sorted(_pairs(clean), key=lambda p: (p[0], p[1], p[3]))
    parents = _parents(clean, pairs)
    if isinstance(levels, (int, np.integer)):
        lam = np.linspace(float(finite.min()), float(finite.max()), int(levels))
    else:
        lam = np.asarray(levels, dtype=np.float64)
    zero = [p for p in pairs if p[0] == 0]
    data_vars: dict[str, Any] = {
        "components": ("level", components_at(np.array([p[1] for p in zero]), np.array([p[2] for p in zero]), lam)),
        "dimension": ("pair", np.array([p[0] for p in pairs], dtype=np.int64)),
        "birth": ("pair", np.array([p[1] for p in pairs])),
        "death": ("pair", np.array([p[2] for p in pairs])),
        "persistence": ("pair", np.array([p[2] - p[1] for p in pairs])),
        "parent": ("pair", np.array(parents, dtype=np.int64)),
    }
    for which, index in (("birth", 3), ("death", 4)):
        for axis, name in enumerate(names):
            position = [int(np.unravel_index(int(p[index]), values.shape)[axis]) if p[index] >= 0 else -1
                        for p in pairs]
            data_vars[f"{which}_{name}"] = ("pair", np.array([axes[name][i] if i >= 0 else np.nan
                                                              for i in position], dtype=np.float64))
    n_min = len(zero)
    saddles = sum(1 for p in zero if np.isfinite(p[2])) + sum(1 for p in pairs if p[0] == 1)
    maxima = sum(1 for p in pairs if p[0] == 1 and np.isfinite(p[2]))
    attrs = {"kind": "topology", "axes": names, "n_minima": n_min, "n_saddles": saddles, "n_maxima": maxima,
             "global_minimum": float(finite.min()), "connectivity": "grid neighbours along each axis (4 in 2D)",
             "nonfinite_points": int((~np.isfinite(values)).sum())}
    return xr.Dataset(data_vars, coords={"level": lam, "pair": np.arange(len(pairs))}, attrs=attrs)


def topology_of_store(store: str | Path, metric: str = "train_loss", out: str | Path | None = None,
                      levels: int = 200, png: bool = True) -> xr.Dataset:
    """:func:`sublevel_topology` of one variable of a 1D/2D store (written by ``lossatlas surface``), saved beside
    it as ``<store>.topology.zarr`` (or ``out``) with a PNG. Returns the result Dataset."""
    store = Path(store)
    ds = open_surface(store)
    grid_vars = [str(v) for v in ds.data_vars if str(v) not in _META and ds[v].ndim >= 1]
    if metric not in ds.data_vars:
        raise UserInputError(f"store '{store}' has no variable '{metric}'; choose one of: {', '.join(grid_vars)}")
    field = ds[metric]
    if field.ndim not in (1, 2):
        raise UserInputError(f"'{metric}' in '{store}' has {field.ndim} dimensions; topology needs a 1D or 2D grid")
    if levels < 2:
        raise UserInputError(f"--levels must be >= 2, got {levels}")
    if "completed" in ds and not bool(ds["completed"].all()):
        raise UserInputError(f"store '{store}' is not complete; finish it first (rerun the command that wrote it)")
    coords = {str(d): np.asarray(ds[d].values, dtype=np.float64) for d in field.dims}
    result = sublevel_topology(field.values, coords, levels)
    result.attrs.update(source=str(store), metric=metric, source_kind=str(ds.attrs.get("kind", "?")),
                        source_config_hash=str(ds.attrs.get("config_hash", "")), model=ds.attrs.get("model", "?"),
                        data=ds.attrs.get("data", "?"), lossatlas_version=__version__,
                        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), status="complete")
    target = Path(out) if out is not None else store.with_name(f"{store.name.removesuffix('.zarr')}.topology.zarr")
    if target.resolve() == store.resolve():
        raise UserInputError("--out must differ from the store it analyses")
    result.to_zarr(target, mode="w", consolidated=False)
    if png:
        plot_topology(result, field, target.with_suffix(".png"))
    return result


def plot_topology(result: xr.Dataset, field: xr.DataArray, path: str | Path) -> Path:
    """N_λ against λ, the persistence diagram, and the landscape with minima (●) and saddles (×) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_p, ax_f) = plt.subplots(1, 3, figsize=(15, 4.4))
    ax_n.step(result["level"].values, result["components"].values, where="post")
    ax_n.set(xlabel="λ", ylabel="N_λ (components of {L ≤ λ})", title="connected components")
    finite_death = result["death"].values[np.isfinite(result["death"].values)]
    top = float(finite_death.max()) if finite_death.size else float(result["level"].values.max())
    lo = float(result["birth"].values.min()) if result.sizes["pair"] else 0.0
    for dim, marker in ((0, "o"), (1, "^")):
        sel = result["dimension"].values == dim
        death = np.where(np.isfinite(result["death"].values[sel]), result["death"].values[sel], top)
        ax_p.scatter(result["birth"].values[sel], death, marker=marker, label=f"H{dim}")
    ax_p.plot([lo, top], [lo, top], "k--", lw=0.8)
    ax_p.set(xlabel="birth", ylabel="death (∞ drawn at the top)", title="persistence diagram")
    ax_p.legend()
    names = result.attrs["axes"]
    zero = result["dimension"].values == 0
    if len(names) == 2:
        x, y = (field[n].values for n in names)
        cs = ax_f.contourf(x, y, field.values.T, levels=30)
        fig.colorbar(cs, ax=ax_f)
        ax_f.scatter(result[f"birth_{names[0]}"].values[zero], result[f"birth_{names[1]}"].values[zero],
                     c="w", edgecolors="k", marker="o", label="minima")
        saddle_x = np.concatenate([result[f"death_{names[0]}"].values[zero],
                                   result[f"birth_{names[0]}"].values[~zero]])
        saddle_y = np.concatenate([result[f"death_{names[1]}"].values[zero],
                                   result[f"birth_{names[1]}"].values[~zero]])
        ax_f.scatter(saddle_x, saddle_y, c="r", marker="x", label="saddles")
        ax_f.set(xlabel=names[0], ylabel=names[1])
    else:
        x = field[names[0]].values
        ax_f.plot(x, field.values)
        ax_f.scatter(result[f"birth_{names[0]}"].values[zero], result["birth"].values[zero], c="w",
                     edgecolors="k", zorder=3, label="minima")
        fin = zero & np.isfinite(result["death"].values)
        ax_f.scatter(result[f"death_{names[0]}"].values[fin], result["death"].values[fin], c="r", marker="x",
                     zorder=3, label="merge points")
        ax_f.set(xlabel=names[0], ylabel=str(field.name))
    ax_f.legend(loc="best")
    ax_f.set_title(f"{field.name}: {result.attrs['n_minima']} minima, {result.attrs['n_saddles']} saddles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["components_at", "plot_topology", "sublevel_topology", "topology_of_store"]
