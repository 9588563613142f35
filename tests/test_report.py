"""The HTML report: registry dispatch, generic variables, NaN masking, provenance, escaping, self-containment.

Figures are checked as plotly objects against the numbers in the store (an exact quadratic bowl), not as
pixels; the browser itself is exercised in ``test_browser.py``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from lossatlas.landscape import interpolate, surface
from lossatlas.store import COMPLETED
from lossatlas.training import TrainSpec, train
from lossatlas.viz.report import Section, build_report, register
from lossatlas.viz.report import registry as reg
from lossatlas.viz.report.builder import collect_sections, scan_run_dir
from tests.conftest import make_classification, mlp

XSS_MODEL = "<script>window.__xss = 1; alert(1)</script>"
XSS_DATA = '"><img src=x onerror="window.__xss = 2">'


def bowl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The exact surface used by synthetic stores: L(x, y) = 1 + x² + 2 y²."""
    return 1.0 + x**2 + 2.0 * y**2


def synthetic_store(path: Path, nx: int = 9, ny: int = 7, bad: bool = True, extra: bool = True,
                    **attrs: Any) -> xr.Dataset:
    """A 2D ``surface`` store of the bowl with NaN/inf points, convexity maps, stderr and a path."""
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 0.5, ny)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    loss = bowl(xx, yy)
    if bad:
        loss[0, 0], loss[-1, -1], loss[2, 3] = np.nan, np.inf, -np.inf
    data: dict[str, Any] = {"train_loss": (("x", "y"), loss), "test_loss": (("x", "y"), loss + 0.5),
                            "train_accuracy": (("x", "y"), 1.0 / (1.0 + loss)),
                            COMPLETED: (("x", "y"), np.ones((nx, ny), bool))}
    if extra:
        data["lambda_min"] = (("x", "y"), xx - 0.2)
        data["lambda_max"] = (("x", "y"), 4.0 + 0 * xx)
        data["train_loss_stderr"] = (("x", "y"), 0.01 + 0.001 * np.abs(xx))
        data["path_x"] = ("step", np.linspace(-0.8, 0.0, 5))
        data["path_y"] = ("step", np.linspace(0.4, 0.0, 5))
    base = {"kind": "surface", "model": "bowl", "data": "exact", "seed": 7, "norm": "filter",
            "config_hash": "0123456789abcdef", "nonfinite_points": 3 if bad else 0}
    ds = xr.Dataset(data, coords={"x": x, "y": y}, attrs={**base, **attrs})
    ds.to_zarr(path, mode="w", consolidated=False)
    return ds


def make_run_dir(root: Path, xss: bool = True) -> Path:
    """A demo-shaped run directory in a few seconds: training log, 2D surface, 1D curve, interpolation."""
    data = make_classification()
    run = root / "run"
    train(mlp(), data, TrainSpec(epochs=2, batch_size=32, lr=0.05, seed=3), run / "train",
          provenance={"model": "tiny-mlp", "data": "blobs"})
    prov = {"model": XSS_MODEL if xss else "tiny-mlp", "data": XSS_DATA if xss else "blobs",
            "notes": "<b>bold?</b> & 'quotes'"}
    surface(mlp(), data, x="-1:1:7", y="-1:1:6", out=run / "surface.zarr", provenance=prov)
    surface(mlp(), data, x="-1:1:9", out=run / "curves" / "line.zarr", provenance={"model": "tiny-mlp"})
    interpolate(mlp(seed=0), mlp(seed=1), data, x="-0.5:1.5:9", out=run / "interpolation.zarr",
                provenance={"model": "tiny-mlp", "data": "blobs", "seed": 0})
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("report"))


def test_scan_finds_every_store_and_the_training_log(run_dir: Path) -> None:
    stores, files = scan_run_dir(run_dir)
    assert [s.relative_to(run_dir).as_posix() for s in stores] == [
        "curves/line.zarr", "interpolation.zarr", "surface.zarr"]
    assert [f.relative_to(run_dir).as_posix() for f in files] == ["train/metrics.csv"]


