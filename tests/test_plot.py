"""Static plots: NaN/inf masking, Li et al.-style levels, every 2D kind, 1D twin axes, shared scales in compare.

Figures are checked through their matplotlib artists (levels, norms, masked arrays), never through pixels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.contour import ContourSet

from lossatlas.errors import UserInputError
from lossatlas.store import COMPLETED, open_surface
from lossatlas.viz.compare import compare_figure, compare_stores
from lossatlas.viz.plot import Levels, PlotKind, figure_1d, figure_2d, masked, parse_kinds, plot_store, shared_scale
from tests.test_cli import run_cli
from tests.test_report import bowl, synthetic_store


def test_masked_hides_nan_inf_and_nonpositive_in_log() -> None:
    z = np.array([[1.0, np.nan], [np.inf, -np.inf], [0.0, 100.0]])
    m = masked(z)
    np.testing.assert_array_equal(m.mask, [[False, True], [True, True], [False, False]])
    np.testing.assert_allclose(m.compressed(), [1.0, 0.0, 100.0])
    ml = masked(z, log=True)
    np.testing.assert_array_equal(ml.mask, [[False, True], [True, True], [True, False]])
    np.testing.assert_allclose(ml.compressed(), [0.0, 2.0])


def test_li_style_levels() -> None:
    z = np.array([0.3, 2.0, np.nan, np.inf])
    np.testing.assert_allclose(Levels(0.1, 10, 0.5).values(z), np.arange(0.1, 10 + 1e-12, 0.5))
    np.testing.assert_allclose(Levels().values(z), np.linspace(0.3, 2.0, 30))  # finite range only
    np.testing.assert_allclose(Levels().values(z, log=True), np.linspace(np.log10(0.3), np.log10(2), 30))
    assert Levels().values(np.array([np.nan, np.inf])).size > 1  # nothing finite: still drawable
    for bad in [dict(vlevel=0.0), dict(vlevel=-1.0), dict(vmin=2.0, vmax=1.0)]:
        with pytest.raises(UserInputError) as info:
            Levels(**bad)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", list(PlotKind))
def test_every_kind_masks_nonfinite_points(tmp_path: Path, kind: PlotKind) -> None:
    ds = synthetic_store(tmp_path / "s.zarr")
    truth = bowl(*np.meshgrid(ds.x.values, ds.y.values))  # rows follow y
    bad = ~np.isfinite(ds["train_loss"].transpose("y", "x").values)
    fig = figure_2d(ds, "train_loss", kind, levels=Levels(1.0, 4.0, 0.25))
    ax = fig.axes[0]
    if kind == PlotKind.heatmap:
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        arr = mesh.get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(arr).reshape(bad.shape), bad)
        np.testing.assert_allclose(np.ma.filled(arr, np.nan).reshape(bad.shape)[~bad], truth[~bad])
        assert (mesh.norm.vmin, mesh.norm.vmax) == (1.0, 4.0)
    elif kind in (PlotKind.contour, PlotKind.contourf):
        cs = next(c for c in ax.collections if isinstance(c, ContourSet))
        np.testing.assert_allclose(cs.levels, np.arange(1.0, 4.0 + 1e-12, 0.25))
        # non-finite points are marked with crosses, exactly at their grid positions
        crosses = next(line for line in ax.get_lines() if line.get_label() == "non-finite")
        xx, yy = np.meshgrid(ds.x.values, ds.y.values)
        assert sorted(zip(crosses.get_xdata(), crosses.get_ydata(), strict=True)) == sorted(
            zip(xx[bad], yy[bad], strict=True))
    else:
        assert ax.get_zlim() == (1.0, 4.0)
    plt.close(fig)


def test_plot_store_writes_every_kind_for_losses_and_maps(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "s.zarr")
    paths = plot_store(tmp_path / "s.zarr", tmp_path / "png", log=True)
    names = sorted(p.name for p in paths)
    expected = sorted(f"s_{m}_{k.value}.png" for m in ("train_loss", "test_loss", "lambda_max", "lambda_min")
                      for k in PlotKind)
    assert names == expected and all(p.stat().st_size > 1000 for p in paths)
    only = plot_store(tmp_path / "s.zarr", tmp_path / "png2", metrics=["lambda_min"], kinds=[PlotKind.heatmap])
    assert [p.name for p in only] == ["s_lambda_min_heatmap.png"]
    with pytest.raises(UserInputError, match="no metric 'nope'"):
        plot_store(tmp_path / "s.zarr", tmp_path, metrics=["nope"])
    with pytest.raises(UserInputError, match="--kind must be one of"):
        parse_kinds(["contour", "wireframe"])


def test_one_d_twin_axes_with_stderr_band(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 9)
    loss = 1 + x**2
    loss[2] = np.inf
    ds = xr.Dataset({"train_loss": ("x", loss), "test_loss": ("x", loss + 1),
                     "train_loss_stderr": ("x", np.full(9, 0.2)), "train_accuracy": ("x", np.full(9, 0.25)),
                     COMPLETED: ("x", np.ones(9, bool))}, coords={"x": x}, attrs={"kind": "interpolation"})
    fig = figure_1d(ds)
    ax, ax2 = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train loss", "test loss"} and lines["test loss"].get_linestyle() == "--"
    y = np.ma.masked_invalid(lines["train loss"].get_ydata())
    assert np.ma.getmaskarray(lines["train loss"].get_ydata())[2]  # inf masked, not drawn
    np.testing.assert_allclose(y.compressed(), np.delete(1 + x**2, 2))
    assert len(ax.collections) == 1  # the 95% band: value ± 1.96 stderr
    band_y = np.concatenate([p.vertices[:, 1] for p in ax.collections[0].get_paths()])
    assert np.isclose(band_y.max() - (1 + 1.0**2), 1.959963984540054 * 0.2)
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), 25.0)
    assert ax2.get_ylim() == (0.0, 100.0) and ax.get_xlabel() == "α"
    plt.close(fig)


def test_compare_shares_one_colour_scale_and_identical_levels(tmp_path: Path) -> None:
    a = synthetic_store(tmp_path / "a.zarr", bad=False, extra=False)
    b = synthetic_store(tmp_path / "b.zarr", nx=5, ny=11, extra=False)  # other grid, NaN/inf points
    scaled = b.copy()
    scaled["train_loss"] = 3 * b["train_loss"]
    scaled.to_zarr(tmp_path / "c.zarr", mode="w", consolidated=False)
    stores = [tmp_path / f"{n}.zarr" for n in "abc"]
    for kind in (PlotKind.contourf, PlotKind.contour, PlotKind.heatmap):
        fig = compare_figure(stores, kind=kind)
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert len(panels) == 3
        artists = [next(c for c in ax.collections if isinstance(c, ContourSet | QuadMesh)) for ax in panels]
        pooled = np.concatenate([np.ravel(v) for v in (a.train_loss, b.train_loss, scaled.train_loss)])
        lo, hi = float(np.nanmin(pooled[np.isfinite(pooled)])), float(np.nanmax(pooled[np.isfinite(pooled)]))
        for art in artists:
            assert (art.norm.vmin, art.norm.vmax) == pytest.approx((lo, hi))
            assert art.norm.vmin == artists[0].norm.vmin and art.norm.vmax == artists[0].norm.vmax
            if isinstance(art, ContourSet):
                np.testing.assert_array_equal(art.levels, artists[0].levels)
        plt.close(fig)
    fig = compare_figure(stores, levels=Levels(1.0, 9.0, 0.5))
    for ax in fig.axes:
        for cs in (c for c in ax.collections if isinstance(c, ContourSet)):
            np.testing.assert_allclose(cs.levels, np.arange(1.0, 9.0 + 1e-12, 0.5))
    plt.close(fig)
    norm, lv = shared_scale([a.train_loss.values, 3 * a.train_loss.values])
    assert norm.vmax == pytest.approx(3 * float(a.train_loss.max())) and lv[-1] == norm.vmax
    [out] = compare_stores(stores, tmp_path / "cmp.png", kind=PlotKind.surface3d)
    assert out.stat().st_size > 1000


def test_compare_errors_are_one_line(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "a.zarr", extra=False)
    xr.Dataset({"train_loss": ("x", np.ones(3))}, coords={"x": np.arange(3.0)},
               attrs={"kind": "surface"}).to_zarr(tmp_path / "line.zarr", consolidated=False)
    with pytest.raises(UserInputError, match="one dimensionality"):
        compare_figure([tmp_path / "a.zarr", tmp_path / "line.zarr"])
    with pytest.raises(UserInputError, match="no metric 'lambda_min'"):
        compare_figure([tmp_path / "a.zarr"], metric="lambda_min")
    with pytest.raises(UserInputError, match=r"\.png"):
        compare_stores([tmp_path / "a.zarr"], tmp_path / "x.jpg")
    fig = compare_figure([tmp_path / "line.zarr", tmp_path / "line.zarr"])  # 1D stores overlay
    assert len(fig.axes[0].get_lines()) == 2
    plt.close(fig)


def _invoke(*args: str) -> tuple[int, str, str]:
    """Run a CLI command in-process (the subprocess path is exercised once, by ``report``)."""
    from typer.testing import CliRunner

    from lossatlas.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(args: tuple[str, ...], fragment: str) -> None:
    code, _, err = _invoke(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert fragment in lines[0], lines[0]


def test_cli_plot_compare_report_export(tmp_path: Path) -> None:
    a, b = str(tmp_path / "run" / "a.zarr"), str(tmp_path / "run" / "b.zarr")
    synthetic_store(Path(a))
    synthetic_store(Path(b), bad=False)
    code, out, err = _invoke("plot", a, "--out", str(tmp_path / "png"), "--kind", "heatmap",
                             "--metric", "train_loss", "--vmin", "1", "--vmax", "3", "--vlevel", "0.5")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "png" / "a_train_loss_heatmap.png")]
    code, out, err = _invoke("compare", a, b, "--out", str(tmp_path / "cmp.png"))
    assert code == 0 and (tmp_path / "cmp.png").exists(), err
    code, out, err = _invoke("export", a, "--format", "stl")
    assert code == 0 and out.strip() == str(tmp_path / "run" / "a.stl"), err
    proc = run_cli("report", str(tmp_path / "run"))
    assert proc.returncode == 0 and proc.stdout.startswith(f"wrote {tmp_path / 'run' / 'report.html'}")
    _one_line_error(("plot", a, "--kind", "wire"), "--kind")
    _one_line_error(("plot", a, "--vmin", "3", "--vmax", "1"), "--vmax")
    _one_line_error(("compare", a, "--kind", "pie"), "--kind")
    _one_line_error(("report", str(tmp_path / "nope")), "does not exist")
    _one_line_error(("export", a, "--format", "vtp"), "vtu")
    _one_line_error(("export", a, "--format", "xyz"), "--format")


def test_one_d_store_refuses_two_d_options_in_one_line(tmp_path: Path) -> None:
    xr.Dataset({"train_loss": ("x", 1 + np.linspace(-1, 1, 5) ** 2)}, coords={"x": np.linspace(-1, 1, 5)},
               attrs={"kind": "surface"}).to_zarr(tmp_path / "line.zarr", consolidated=False)
    with pytest.raises(UserInputError, match=r"--kind, --vmin only apply to 2D stores; 'line.zarr' is a 1D curve"):
        plot_store(tmp_path / "line.zarr", kinds=[PlotKind.heatmap], levels=Levels(vmin=0.5))
    with pytest.raises(UserInputError, match=r"^--levels only applies"):
        plot_store(tmp_path / "line.zarr", levels=Levels(scheme="li"))
    assert [p.name for p in plot_store(tmp_path / "line.zarr", log=True, fmt="svg")] == ["line_1d.svg"]
    _one_line_error(("plot", str(tmp_path / "line.zarr"), "--vlevel", "0.1"), "--vlevel only applies to 2D stores")


def test_formats_png_pdf_svg(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "s.zarr", extra=False)
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
    for fmt, head in magic.items():
        [path] = plot_store(tmp_path / "s.zarr", tmp_path / fmt, metrics=["train_loss"], kinds=[PlotKind.contour],
                            fmt=fmt)
        assert path.name == f"s_train_loss_contour.{fmt}" and path.read_bytes().startswith(head)
    with pytest.raises(UserInputError, match="--format must be one of png, pdf, svg"):
        plot_store(tmp_path / "s.zarr", fmt="jpg")


def test_level_presets_li_linear_log() -> None:
    z = np.array([1e-4, 1e-2, 1.0, 3.0])  # a sharp minimum: the values span 30,000×
    np.testing.assert_allclose(Levels(scheme="li").values(z), np.arange(0.1, 10 + 1e-12, 0.5))  # Li et al.
    np.testing.assert_allclose(Levels(scheme="li", vmin=1, vlevel=1).values(z), np.arange(1.0, 10.5, 1.0))
    np.testing.assert_allclose(Levels(scheme="linear").values(z), np.linspace(1e-4, 3.0, 30))
    np.testing.assert_allclose(Levels(scheme="log").values(z), np.geomspace(1e-4, 3.0, 30))
    np.testing.assert_allclose(Levels().values(z), np.geomspace(1e-4, 3.0, 30))  # auto: log for a wide range
    np.testing.assert_allclose(Levels().values(np.array([1.0, 3.0])), np.linspace(1.0, 3.0, 30))  # narrow: linear
    norm, _ = shared_scale([z])
    assert isinstance(norm, LogNorm) and (norm.vmin, norm.vmax) == (1e-4, 3.0)  # colours follow the levels
    # 30 linear levels leave one ring around a sharp minimum; log-spaced levels put half of them below 0.02
    assert (Levels(scheme="linear").values(z) < 0.02).sum() == 1 and (Levels().values(z) < 0.02).sum() >= 15
    with pytest.raises(UserInputError, match=r"--levels must be one of auto\|linear\|log\|li, got 'many'"):
        Levels(scheme="many")


def test_two_d_ticks_do_not_run_together(tmp_path: Path) -> None:
    ds = synthetic_store(tmp_path / "s.zarr", nx=51, ny=7, extra=False)
    ds = ds.assign_coords(x=np.linspace(-0.97, 1.03, 51))  # awkward bounds invite many long tick labels
    for kind in PlotKind:
        fig = figure_2d(ds, "train_loss", kind)
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = sorted(ax.get_xlim())
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert 2 <= len(ticks) <= 6, (kind, ticks)
        assert all(abs(t * 4 - round(t * 4)) < 1e-9 for t in ticks), ticks  # round steps (0.25, 0.5, 1)
        plt.close(fig)


def test_log_colour_bars_read_in_loss_units(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "a.zarr", bad=False, extra=False)
    ds = synthetic_store(tmp_path / "b.zarr", bad=False, extra=False)
    ds.assign(train_loss=ds.train_loss ** 8).to_zarr(tmp_path / "c.zarr", mode="w", consolidated=False)  # 1 … 1526
    fig = compare_figure([tmp_path / "a.zarr", tmp_path / "c.zarr"], log=True)
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert labels == ["1", "10", "100", "1e+03"]  # values of the loss, at log10 positions 0..3
    np.testing.assert_allclose(bar.get_yticks(), [0, 1, 2, 3])
    assert "train_loss (log scale)" == bar.get_ylabel()
    assert fig.get_suptitle() == "train_loss: shared colour scale 1 to 1526, 30 log-spaced levels"
    plt.close(fig)
    # without --log the auto levels are log-spaced (LogNorm) for this range: the same ticks, in value space
    fig = compare_figure([tmp_path / "a.zarr", tmp_path / "c.zarr"])
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert [t.get_text() for t in bar.get_yticklabels()] == ["1", "10", "100", "1e+03"]
    np.testing.assert_allclose(bar.get_yticks(), [1, 10, 100, 1000])
    plt.close(fig)
    fig = figure_2d(open_surface(tmp_path / "c.zarr"), "train_loss", PlotKind.contour, log=True)
    texts = [t.get_text() for t in fig.axes[0].texts]  # contour labels in loss units too
    assert texts and all(float(t) >= 1 for t in texts)
    plt.close(fig)


def test_compare_titles_name_the_settings_that_differ(tmp_path: Path) -> None:
    ckpt = "run/checkpoints/epoch_0004.safetensors"
    synthetic_store(tmp_path / "eval.zarr", extra=False, bn="eval", checkpoint=ckpt)
    synthetic_store(tmp_path / "rec.zarr", extra=False, bn="recompute", checkpoint=ckpt)
    synthetic_store(tmp_path / "init.zarr", extra=False, bn="eval", checkpoint="run/checkpoints/epoch_0000.safetensors")
    fig = compare_figure([tmp_path / f"{n}.zarr" for n in ("eval", "rec", "init")])
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert titles == ["eval\ncheckpoint=epoch_0004.safetensors, bn=eval",
                      "rec\ncheckpoint=epoch_0004.safetensors, bn=recompute",
                      "init\ncheckpoint=epoch_0000.safetensors, bn=eval"]
    plt.close(fig)
    with pytest.raises(UserInputError, match=r"has no metric 'loss'; it has train_loss, train_accuracy, test_loss"):
        compare_figure([tmp_path / "eval.zarr"], metric="loss")
    # --kind repeatable (and comma-separated) as in plot: one file per kind
    code, out, err = _invoke("compare", str(tmp_path / "eval.zarr"), str(tmp_path / "rec.zarr"), "--kind",
                             "contour", "--kind", "heatmap", "--out", str(tmp_path / "cmp.pdf"))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "cmp_contour.pdf"), str(tmp_path / "cmp_heatmap.pdf")]
    assert all((tmp_path / f"cmp_{k}.pdf").read_bytes().startswith(b"%PDF") for k in ("contour", "heatmap"))


def test_subset_plots_say_so_and_clip_their_bands(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 9)
    loss, acc = 0.01 + x**2, np.full(9, 0.99)
    ds = xr.Dataset({"train_loss": ("x", loss), "train_loss_stderr": ("x", np.full(9, 0.1)),
                     "train_accuracy": ("x", acc), "train_accuracy_stderr": ("x", np.full(9, 0.02))},
                    coords={"x": x}, attrs={"kind": "surface", "model": "cnn", "subset": 0.1, "subset_seed": 0})
    fig = figure_1d(ds)
    ax, ax2 = fig.axes
    assert ax.get_title() == "cnn [subset 10%]"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train loss", "train loss 95% interval", "train accuracy", "train accuracy 95% interval"]
    loss_band = np.concatenate([p.vertices[:, 1] for p in ax.collections[0].get_paths()])
    acc_band = np.concatenate([p.vertices[:, 1] for p in ax2.collections[0].get_paths()])
    assert loss_band.min() == 0.0 and np.isclose(loss_band.max(), loss.max() + 1.959963984540054 * 0.1)
    assert acc_band.max() == 100.0 and np.isclose(acc_band.min(), 100 * (0.99 - 1.959963984540054 * 0.02))
    plt.close(fig)
    fig = figure_1d(ds, log=True)  # on a log axis the band stops at half the smallest loss, not at 0
    band = np.concatenate([p.vertices[:, 1] for p in fig.axes[0].collections[0].get_paths()])
    assert np.isclose(band.min(), 0.01 / 2)
    plt.close(fig)
    two_d = synthetic_store(tmp_path / "s.zarr", extra=False, subset=500, weights="untrained initialisation")
    fig = figure_2d(two_d, "train_loss", PlotKind.heatmap)
    assert fig.axes[0].get_title() == "train_loss [subset n=500, untrained weights]"
    plt.close(fig)


def test_plot_surface_is_oriented_like_the_cli_plots(tmp_path: Path) -> None:
    """x to the right, y up, whatever the Dataset's dim order (xarray's own .plot() puts the first dim on y)."""
    import lossatlas as la

    ds = synthetic_store(tmp_path / "s.zarr", nx=9, ny=5, bad=False, extra=False)
    for data in (ds, ds.transpose("y", "x")):
        fig = la.plot_surface(data, kind="heatmap")
        ax = fig.axes[0]
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        assert mesh.get_array().shape == (5, 9)  # rows follow y, columns follow x
        np.testing.assert_allclose(mesh.get_array().reshape(5, 9), ds.train_loss.transpose("y", "x").values)
        assert ax.get_xlim()[0] < -0.9 and ax.get_xlim()[1] > 0.9 and ax.get_ylim()[1] < 0.7  # x spans ±1, y ±0.5
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
        plt.close(fig)
    line = la.plot_surface(ds.isel(y=2).drop_vars("y"))
    assert line.axes[0].get_xlabel() == "x"
    plt.close(line)


def test_compare_knows_reused_directions_span_the_same_plane(tmp_path: Path) -> None:
    """A store made with ``directions=a.zarr`` records directions "given:…", its source "random": one plane."""
    from lossatlas.directions import DirectionSpec
    from lossatlas.landscape import surface
    from tests.conftest import make_classification, mlp

    data = make_classification()
    a = surface(mlp(), data, x="-1:1:3", y="-1:1:3", out=tmp_path / "a.zarr")
    b = surface(mlp(seed=1), data, x="-1:1:3", y="-1:1:3", directions=tmp_path / "a.zarr", out=tmp_path / "b.zarr")
    surface(mlp(), data, x="-1:1:3", y="-1:1:3", directions=DirectionSpec(seed=4), out=tmp_path / "c.zarr")
    fig = compare_figure([tmp_path / f"{n}.zarr" for n in "abc"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    sha_a, sha_b = a.attrs["checkpoint_sha256"][:8], b.attrs["checkpoint_sha256"][:8]
    assert titles == [f"a\nsha256={sha_a}, directions=plane 1", f"b\nsha256={sha_b}, directions=plane 1",
                      f"c\nsha256={sha_a}, directions=plane 2"]  # seed 0 vs 4 is what makes plane 2: not repeated
    plt.close(fig)
