"""Convexity maps (Li et al. 2018, Fig. 7) on losses with known Hessians, resume, Hessian directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from lossatlas.curvature.maps import CONVEXITY_METRICS, ConvexitySpec, convexity_ratio
from lossatlas.data import Dataset
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.landscape import surface
from lossatlas.store import COMPLETED, load_directions
from lossatlas.testing.reference import QuadraticBowl
from lossatlas.viz.plot import plot_store

LOSS = EvalSpec(loss="lossatlas.testing.reference:output_loss", batch_size=4)
EIGENVALUES = torch.tensor([3.0, -1.0, 0.5, 0.25], dtype=torch.float64)


def bowl_data() -> Dataset:
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    return Dataset(name="dummy", x_train=x, y_train=torch.zeros(7, 1), x_test=None, y_test=None,
                   task="regression", num_classes=None)


def rotated(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T


def unit_directions(n: int) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.eye(n, dtype=torch.float64)[i]} for i in (0, 1)]


def test_quadratic_loss_has_its_eigenvalues_at_every_grid_point(tmp_path) -> None:
    bowl = QuadraticBowl(rotated(EIGENVALUES), w0=torch.tensor([0.3, -0.2, 0.1, 0.0]))
    ds = surface(bowl, bowl_data(), x="-1:1:3", y="-1:1:4", directions=unit_directions(4), eval_spec=LOSS,
                 out=tmp_path / "q.zarr", hessian=True)
    assert set(CONVEXITY_METRICS) <= set(ds.data_vars) and ds["lambda_max"].shape == (3, 4)
    np.testing.assert_allclose(ds["lambda_max"].values, 3.0, rtol=1e-3)
    np.testing.assert_allclose(ds["lambda_min"].values, -1.0, rtol=1e-3)
    np.testing.assert_allclose(ds["convexity_ratio"].values, 1 / 3, rtol=3e-3)
    assert bool((ds["hessian_converged"] == 1).all()) and "tol=0.001" in ds.attrs["hessian"]
    # the loss itself is the closed form ½ wᵀAw
    w = torch.tensor([0.3 + 1.0, -0.2 + 1.0, 0.1, 0.0], dtype=torch.float64)
    assert float(ds["train_loss"].sel(x=1.0, y=1.0)) == pytest.approx(float(0.5 * w @ bowl.a @ w), rel=1e-6)


def test_quartic_loss_matches_the_closed_form_hessian_point_by_point(tmp_path) -> None:
    """L = ½wᵀAw + Σw⁴/12: H(w) = A + diag(w²) changes across the grid; λ's match eigvalsh at each point."""
    a = rotated(torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64), seed=1)
    bowl = QuadraticBowl(a, w0=torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64), quartic=1.0)
    ds = surface(bowl, bowl_data(), x="-2:2:5", y="-1:1:3", directions=unit_directions(3), eval_spec=LOSS,
                 out=tmp_path / "q.zarr", hessian=ConvexitySpec(tol=1e-9))
    for i, x in enumerate(ds["x"].values):
        for j, y in enumerate(ds["y"].values):
            point = torch.tensor([0.1 + x, 0.2 + y, -0.3], dtype=torch.float64)
            eig = torch.linalg.eigvalsh(bowl.hessian(point))
            assert float(ds["lambda_max"][i, j]) == pytest.approx(float(eig[-1]), rel=1e-7)
            assert float(ds["lambda_min"][i, j]) == pytest.approx(float(eig[0]), rel=1e-7, abs=1e-9)
            assert float(ds["convexity_ratio"][i, j]) == pytest.approx(abs(float(eig[0] / eig[-1])), rel=1e-6)
    assert float(ds["lambda_min"].max()) > 0 > float(ds["lambda_min"].min())  # convex far out, not near 0


