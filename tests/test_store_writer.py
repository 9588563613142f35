"""RegionWriter: regions written in the background land on disk as written synchronously, errors are not lost."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from lossatlas.grid import grid_units
from lossatlas.store import COMPLETED, RegionWriter, open_surface, prepare_store

AXES = {"x": np.linspace(-1.0, 1.0, 5), "y": np.linspace(0.0, 1.0, 3)}


def _store(path, background: bool) -> xr.Dataset:
    prepare_store(path, AXES, ["train_loss"], {"config_hash": "h"}, {"x": 1, "y": 3})
    with RegionWriter(path, background=background) as writer:
        for i, unit in enumerate(grid_units(AXES)[:4]):  # the last row stays unfinished
            writer.write(unit.region, {"train_loss": np.arange(3.0) + 10 * i})
    return open_surface(path)


def test_background_writes_equal_synchronous_writes(tmp_path) -> None:
    a, b = _store(tmp_path / "a.zarr", background=True), _store(tmp_path / "b.zarr", background=False)
    xr.testing.assert_identical(a, b)
    expected = np.array([np.arange(3.0) + 10 * i for i in range(4)])
    np.testing.assert_array_equal(a["train_loss"].values[:4], expected)
    assert np.isnan(a["train_loss"].values[4]).all()
    np.testing.assert_array_equal(a[COMPLETED].values, np.arange(5)[:, None].repeat(3, 1) < 4)


def test_a_failed_background_write_is_raised(tmp_path) -> None:
    path = tmp_path / "c.zarr"
    prepare_store(path, AXES, ["train_loss"], {"config_hash": "h"}, {"x": 1, "y": 3})
    writer = RegionWriter(path, background=True)
    writer.write(grid_units(AXES)[0].region, {"train_loss": np.arange(4.0)})  # 4 values for a row of 3
    with pytest.raises(ValueError):
        writer.close()
