"""Sublevel-set topology against independent references: scipy.ndimage.label at every level, a hand-worked 1D
profile, brute-force local minima and merge heights of a sum of Gaussian wells, the ring's loop."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from lossatlas.errors import UserInputError
from lossatlas.paths.topology import sublevel_topology, topology_of_store

WELLS = [((-1.0, -1.0), 1.0), ((1.2, -0.6), 0.7), ((-0.2, 1.3), 0.45)]  # (centre, depth)
SIGMA = 0.45


def _wells(n: int = 61) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.linspace(-2.5, 2.5, n)
    y = np.linspace(-2.5, 2.5, n + 4)  # not square: catches swapped axes
    xx, yy = np.meshgrid(x, y, indexing="ij")
    f = np.zeros_like(xx)
    for (cx, cy), depth in WELLS:
        f -= depth * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * SIGMA ** 2))
    return x, y, f


def _label_count(f: np.ndarray, lam: float) -> int:
    return int(ndimage.label(f <= lam)[1])


def test_one_dimensional_profile_by_hand() -> None:
    r = sublevel_topology(np.array([3, 1, 4, 0, 5, 2, 6.0]))
    # minima 0 (x=3), 1 (x=1), 2 (x=5); 1 merges into 0 at the maximum 4 (x=2), 2 into 0 at 5 (x=4)
    np.testing.assert_array_equal(r["birth"].values, [0, 1, 2])
    np.testing.assert_array_equal(r["death"].values, [np.inf, 4, 5])
    np.testing.assert_array_equal(r["birth_x"].values, [3, 1, 5])
    np.testing.assert_array_equal(r["death_x"].values, [np.nan, 2, 4])
    np.testing.assert_array_equal(r["parent"].values, [-1, 0, 0])
    assert (r.attrs["n_minima"], r.attrs["n_saddles"]) == (3, 2)


def test_component_counts_equal_scipy_label_at_every_level() -> None:
    x, y, f = _wells()
    levels = np.unique(f)  # every value the grid takes: N_λ changes only there
    r = sublevel_topology(f, {"x": x, "y": y}, levels=levels)
    np.testing.assert_array_equal(r["components"].values, [_label_count(f, lam) for lam in levels])
    assert r["components"].values.max() == len(WELLS)


def test_gaussian_wells_pairs_are_the_minima_and_merge_heights() -> None:
    x, y, f = _wells()
    r = sublevel_topology(f, {"x": x, "y": y})
    h0 = r.where(r["dimension"] == 0, drop=True)
    # brute-force local minima (strictly below their 4 neighbours)
    padded = np.pad(f, 1, constant_values=np.inf)
    core = padded[1:-1, 1:-1]
    is_min = ((core < padded[:-2, 1:-1]) & (core < padded[2:, 1:-1]) & (core < padded[1:-1, :-2])
              & (core < padded[1:-1, 2:]))
    minima = sorted(f[is_min])
    assert len(minima) == len(WELLS)
    np.testing.assert_array_equal(h0["birth"].values, minima)
    # ≈ the wells' depths (the neighbouring wells' tails and the grid shift them by < 0.5 %)
    np.testing.assert_allclose(h0["birth"].values, sorted(-d for _, d in WELLS), atol=5e-3)
    # merge heights by bisection over the grid's values: the lowest λ joining a minimum to a deeper one
    levels = np.unique(f)
    where = {float(f[i]): i for i in zip(*np.nonzero(is_min), strict=True)}

    def merge_height(p: tuple[int, int], q: tuple[int, int]) -> float:
        lo, hi = 0, len(levels) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            labels = ndimage.label(f <= levels[mid])[0]
            if labels[p] and labels[p] == labels[q]:
                hi = mid
            else:
                lo = mid + 1
        return float(levels[lo])

    for birth, death in zip(h0["birth"].values[1:], h0["death"].values[1:], strict=True):
        deeper = [m for m in minima if m < birth]
        assert death == min(merge_height(where[birth], where[m]) for m in deeper)
    assert np.isinf(h0["death"].values[0])
    # the merge tree (elder rule): well 1 joins well 0; the shallowest joins well 1's branch if it meets it
    # before well 1 has merged into well 0, else well 0's
    d = h0["death"].values
    assert list(h0["parent"].values) == [-1, 0, 1 if d[2] < d[1] else 0]


def test_ring_has_one_loop_that_dies_at_the_bump() -> None:
    x = np.linspace(-1.5, 1.5, 41)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    f = (xx ** 2 + yy ** 2 - 1) ** 2
    r = sublevel_topology(f, {"x": x, "y": x})
    h1 = r.where(r["dimension"] == 1, drop=True)
    assert h1.sizes["pair"] == 1 and h1["death"].values[0] == f[20, 20] == 1.0  # the bump at the centre
    assert r.attrs["n_maxima"] == 1 and h1["death_x"].values[0] == 0.0 and h1["death_y"].values[0] == 0.0


def test_store_round_trip_png_and_bad_input(tmp_path) -> None:
    x, y, f = _wells(31)
    store = tmp_path / "s.zarr"
    surface = xr.Dataset({"train_loss": (("x", "y"), f), "completed": (("x", "y"), np.ones_like(f, dtype=bool))},
                         coords={"x": x, "y": y}, attrs={"kind": "surface", "config_hash": "abc"})
    surface.to_zarr(store, consolidated=False)
    r = topology_of_store(store, levels=50)
    back = xr.open_zarr(tmp_path / "s.topology.zarr", consolidated=False).load()
    xr.testing.assert_identical(back.drop_attrs(), r.drop_attrs())
    assert back.attrs["kind"] == "topology" and back.attrs["source_config_hash"] == "abc"
    assert (tmp_path / "s.topology.png").stat().st_size > 10_000
    with pytest.raises(UserInputError, match="no variable 'test_loss'.*train_loss"):
        topology_of_store(store, metric="test_loss")
    cube = tmp_path / "c.zarr"
    xr.Dataset({"train_loss": (("x", "y", "z"), np.zeros((2, 2, 2)))}).to_zarr(cube, consolidated=False)
    with pytest.raises(UserInputError, match="3 dimensions"):
        topology_of_store(cube)
    with pytest.raises(UserInputError, match="does not exist"):
        topology_of_store(tmp_path / "missing.zarr")