def test_convexity_map_resumes_to_identical_numbers(tmp_path) -> None:
    bowl = QuadraticBowl(rotated(EIGENVALUES), quartic=0.5)
    kwargs = dict(x="-1:1:4", y="-1:1:3", directions=unit_directions(4), eval_spec=LOSS, hessian=True)
    full = surface(bowl, bowl_data(), out=tmp_path / "full.zarr", **kwargs)
    out = tmp_path / "s.zarr"
    surface(bowl, bowl_data(), out=out, **kwargs)
    poisoned = xr.Dataset({v: (("x", "y"), np.full((2, 3), 123.0)) for v in full.data_vars if v != COMPLETED})
    poisoned[COMPLETED] = (("x", "y"), np.zeros((2, 3), bool))
    poisoned.to_zarr(out, region={"x": slice(1, 3)}, consolidated=False)
    resumed = surface(bowl, bowl_data(), out=out, **kwargs)
    for v in full.data_vars:
        np.testing.assert_array_equal(resumed[v].values, full[v].values)


def test_hessian_directions_are_the_top_eigenvectors(tmp_path) -> None:
    a = rotated(EIGENVALUES, seed=3)
    bowl = QuadraticBowl(a)
    ds = surface(bowl, bowl_data(), x="-1:1:3", y="-1:1:3", directions="hessian", eval_spec=LOSS,
                 out=tmp_path / "h.zarr")
    assert ds.attrs["directions"] == "hessian"
    np.testing.assert_allclose(ds.attrs["hessian_eigenvalues"], [3.0, 0.5], rtol=1e-6)
    _, vecs = torch.linalg.eigh(a)
    dirs = load_directions(tmp_path / "h.zarr")
    for d, expected in zip(dirs, (vecs[:, -1], vecs[:, -2]), strict=True):
        assert abs(float(d["w"].double() @ expected)) == pytest.approx(1.0, abs=1e-6)
    # along the top eigenvector the loss is ½ λ α²
    np.testing.assert_allclose(ds["train_loss"].sel(y=0.0).values, 0.5 * 3.0 * ds["x"].values ** 2, rtol=1e-6)
    with pytest.raises(UserInputError, match="--directions must be random, hessian"):
        surface(bowl, bowl_data(), x="-1:1:3", directions="pca", eval_spec=LOSS, out=tmp_path / "p.zarr")


def test_one_d_map_and_plot(tmp_path) -> None:
    bowl = QuadraticBowl(rotated(EIGENVALUES), quartic=1.0)
    ds = surface(bowl, bowl_data(), x="-1:1:5", directions=unit_directions(4)[:1], eval_spec=LOSS,
                 out=tmp_path / "c.zarr", hessian=True)
    assert ds["lambda_max"].dims == ("x",)
    for i, x in enumerate(ds["x"].values):  # H(w) = A + diag(w²) at w = θ + x·e₀
        w = torch.tensor([x, 0.0, 0.0, 0.0], dtype=torch.float64)
        eig = torch.linalg.eigvalsh(bowl.hessian(w))
        assert float(ds["lambda_max"][i]) == pytest.approx(float(eig[-1]), rel=1e-3)
        assert float(ds["lambda_min"][i]) == pytest.approx(float(eig[0]), rel=1e-3)
    paths = plot_store(tmp_path / "c.zarr")
    assert any(p.name == "c_convexity.png" and p.stat().st_size > 0 for p in paths)
    from lossatlas.viz.convexity import figure_convexity

    fig = figure_convexity(ds)  # the drawn curves are the stored values; products drawn as integer bars
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines if not line.get_label().startswith("_")}
    np.testing.assert_array_equal(lines["λmax"], ds["lambda_max"].values)
    np.testing.assert_array_equal(lines["λmin"], ds["lambda_min"].values)
    heights = [p.get_height() for p in fig.axes[2].patches]
    np.testing.assert_array_equal(heights, ds["hessian_matvecs"].values)


def test_convexity_ratio_edge_cases() -> None:
    assert convexity_ratio(-1.0, 4.0) == 0.25
    assert np.isnan(convexity_ratio(0.0, 0.0)) and np.isinf(convexity_ratio(-1.0, 0.0))
    with pytest.raises(UserInputError, match="--tol must be positive"):
        ConvexitySpec(tol=0.0)