def test_report_has_a_section_per_result_in_registry_order(run_dir: Path, tmp_path: Path) -> None:
    result = build_report(run_dir, tmp_path / "r.html", strict=True)
    assert result.problems == ()
    sections, _, _ = collect_sections(run_dir, strict=True)
    titles = [s.title for s in sections]
    assert titles == ["1D loss curve: line.zarr", "2D loss surface: surface.zarr",
                      "Interpolation: interpolation.zarr", "Training: train"]
    # 2D: 3D surface + one contour per metric (train/test loss and accuracy); 1D curves: one figure each;
    # training: loss/accuracy, weight norms, weight histograms
    n_metrics = 4
    assert [len(s.figures) for s in sections] == [1, 1 + n_metrics, 1, 3]
    assert result.figures == sum(len(s.figures) for s in sections)
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="plotly-graph-div"') == result.figures
    for i in range(result.figures):
        assert f'id="fig-{i}"' in page


def test_report_is_self_contained(run_dir: Path, tmp_path: Path) -> None:
    page = build_report(run_dir, tmp_path / "r.html").path.read_text()
    assert page.count("<script") == 1 + page.count('class="plotly-graph-div"')  # plotly.js once + one per figure
    assert not re.search(r"<script[^>]*\ssrc=", page) and "<link" not in page
    assert "cdn.plot.ly" not in page.split("<body>", 1)[1]
    assert "default-src 'none'" in page  # CSP: the page may not load anything


def test_escaping_of_user_strings(run_dir: Path, tmp_path: Path) -> None:
    page = build_report(run_dir, tmp_path / "r.html").path.read_text()
    assert "<script>window.__xss" not in page and "<img src=x" not in page
    assert html.escape(XSS_MODEL) in page  # shown as text in the provenance panel
    assert html.escape(XSS_DATA) in page
    assert html.escape("<b>bold?</b> & 'quotes'") in page
    # figure titles: escaped before plotly's JSON encoding (which itself writes < as \u003c)
    sections, _, _ = collect_sections(run_dir, strict=True)
    surf = next(s for s in sections if s.title.startswith("2D"))
    title = surf.figures[0].layout.title.text
    assert "<script>" not in title and html.escape(XSS_MODEL, quote=False) in title
    assert "&quot;" not in title  # plotly shows &lt; as <, but would show &quot; literally


def test_generic_variables_nan_masking_and_stderr(tmp_path: Path) -> None:
    ds = synthetic_store(tmp_path / "run" / "bowl.zarr")
    sections, prov, problems = collect_sections(tmp_path / "run", strict=True)
    assert problems == [] and len(sections) == 1
    figs = sections[0].figures
    names = [f.data[0].colorbar.title.text for f in figs[1:]]
    # one panel per variable on (x, y): losses, accuracy, then the other maps, then the stderr panel
    assert names == ["train loss", "test loss", "train accuracy", "lambda max", "lambda min",
                     "train loss stderr"]
    contour = figs[1].data[0]
    expected = ds["train_loss"].transpose("y", "x").values
    z = np.asarray(contour.z)
    assert z.shape == (7, 9)
    bad = ~np.isfinite(expected)
    assert bad.sum() == 3 and np.isnan(z[bad]).all()  # inf and -inf masked as NaN, never plotted
    np.testing.assert_allclose(z[~bad], expected[~bad])
    xx, yy = np.meshgrid(ds.x.values, ds.y.values)
    np.testing.assert_allclose(z[~bad], bowl(xx, yy)[~bad])
    # lambda_min changes sign: diverging colours centred at 0; the path is overlaid on contours
    lam = figs[5].data[0]
    assert lam.type == "heatmap" and lam.zmid == 0.0
    assert any(t.name == "path" for t in figs[1].data)
    np.testing.assert_allclose(next(t for t in figs[1].data if t.name == "path").x, ds.path_x.values)
    # hover of every 2D panel shows x, y, each metric and ± stderr of train loss
    template = contour.hovertemplate
    for part in ["x = ", "y = ", "train loss = ", "lambda min = ", " ± "]:
        assert part in template
    assert np.asarray(contour.customdata).shape[:2] == (7, 9)
    assert prov["bowl.zarr"]["seed"] == 7


