"""Export a stored surface for ParaView, mesh viewers and 3D printing (meshio writes the files).

Mesh formats (``vtu``, ``obj``, ``stl``, ``ply``) hold the 2D grid as a triangulated height field: one
point (x, y, z) per finite grid point with z = the chosen metric (times ``z_scale``; log10 with
``log``), two triangles per grid cell. Non-finite points (NaN/inf losses of diverged points) are DROPPED,
together with every triangle that touches them, so the mesh has a hole there instead of a spike; a
fully finite N×M grid therefore has exactly N·M points and 2(N−1)(M−1) triangles. ``vtu`` also carries
every metric and the grid indices ``i`` (along x) and ``j`` (along y) as point data.

``csv`` works for 1D and 2D stores: one row per grid point with columns ``x`` (, ``y``) and one column
per metric (non-finite values written as ``nan``, ``inf``).

VTK PolyData (``.vtp``) is not offered: meshio, the maintained mesh library used here, reads and writes
the XML UnstructuredGrid ``.vtu`` instead, which ParaView opens the same way.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.store import COMPLETED, open_surface


class ExportFormat(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Files ``lossatlas export`` writes."""

    vtu = "vtu"
    """VTK XML unstructured grid (ParaView), with every metric as point data."""
    obj = "obj"
    """Wavefront OBJ (Blender, MeshLab)."""
    stl = "stl"
    """Binary STL (3D printing slicers)."""
    ply = "ply"
    """Stanford PLY (MeshLab)."""
    csv = "csv"
    """One row per grid point: x, y and one column per metric."""


_MESHIO_NAMES = {ExportFormat.vtu: "vtu", ExportFormat.obj: "obj", ExportFormat.stl: "stl",
                 ExportFormat.ply: "ply"}


def parse_format(text: str | ExportFormat) -> ExportFormat:
    """``"stl"`` → :class:`ExportFormat`; a one-line error for anything else (``vtp`` explained)."""
    if isinstance(text, ExportFormat):
        return text
    name = str(text).lower().lstrip(".")
    if name == "vtp":
        raise UserInputError("--format vtp (VTK PolyData) is not written by meshio; use --format vtu, "
                             "which ParaView opens the same way")
    try:
        return ExportFormat(name)
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise UserInputError(f"--format must be one of {choices}, got '{text}'") from None


def metrics_of(ds: xr.Dataset) -> list[str]:
    """Float variables on the store's grid (``completed`` excluded)."""
    grid = {"x", "y"} if "y" in ds.dims else {"x"}
    return [str(n) for n, v in ds.data_vars.items()
            if n != COMPLETED and v.dtype.kind == "f" and set(v.dims) == grid]


def height_field(ds: xr.Dataset, metric: str = "train_loss", z_scale: float = 1.0,
                 log: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Triangulated surface of a 2D store.

    Returns:
        points ``(P, 3)`` float64 (x, y, z) of the P finite grid points (ordered x-major: index i·M + j
        before dropping), triangles ``(T, 3)`` int64 indices into ``points``, and point data
        ``{name: (P,)}`` (every metric plus the grid indices ``i``, ``j``).
    """
    if "y" not in ds.dims:
        raise UserInputError("mesh formats need a 2D store (x and y); export a 1D store with --format csv")
    if metric not in ds:
        raise UserInputError(f"the store has no metric '{metric}'; it has {', '.join(metrics_of(ds))}")
    if not np.isfinite(z_scale) or z_scale == 0:
        raise UserInputError(f"--z-scale must be a finite non-zero number, got {z_scale}")
    z = np.asarray(ds[metric].transpose("x", "y").values, dtype=np.float64)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
    n, m = z.shape
    xs, ys = ds["x"].values, ds["y"].values
    ii, jj = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    valid = np.isfinite(z).ravel()
    # triangles of the full grid on flat indices k = i*m + j: two per cell
    a = (ii[:-1, :-1] * m + jj[:-1, :-1]).ravel()
    b, c, d = a + m, a + m + 1, a + 1
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    tris = tris[valid[tris].all(axis=1)]
    new_index = np.cumsum(valid) - 1
    points = np.stack([xs[ii].ravel(), ys[jj].ravel(), z.ravel() * z_scale], axis=1)[valid]
    data = {name: np.asarray(ds[name].transpose("x", "y").values, dtype=np.float64).ravel()[valid]
            for name in metrics_of(ds)}
    data.update(i=ii.ravel()[valid].astype(np.float64), j=jj.ravel()[valid].astype(np.float64))
    return points, new_index[tris].astype(np.int64), data


def export_store(store: str | Path, out: str | Path, fmt: str | ExportFormat | None = None,
                 metric: str = "train_loss", z_scale: float = 1.0, log: bool = False) -> Path:
    """Write ``store`` to ``out`` as ``fmt`` (default: from ``out``'s suffix); returns ``out``."""
    out = Path(out)
    fmt = parse_format(fmt if fmt is not None else (out.suffix or "?"))
    ds = open_surface(store)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == ExportFormat.csv:
        dims = ["x", "y"] if "y" in ds.dims else ["x"]
        frame = ds[metrics_of(ds)].to_dataframe().reset_index()
        frame = frame[dims + [c for c in frame.columns if c not in dims]]
        frame.to_csv(out, index=False, na_rep="nan")
        return out
    import meshio

    points, tris, data = height_field(ds, metric, z_scale, log)
    if fmt == ExportFormat.vtu:
        mesh = meshio.Mesh(points, [("triangle", tris)], point_data=data)
    else:  # obj/stl/ply: geometry only (these writers do not carry named point data portably)
        mesh = meshio.Mesh(points, [("triangle", tris)])
    if fmt == ExportFormat.ply:  # PLY has no 64-bit integers
        mesh.cells[0].data = mesh.cells[0].data.astype(np.int32)
    kwargs = {"binary": True} if fmt == ExportFormat.stl else {}
    meshio.write(out, mesh, file_format=_MESHIO_NAMES[fmt], **kwargs)
    return out