@pytest.fixture(scope="module")
def half_failed(tmp_path_factory) -> tuple:
    """A 4 × 3 convexity map whose cold-started point of each row misses the certificate within 14 products,
    while its warm-started neighbours meet it: 4 unconverged points of 12."""
    lam = torch.cat([torch.linspace(-1, 1, 28) ** 3, torch.tensor([3.0, -2.0])]).double()
    bowl = QuadraticBowl(rotated(lam, seed=4), w0=torch.zeros(30, dtype=torch.float64), quartic=2.0)
    out = tmp_path_factory.mktemp("maps") / "u.zarr"
    ds = surface(bowl, bowl_data(), x="-1:1:4", y="-1:1:3", directions=unit_directions(30), eval_spec=LOSS, out=out,
                 hessian=ConvexitySpec(tol=1e-8, max_matvecs=14))
    return out, ds


def test_unconverged_points_are_counted_in_attrs_and_the_summary(half_failed, capsys) -> None:
    from lossatlas.cli.common import summary
    from lossatlas.store import open_surface

    out, ds = half_failed
    failed = ds["hessian_converged"].values == 0
    assert failed[:, 0].all() and not failed[:, 1:].any()  # the cold starts (y = -1 at every x), and only them
    assert ds.attrs["hessian_unconverged"] == 4 and open_surface(out).attrs["hessian_unconverged"] == 4
    np.testing.assert_array_equal(ds["hessian_matvecs"].values[failed], 14)
    summary(ds, out)
    assert "convexity map: 4 of 12 points unconverged" in capsys.readouterr().out


def test_static_convexity_figure_marks_unconverged_points_and_draws_counts_as_discrete_data(half_failed) -> None:
    from matplotlib.colors import BoundaryNorm
    from matplotlib.patches import Rectangle

    from lossatlas.viz.convexity import HATCH, figure_convexity
    from lossatlas.viz.plot import default_metrics

    _, ds = half_failed
    fig = figure_convexity(ds)
    lam_max, lam_min, ratio, flag, counts = fig.axes[:5]  # the panels come first, their colour bars after
    for ax in (lam_max, lam_min, ratio, flag, counts):
        hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch() == HATCH]
        assert len(hatched) == 4, ax.get_title()
        # the cold starts: y = -1 (the first point of each unit, a row of y per x), at every x
        centres = {(round(p.get_x() + p.get_width() / 2, 6), round(p.get_y() + p.get_height() / 2, 6)) for p in hatched}
        assert centres == {(round(float(x), 6), -1.0) for x in ds["x"].values}
    for ax in (lam_max, lam_min, ratio):
        z = ax.collections[0].get_array()
        assert int(np.ma.getmaskarray(z).sum()) == 4  # masked, not drawn as eigenvalues
    for ax in (flag, counts):
        assert isinstance(ax.collections[0].norm, BoundaryNorm)
    bar_ticks = {t.get_text() for a in fig.axes[6:] for t in a.get_yticklabels()}
    assert {"no", "yes", "13", "14"} <= bar_ticks
    assert {"hessian_converged", "hessian_matvecs"}.isdisjoint(default_metrics(ds))


def test_report_section_marks_unconverged_points(half_failed) -> None:
    from lossatlas.viz.report.sections.convexity import convexity_section, discrete_scale
    from lossatlas.viz.report.sections.surface import surface_section

    out, ds = half_failed
    section = convexity_section(out, ds)
    assert "4 of 12" in section.html
    titles = [f.layout.title.text for f in section.figures]
    assert titles[-2:] == ["λmin, λmax certified (hessian_converged)", "Hessian-vector products per point "
                                                                        "(hessian_matvecs)"]
    for fig in section.figures[:3]:
        heat, marks = fig.data
        assert int(np.isnan(np.asarray(heat.z, dtype=float)).sum()) == 4 and len(marks.x) == 4
    counts = section.figures[-1].data[0]
    assert list(counts.colorbar.tickvals) == [13, 14] and counts.zmin == 12.5 and counts.zmax == 14.5
    assert list(section.figures[-2].data[0].colorbar.ticktext) == ["no", "yes"]
    scale, lo, hi, ticks = discrete_scale(np.array([3.0, 5, 5, 300, np.nan]))
    assert ticks == [3, 5, 300] and (lo, hi) == (2.5, 300.5) and scale[1][1] == scale[0][1]  # flat per value
    surface_titles = [f.layout.title.text for f in surface_section(out, ds).figures]
    assert not any("hessian" in str(t) for t in surface_titles)