def test_one_d_store_with_stderr_band(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 11)
    loss = 1 + x**2
    loss[3] = np.nan
    ds = xr.Dataset({"train_loss": ("x", loss), "train_loss_stderr": ("x", 0.1 + 0 * x),
                     "train_accuracy": ("x", 0.5 + 0 * x), COMPLETED: ("x", np.ones(11, bool))},
                    coords={"x": x}, attrs={"kind": "surface", "model": "m", "seed": 1})
    ds.to_zarr(tmp_path / "c.zarr", consolidated=False)
    sections, _, _ = collect_sections(tmp_path, strict=True)
    fig = sections[0].figures[0]
    hi, lo, line = fig.data[0], fig.data[1], fig.data[2]
    assert lo.fill == "tonexty" and line.name == "train loss"
    ok = np.arange(11) != 3
    np.testing.assert_allclose((np.asarray(hi.y) - np.asarray(line.y))[ok], 1.959963984540054 * 0.1)
    np.testing.assert_allclose((np.asarray(line.y) - np.asarray(lo.y))[ok], 1.959963984540054 * 0.1)
    assert np.isnan(line.y[3]) and np.isnan(hi.y[3]) and np.isnan(lo.y[3])
    acc = next(t for t in fig.data if (t.name or "").startswith("train accuracy"))
    assert acc.yaxis == "y2"
    np.testing.assert_allclose(acc.y, 50.0)


def test_registration_point_dispatches_new_kinds_and_reports_failures(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "a.zarr", extra=False, kind="testkind-ok")
    synthetic_store(tmp_path / "b.zarr", extra=False, kind="testkind-broken")
    synthetic_store(tmp_path / "c.zarr", extra=False, kind="nobody-handles-this")
    seen: list[tuple[str, int]] = []

    @register("testkind-ok", order=1)
    def ok(store: Path, ds: xr.Dataset) -> Section:
        seen.append((store.name, ds.sizes["x"]))
        return Section(title="custom <kind>", html="<p>trusted fragment</p>")

    @register("testkind-broken", order=2, load=False)
    def broken(store: Path, ds: xr.Dataset) -> Section:
        assert len(ds.data_vars) == 0 and ds.attrs["kind"] == "testkind-broken"
        raise RuntimeError("boom")

    try:
        result = build_report(tmp_path, tmp_path / "r.html")
        page = result.path.read_text()
        assert seen == [("a.zarr", 9)]
        assert "custom &lt;kind&gt;" in page and "<p>trusted fragment</p>" in page
        assert page.index("custom &lt;kind&gt;") < page.index('id="provenance"')
        assert len(result.problems) == 2
        broken_msg, unknown_msg = sorted(result.problems)
        assert broken_msg.startswith("b.zarr: ") and "RuntimeError: boom" in broken_msg
        assert unknown_msg == "c.zarr: no report section for stores of kind 'nobody-handles-this'"
        with pytest.raises(RuntimeError, match="boom"):
            build_report(tmp_path, tmp_path / "r.html", strict=True)
    finally:
        reg._STORE_BUILDERS[:] = [e for e in reg._STORE_BUILDERS if e.kind not in {"testkind-ok",
                                                                                 "testkind-broken"}]


def test_sections_package_is_auto_imported() -> None:
    reg.load_sections()
    assert {"surface", "interpolation"} <= set(reg.registered_kinds())
    assert "metrics.csv" in reg.artifact_patterns()


def test_bad_inputs_are_one_line_user_errors(tmp_path: Path) -> None:
    from lossatlas.errors import UserInputError

    with pytest.raises(UserInputError, match="does not exist") as info:
        build_report(tmp_path / "missing")
    assert "\n" not in str(info.value)
    with pytest.raises(UserInputError, match=r"\.html"):
        build_report(tmp_path, tmp_path / "r.png")
    empty = build_report(tmp_path, tmp_path / "empty.html")
    assert empty.sections == 0 and "No results found" in empty.path.read_text()


