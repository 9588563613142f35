"""Report sections of the path results: one section per store kind, figures carrying the stored numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from lossatlas.paths.align import align_checkpoint
from lossatlas.paths.curves import CurveSpec, train_curve
from lossatlas.paths.string import StringSpec, string_sampling
from lossatlas.paths.topology import topology_of_store
from lossatlas.viz.report import build_report
from lossatlas.viz.report.builder import collect_sections
from tests.conftest import make_classification, mlp
from tests.paths_toys import Ring, zeros


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("paths-report")
    data = make_classification()
    a, b = mlp(seed=0), mlp(seed=1)
    train_curve(a, b, data, CurveSpec(epochs=1, points=5), out=run / "curve", provenance={"model": "<b>m</b>"})
    align_checkpoint(a, b, data, out=run / "b_aligned.safetensors", points=5)
    ring_b = Ring((math.cos(2 * math.pi / 3), math.sin(2 * math.pi / 3)))
    string_sampling(Ring(), ring_b, zeros(8, 1), StringSpec(threshold=0.3, momentum=0.0, batch_size=8),
                    out=run / "string", loss="mse")
    x = np.linspace(-1.5, 1.5, 21)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    surface = xr.Dataset({"train_loss": (("x", "y"), (xx ** 2 + yy ** 2 - 1) ** 2)}, coords={"x": x, "y": x},
                         attrs={"kind": "surface", "config_hash": "0"})
    surface.to_zarr(run / "ring.zarr", consolidated=False)
    topology_of_store(run / "ring.zarr", png=False)
    return run


def test_one_section_per_path_result_with_the_stored_numbers(run_dir, tmp_path) -> None:
    sections, _, problems = collect_sections(run_dir, strict=True)
    assert not problems
    by_title = {s.title.split(":")[0]: s for s in sections}
    assert {"Mode-connecting curve", "String sampling", "Weight alignment", "Sublevel-set topology"} <= set(by_title)
    curve = xr.open_zarr(run_dir / "curve" / "curve.zarr", consolidated=False).load()
    trace = next(t for t in by_title["Mode-connecting curve"].figures[0].data if t.name == "curve, train")
    np.testing.assert_array_equal(trace.y, curve["curve_train_loss"].values)
    string = xr.open_zarr(run_dir / "string" / "string.zarr", consolidated=False).load()
    beads = next(t for t in by_title["String sampling"].figures[0].data if t.name == "beads")
    np.testing.assert_allclose(beads.x, string.attrs["bead_s"])
    topo = by_title["Sublevel-set topology"]
    assert len(topo.figures) == 3  # N_λ, diagram, contour with minima and saddles
    np.testing.assert_array_equal(topo.figures[0].data[0].y, xr.open_zarr(
        run_dir / "ring.topology.zarr", consolidated=False)["components"].values)
    page = build_report(run_dir, tmp_path / "r.html").path.read_text()
    assert "<b>m</b>" not in page and "&lt;b&gt;m&lt;/b&gt;" in page
