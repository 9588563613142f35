"""Mesh and CSV export: meshio reads every file back; point counts, triangles and heights match the grid."""

from __future__ import annotations

import csv
from pathlib import Path

import meshio
import numpy as np
import pytest
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.store import COMPLETED
from lossatlas.viz.export import ExportFormat, export_store, height_field, parse_format
from tests.test_report import bowl, synthetic_store

MESHES = [ExportFormat.vtu, ExportFormat.obj, ExportFormat.stl, ExportFormat.ply]


@pytest.mark.parametrize("fmt", MESHES)
def test_mesh_round_trip_through_meshio(tmp_path: Path, fmt: ExportFormat) -> None:
    nx, ny = 9, 7
    ds = synthetic_store(tmp_path / "s.zarr", nx=nx, ny=ny, bad=False)
    out = export_store(tmp_path / "s.zarr", tmp_path / f"s.{fmt.value}", fmt)
    mesh = meshio.read(out)
    assert len(mesh.points) == nx * ny
    tris = np.concatenate([c.data for c in mesh.cells if c.type == "triangle"])
    assert tris.shape == (2 * (nx - 1) * (ny - 1), 3)
    # every point is (x, y, loss) of the bowl: compare as sets (STL re-orders points on reading)
    pts = np.asarray(mesh.points, dtype=np.float64)
    tol = 1e-6 if fmt == ExportFormat.stl else 1e-12  # binary STL stores float32
    np.testing.assert_allclose(pts[:, 2], bowl(pts[:, 0], pts[:, 1]), rtol=tol, atol=tol)
    xx, yy = np.meshgrid(ds.x.values, ds.y.values, indexing="ij")
    expected = np.stack([xx.ravel(), yy.ravel()], 1)
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    np.testing.assert_allclose(pts[order, :2], expected[np.lexsort((expected[:, 1], expected[:, 0]))],
                               rtol=tol, atol=tol)
    # triangles cover the rectangle exactly once: total projected area = (2 * 1)
    p = pts[tris]
    area = 0.5 * np.abs((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                        - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
    np.testing.assert_allclose(area.sum(), 2.0 * 1.0, rtol=1e-5)
    if fmt == ExportFormat.vtu:
        np.testing.assert_allclose(mesh.point_data["train_loss"], pts[:, 2])
        np.testing.assert_allclose(mesh.point_data["lambda_min"], xx.ravel() - 0.2)


def test_nonfinite_points_and_their_triangles_are_dropped(tmp_path: Path) -> None:
    ds = synthetic_store(tmp_path / "s.zarr", nx=6, ny=5)  # NaN at (0,0), inf at (5,4), -inf at (2,3)
    points, tris, data = height_field(ds, "train_loss")
    assert len(points) == 6 * 5 - 3 and np.isfinite(points).all()
    # naive reference: keep a cell's triangle iff all three corners are finite
    z = ds["train_loss"].values
    kept = 0
    for i in range(5):
        for j in range(4):
            for tri in ([(i, j), (i + 1, j), (i + 1, j + 1)], [(i, j), (i + 1, j + 1), (i, j + 1)]):
                kept += all(np.isfinite(z[a, b]) for a, b in tri)
    assert len(tris) == kept < 2 * 5 * 4
    assert tris.min() >= 0 and tris.max() < len(points)
    np.testing.assert_allclose(points[:, 2], z[np.isfinite(z)])
    np.testing.assert_array_equal(data["i"], np.nonzero(np.isfinite(z))[0])
    mesh = meshio.read(export_store(tmp_path / "s.zarr", tmp_path / "s.obj"))
    assert len(mesh.points) == 27 and len(mesh.cells[0].data) == kept
    lp, _, _ = height_field(ds, "train_loss", z_scale=2.0, log=True)
    np.testing.assert_allclose(lp[:, 2], 2 * np.log10(z[np.isfinite(z)]))


def test_csv_long_format(tmp_path: Path) -> None:
    ds = synthetic_store(tmp_path / "s.zarr", nx=4, ny=4)
    out = export_store(tmp_path / "s.zarr", tmp_path / "s.csv")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    assert list(rows[0])[:2] == ["x", "y"] and "train_loss" in rows[0] and "path_x" not in rows[0]
    for r in rows:
        i, j = list(ds.x.values).index(float(r["x"])), list(ds.y.values).index(float(r["y"]))
        expected = float(ds.train_loss.values[i, j])
        got = float(r["train_loss"])
        assert (np.isnan(got) and np.isnan(expected)) or got == expected
    line = xr.Dataset({"train_loss": ("x", [1.0, np.inf]), COMPLETED: ("x", [True, True])},
                      coords={"x": [0.0, 1.0]}, attrs={"kind": "interpolation"})
    line.to_zarr(tmp_path / "l.zarr", consolidated=False)
    text = export_store(tmp_path / "l.zarr", tmp_path / "l.csv").read_text().split()
    assert text == ["x,train_loss", "0.0,1.0", "1.0,inf"]


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "s.zarr")
    xr.Dataset({"train_loss": ("x", [1.0, 2.0])}, coords={"x": [0.0, 1.0]},
               attrs={"kind": "surface"}).to_zarr(tmp_path / "l.zarr", consolidated=False)
    cases = [(lambda: parse_format("vtp"), "vtu"), (lambda: parse_format("xyz"), "--format"),
             (lambda: export_store(tmp_path / "l.zarr", tmp_path / "l.stl"), "2D store"),
             (lambda: export_store(tmp_path / "s.zarr", tmp_path / "s.stl", metric="nope"), "no metric"),
             (lambda: export_store(tmp_path / "s.zarr", tmp_path / "s.stl", z_scale=0.0), "--z-scale"),
             (lambda: export_store(tmp_path / "s.zarr", tmp_path / "s.unknown"), "--format")]
    for call, fragment in cases:
        with pytest.raises(UserInputError, match=fragment) as info:
            call()
        assert "\n" not in str(info.value)