def test_loss_contours_switch_to_log10_for_wide_ranges(tmp_path: Path) -> None:
    from lossatlas.viz.report.figures import LOG_RATIO, map_2d

    ds = synthetic_store(tmp_path / "s.zarr", bad=False, extra=False)
    narrow = map_2d(ds, "train_loss")
    assert [b.label for b in narrow.layout.updatemenus[0].buttons] == ["linear", "log"]
    wide = ds.assign(train_loss=ds.train_loss ** 6)  # 1 … 4.2^6 ≫ LOG_RATIO
    assert float(wide.train_loss.max() / wide.train_loss.min()) > LOG_RATIO
    fig = map_2d(wide, "train_loss")
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["log", "linear"]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log10(wide.train_loss.transpose("y", "x").values))
    assert fig.data[0].colorbar.title.text == "train loss (log scale)"
    # the log colour bar (losses 1 … 244) is labelled in loss units: 1, 10, 100 at log10 positions 0, 1, 2
    assert list(fig.data[0].colorbar.tickvals) == [0.0, 1.0, 2.0]
    assert list(fig.data[0].colorbar.ticktext) == ["1", "10", "100"]
    assert fig.data[0].contours.showlabels is False  # contour labels would be log10 values
    linear = fig.layout.updatemenus[0].buttons[1].args[0]
    assert linear["colorbar.tickvals"] == [None] and linear["contours.showlabels"] is True
    # hover still shows the loss itself, not its log
    np.testing.assert_allclose(np.asarray(fig.data[0].customdata)[..., 0], wide.train_loss.transpose("y", "x"))
    assert map_2d(ds, "train_accuracy").layout.updatemenus == ()


def test_a_new_file_in_sections_adds_a_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registration point: dropping a module into ``report/sections`` is all a feature needs."""
    import sys

    from lossatlas.viz.report import sections

    pkg = tmp_path / "more_sections"
    pkg.mkdir()
    (pkg / "zz_newkind.py").write_text(
        "from lossatlas.viz.report.registry import Section, register\n\n"
        "@register('newkind', order=5)\n"
        "def build(store, ds):\n"
        "    return Section(title='new kind: ' + store.name, provenance={'extra': 'x<y'})\n")
    (pkg / "zz_broken.py").write_text("raise ImportError('an optional dependency is missing')\n")
    monkeypatch.setattr(sections, "__path__", [*sections.__path__, str(pkg)])
    monkeypatch.setattr(reg, "_LOADED", False)
    monkeypatch.setattr(reg, "_IMPORT_PROBLEMS", [])
    monkeypatch.setattr(reg, "_STORE_BUILDERS", list(reg._STORE_BUILDERS))
    try:
        synthetic_store(tmp_path / "run" / "n.zarr", extra=False, kind="newkind")
        result = build_report(tmp_path / "run")
        page = result.path.read_text()
        assert "new kind: n.zarr" in page and "x&lt;y" in page
        assert result.problems == ("report section module 'zz_broken' failed to import: "
                                   "ImportError: an optional dependency is missing",)
        with pytest.raises(RuntimeError, match="zz_broken"):
            build_report(tmp_path / "run", strict=True)
    finally:
        for name in ("zz_newkind", "zz_broken"):
            sys.modules.pop(f"{sections.__name__}.{name}", None)


def test_notes_for_untrained_subset_and_bn_recompute(tmp_path: Path) -> None:
    from lossatlas.viz.describe import BN_RECOMPUTE_NOTE, UNTRAINED

    synthetic_store(tmp_path / "run" / "u.zarr", extra=False, weights=UNTRAINED, subset=0.1, subset_seed=3)
    synthetic_store(tmp_path / "run" / "r.zarr", extra=False, bn="recompute")
    synthetic_store(tmp_path / "run" / "plain.zarr", extra=False)
    page = build_report(tmp_path / "run", strict=True).path.read_text()
    header = page.split("<nav>", 1)[0]
    assert "untrained weights: <code>u.zarr</code> was computed without --checkpoint" in header
    sections = {m.group(1): m.group(2) for m in re.finditer(r'<h2>[^<]*: ([a-z]+\.zarr)</h2>(.*?)</section>', page,
                                                             re.S)}
    notes = {name: re.findall(r'<p class="note">(.*?)</p>', body) for name, body in sections.items()}
    assert notes["plain.zarr"] == []
    assert notes["r.zarr"] == [html.escape(BN_RECOMPUTE_NOTE)]
    assert [n.split(":")[0] for n in notes["u.zarr"]] == ["untrained weights", "evaluated on a subset of 10% of each "
                                                                                "split (seed 3)"]
    collected, _, _ = collect_sections(tmp_path / "run", strict=True)
    titles = {s.source.name: [f.layout.title.text for f in s.figures] for s in collected}  # type: ignore[union-attr]
    assert all("[subset 10%, untrained weights]" in t for t in titles["u.zarr"])
    assert titles["r.zarr"][1] == "train loss [bn=recompute]" and titles["plain.zarr"][1] == "train loss"


def test_one_d_bands_are_clipped_and_in_the_legend(tmp_path: Path) -> None:
    from lossatlas.viz.report.figures import curves_1d

    x = np.linspace(-1, 1, 11)
    loss, acc = 0.01 + x**2, 0.98 - 0.1 * x**2
    ds = xr.Dataset({"train_loss": ("x", loss), "train_loss_stderr": ("x", 0.1 + 0 * x),
                     "train_accuracy": ("x", acc), "train_accuracy_stderr": ("x", 0.05 + 0 * x)},
                    coords={"x": x})
    fig = curves_1d(ds)
    by_name = {t.name: t for t in fig.data if t.name}
    band, acc_band = by_name["train loss 95% interval"], by_name["train accuracy 95% interval"]
    assert band.showlegend and acc_band.showlegend and band.legendgroup == "train_loss"
    z = 1.959963984540054
    linear_lo = np.maximum(loss - z * 0.1, 0.0)  # on a linear axis a loss interval stops at 0
    upper = fig.data[[t.name for t in fig.data].index("train accuracy 95% interval") - 1]
    np.testing.assert_allclose(upper.y, np.minimum(100 * (acc + z * 0.05), 100.0))  # accuracy stops at 100%
    np.testing.assert_allclose(acc_band.y, 100 * (acc - z * 0.05))
    assert (linear_lo == 0).sum() == 5 and (np.asarray(upper.y) == 100).sum() > 0
    # losses 0.01 … 1.01 span more than LOG_RATIO: the axis starts in log, where the band ends at half the
    # smallest loss instead of at 0 (which a log axis cannot draw); the "linear loss" button puts back 0
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_allclose(band.y, np.maximum(linear_lo, loss.min() / 2))
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["log loss", "linear loss"]
    assert buttons[1].args[1] == {"yaxis.type": "linear"}
    np.testing.assert_allclose(buttons[1].args[0]["y"][0], linear_lo)
    assert list(buttons[1].args[2]) == [[t.name for t in fig.data].index("train loss 95% interval")]


def test_hessian_extremes_get_their_own_axes() -> None:
    """λ up to 1,400 on top and |λ| < 1 at the bottom: one linear axis would flatten the bottom to a line at 0."""
    from lossatlas.viz.report.sections.hessian import _spectrum_figure

    ds = xr.Dataset({"top_eigenvalues": ("top", [1419.0, 830.0]), "top_residuals": ("top", [1e-9, 1e-9]),
                     "bottom_eigenvalues": ("bottom", [-0.4, 0.002, 0.01]),
                     "bottom_residuals": ("bottom", [1e-9] * 3)})
    fig = _spectrum_figure(ds)
    assert fig is not None
    top, bottom = fig.data
    assert top.yaxis == "y" and bottom.yaxis == "y2" and list(bottom.y) == [-0.4, 0.002, 0.01]
    assert [a.text for a in fig.layout.annotations][:2] == ["largest 2", "smallest 3"]
