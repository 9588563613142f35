"""Studies `mode-connectivity` (Garipov et al. 2018), `width-effect` (Li et al. 2018, Sec. 5) and `ccnn-depth`
(Zhang et al. 2017, Tables 3-4): their pure pieces against closed forms and naive loops, their check() on hand-made
datasets, and small real runs (the quick presets are slow: they train networks)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from lossatlas.data import load_data
from lossatlas.errors import UserInputError
from lossatlas.grid import Axis
from lossatlas.models import build_model
from lossatlas.models.ccnn import PatchSpec, build_ccnn, extract_patches
from lossatlas.models.nuclear import NuclearSpec, fit_ccnn
from lossatlas.params import parameters_of
from lossatlas.paths.curves import initial_control_points
from lossatlas.studies import get_study, run_study
from lossatlas.studies.ccnn_depth import MODELS, CCNNDepth, PlainCNN, layer_output
from lossatlas.studies.framework import settle
from lossatlas.studies.mode_connectivity import (
    ModeConnectivity,
    barrier_rise,
    evaluate_paths,
    phase_epochs,
    plateaued,
    squared_norms,
)
from lossatlas.studies.width_effect import (
    WidthEffect,
    apparent_convex_fraction,
    map_axis,
    milestones,
    ordering,
)


def test_registered_with_presets() -> None:
    assert get_study("mode-connectivity").cls is ModeConnectivity
    assert get_study("width-effect").cls is WidthEffect and get_study("ccnn-depth").cls is CCNNDepth
    assert WidthEffect.full().widths == (1, 2, 4) and CCNNDepth.full().radii == (10.0, 30.0, 100.0)
    with pytest.raises(UserInputError):
        ModeConnectivity(kind="spline")
    with pytest.raises(UserInputError):
        WidthEffect(grid=4)  # θ must sit at the centre of the plane
    with pytest.raises(UserInputError):
        CCNNDepth(depths=(4,))  # 8×8 digits fit three 3×3 layers


# -- mode-connectivity ------------------------------------------------------------------------------------------
def test_phases_follow_garipovs_schedule() -> None:
    assert phase_epochs(60) == [30, 24, 6]
    assert phase_epochs(40) == [20, 16, 4]
    assert all(sum(phase_epochs(e)) == e for e in range(4, 50))


def test_plateau_criterion() -> None:
    rng = np.random.default_rng(0)
    flat = 0.05 + 0.005 * rng.standard_normal(40)
    assert plateaued(flat, 6, 0.1)
    falling = np.linspace(1.0, 0.1, 40)  # falls 25% from one 6-epoch window to the next, with no noise
    assert not plateaued(falling, 6, 0.1)
    assert plateaued(falling, 6, 0.5)
    assert not plateaued(flat[:11], 6, 0.1)  # fewer than two windows
    rising = np.linspace(0.1, 1.0, 40)  # a rising loss is not a falling one
    assert plateaued(rising, 6, 0.1)


def test_barrier_and_squared_norms_against_naive_loops() -> None:
    t = np.linspace(0, 1, 11)
    v = 1.0 + 0.5 * t + np.sin(np.pi * t)
    assert barrier_rise(t, v) == pytest.approx(max(v) - (v[0] + v[-1]) / 2)
    rng = np.random.default_rng(1)
    points = [{"w": torch.from_numpy(rng.standard_normal((3, 2))), "b": torch.from_numpy(rng.standard_normal(2))}
              for _ in range(3)]
    gram = np.array([[sum(float((p[k] * q[k]).sum()) for k in p) for q in points] for p in points])
    c = rng.random((5, 3))
    naive = [sum(float((sum(c[i, j] * points[j][k] for j in range(3)) ** 2).sum()) for k in ("w", "b"))
             for i in range(5)]
    np.testing.assert_allclose(squared_norms(c, gram), naive, rtol=1e-12)


def test_line_barrier_matches_a_naive_loop() -> None:
    """The study's line (engine, vmapped) against a loop that loads each interpolated state into the net; the
    one-bend Bézier curve started on the line is the line itself."""
    data = load_data("digits")
    a = build_model("zoo:mlp:widths=8", input_shape=data.input_shape, output_dim=data.output_dim, seed=1)
    b = build_model("zoo:mlp:widths=8", input_shape=data.input_shape, output_dim=data.output_dim, seed=2)
    points = initial_control_points(parameters_of(a), parameters_of(b), 1)
    out = evaluate_paths(a, data, points, "bezier", 5)
    x, y = data.split("train")
    naive = []
    for t in out["t"]:
        net = build_model("zoo:mlp:widths=8", input_shape=data.input_shape, output_dim=data.output_dim)
        state = {k: (1 - t) * points[0][k].double() + t * points[-1][k].double() for k in points[0]}
        net.load_state_dict({k: v.float() for k, v in state.items()})
        with torch.no_grad():
            naive.append(float(nn.functional.cross_entropy(net(x), y)))
    np.testing.assert_allclose(out["line_train_loss"], naive, rtol=1e-5)
    np.testing.assert_allclose(out["curve_train_loss"], naive, rtol=1e-5)
    assert barrier_rise(out["t"], out["line_train_loss"]) == pytest.approx(
        max(naive) - (naive[0] + naive[-1]) / 2, rel=1e-4, abs=1e-7)
    norms = [sum(float(((1 - t) * points[0][k].double() + t * points[-1][k].double()).pow(2).sum())
                 for k in points[0]) for t in out["t"]]
    np.testing.assert_allclose(out["line_norm2"], norms, rtol=1e-9)


def _paths(curve_peak: np.ndarray, line_peak: np.ndarray, ends: np.ndarray, histories: np.ndarray) -> xr.Dataset:
    """Pairs whose curve and line losses are bumps of the given heights over flat ends of loss 0.01."""
    t = np.linspace(0, 1, 11)
    bump = np.sin(np.pi * t)
    pairs = len(curve_peak)
    data: dict[str, Any] = {f"{p}_train_loss": (("pair", "t"), 0.01 + peak[:, None] * bump) for p, peak in
            (("curve", curve_peak), ("line", line_peak))}
    for p in ("curve", "line"):
        data[f"{p}_train_accuracy"] = (("pair", "t"), np.ones((pairs, t.size)))
        data[f"{p}_test_accuracy"] = (("pair", "t"), np.full((pairs, t.size), 0.97))
        data[f"{p}_test_loss"] = (("pair", "t"), np.full((pairs, t.size), 0.1))
        data[f"{p}_norm2"] = (("pair", "t"), np.zeros((pairs, t.size)))
    data["endpoint_train_loss"] = (("pair", "end"), ends)
    data["curve_history"] = (("pair", "curve_epoch"), histories)
    data["constant_lr_epochs"] = ("pair", np.full(pairs, histories.shape[1]))
    return xr.Dataset(data, coords={"t": t, "pair": np.arange(pairs)})


def test_check_judges_curve_and_line() -> None:
    study = ModeConnectivity(curve_epochs=40)  # windows of 4 epochs
    flat = np.full((5, 20), 0.04)
    ds = _paths(np.array([0.01, 0.012, 0.011, 0.009, 0.3]), np.array([0.5, 0.6, 0.55, 0.52, 0.5]),
                np.array([[0.01, 0.01]] * 4 + [[0.2, 0.01]]), flat)
    rows = {r.quantity: r for r in settle(study.check(ds))}
    curve = rows["curve_barrier"]
    assert curve.runs == 4 and curve.unconverged == 1  # the pair with an untrained endpoint is left out
    assert curve.measured == pytest.approx(np.mean([0.01, 0.012, 0.011, 0.009]))
    assert curve.verdict == "agrees" and curve.source == "published" and "seed 001:117" in curve.ref
    assert rows["line_barrier_large"].measured == "yes" and rows["line_barrier_large"].verdict == "agrees"
    assert rows["line_barrier"].verdict == "not comparable"
    assert rows["curve_test_error_rise_pct"].measured == pytest.approx(0.0, abs=1e-12)
    high = _paths(np.full(4, 0.2) + np.array([0, 0.01, 0.02, 0.01]), np.full(4, 0.21), np.full((4, 2), 0.01),
                  flat[:4])
    rows = {r.quantity: r for r in settle(study.check(high))}
    assert rows["curve_barrier"].verdict == "differs"  # 0.2 nats against a 0.05 margin
    assert rows["line_barrier_large"].measured == "yes"
    falling = np.tile(np.linspace(1.0, 0.1, 20), (4, 1))  # no curve on a plateau: nothing comparable
    rows = {r.quantity: r for r in study.check(_paths(np.full(4, 0.01), np.full(4, 0.5), np.full((4, 2), 0.01),
                                                      falling))}
    assert all(r.verdict == "not comparable" and r.unconverged == 4 for r in rows.values())


def test_small_run(tmp_path) -> None:
    result = run_study("mode-connectivity", overrides={"model": "zoo:mlp:widths=8", "pairs": "2", "epochs": "2",
                                                       "curve_epochs": "4", "points": "5"}, out_dir=tmp_path)
    ds = result.dataset
    assert ds.curve_train_loss.shape == (2, 5) and np.isfinite(ds.curve_train_loss).all()
    np.testing.assert_array_equal(ds.curve_train_loss.values[:, [0, -1]], ds.line_train_loss.values[:, [0, -1]])
    assert {r.quantity for r in result.rows} >= {"curve_barrier", "line_barrier_large"}
    assert all(r.source == "published" for r in result.rows)


@pytest.mark.slow
def test_mode_connectivity_quick_preset(tmp_path) -> None:
    result = run_study("mode-connectivity", "quick", out_dir=tmp_path)
    assert (tmp_path / "mode-connectivity" / "mode_connectivity.png").is_file()
    assert (result.dataset.endpoint_train_loss.values <= 0.05).all()


# -- width-effect ---------------------------------------------------------------------------------------------
def test_apparent_convexity_on_closed_forms() -> None:
    axis = np.linspace(-1, 1, 9)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    h = axis[1] - axis[0]
    assert apparent_convex_fraction(x ** 2 + 3 * y ** 2, h) == 1.0
    assert apparent_convex_fraction(x ** 2 - y ** 2, h) == 0.0
    assert apparent_convex_fraction(x * y, h) == 0.0  # f_xx = f_yy = 0, f_xy = 1: indefinite
    quartic = x ** 4 - x ** 2  # concave near x = 0 (f'' = 12x² − 2): PSD exactly where the x-difference is ≥ 0

    def f(a: float) -> float:
        return a ** 4 - a ** 2

    expected = np.mean([f(a + h) - 2 * f(a) + f(a - h) >= 0 for a in axis[1:-1]])
    assert 0 < expected < 1
    assert apparent_convex_fraction(quartic, h) == pytest.approx(expected)
    assert math.isnan(apparent_convex_fraction(np.zeros((2, 5)), h))


def test_ordering_schedule_and_map_axis() -> None:
    assert ordering(np.array([3.0, 2.0, 1.0]), -1) == "yes"
    assert ordering(np.array([3.0, 3.0, 1.0]), -1) == "no"
    assert ordering(np.array([1.0, 2.0, 1.5]), +1) == "no"
    assert ordering(np.array([100.0, 100.0, 100.0]), +1) is None  # every width equal: no ordering to read
    assert ordering(np.array([1.0, np.nan, 0.5]), -1) is None
    assert milestones(300) == (150, 225, 275)  # Li et al.'s own schedule
    assert milestones(4) == (2, 3)
    assert Axis.parse(map_axis(1.0, 1)).values().tolist() == [0.0]
    assert Axis.parse(map_axis(1.0, 3)).values().tolist() == [-1.0, 0.0, 1.0]


def _widths(curvatures: list[float], final_loss: np.ndarray) -> xr.Dataset:
    """Nets whose planes are bowls c·(x² + y²) (2 seeds each), and a constant convexity ratio per width."""
    axis = np.linspace(-1, 1, 5)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    z = np.stack([[0.01 + c * (x ** 2 + y ** 2)] * 2 for c in curvatures])
    ratio = np.stack([[[[0.1 / c]]] * 2 for c in curvatures])
    k = len(curvatures)
    return xr.Dataset(
        {"train_loss_curve": (("k", "seed", "epoch"), np.stack([final_loss] * 2, axis=-1)),
         "test_accuracy_curve": (("k", "seed", "epoch"), np.full((k, 2, 2), 0.98)),
         "surface_train_loss": (("k", "seed", "x", "y"), z),
         "lambda_max": (("k", "seed", "cx", "cy"), np.ones((k, 2, 1, 1))),
         "lambda_min": (("k", "seed", "cx", "cy"), -ratio), "convexity_ratio": (("k", "seed", "cx", "cy"), ratio),
         "hessian_converged": (("k", "seed", "cx", "cy"), np.ones((k, 2, 1, 1))),
         "parameters": (("k", "seed"), np.ones((k, 2)))},
        coords={"k": [1, 2, 4], "seed": [0, 1], "x": axis, "y": axis, "cx": [0.0], "cy": [0.0], "epoch": [0, 1]})


def test_width_check_reads_the_orderings() -> None:
    study = WidthEffect(seeds=2)
    ds = _widths([4.0, 2.0, 1.0], np.full((3, 2), 0.01))
    measures = study.measures(ds)
    np.testing.assert_allclose(measures["basin_rise"][:, 0], [4.0 * 1.0, 2.0, 1.0])  # mean of x² + y² on the grid
    rows = {(r.quantity, r.key.get("k")): r for r in settle(study.check(ds))}
    assert rows[("basin_rise_falls_with_width", None)].measured == "yes"
    assert rows[("basin_rise_falls_with_width", None)].verdict == "agrees"
    assert rows[("convexity_ratio_falls_with_width", None)].measured == "no"  # 0.025 < 0.05 < 0.1 rises
    assert rows[("convexity_ratio_falls_with_width", None)].verdict == "differs"
    assert rows[("apparent_convexity_grows_with_width", None)].verdict == "not comparable"  # 100% everywhere
    assert rows[("basin_rise", 2)].measured == pytest.approx(2.0) and rows[("basin_rise", 2)].runs == 2
    unconverged = np.array([[0.01, 0.01], [0.3, 0.4], [0.01, 0.01]])  # width 2 never reaches the gate
    rows = {(r.quantity, r.key.get("k")): r for r in study.check(_widths([4.0, 2.0, 1.0], unconverged))}
    assert rows[("basin_rise_falls_with_width", None)].verdict == "not comparable"
    assert rows[("basin_rise", 2)].unconverged == 2 and rows[("basin_rise", 1)].verdict == "not comparable"


@pytest.mark.slow
def test_width_small_run(tmp_path) -> None:
    result = run_study("width-effect", overrides={"widths": "1,2", "epochs": "1", "grid": "3", "cmap_subset": "8",
                                                  "max_matvecs": "6"}, out_dir=tmp_path)
    ds = result.dataset
    assert ds.surface_train_loss.shape == (2, 1, 3, 3) and np.isfinite(ds.surface_train_loss).all()
    assert (ds.lambda_max.values >= ds.lambda_min.values).all()
    assert any(r.quantity == "basin_rise_falls_with_width" for r in result.rows)


# -- ccnn-depth --------------------------------------------------------------------------------------------------
def test_plain_cnn_depths() -> None:
    x = torch.zeros(2, 1, 8, 8)
    for depth, side in ((1, 6), (2, 4), (3, 2)):
        net = PlainCNN((1, 8, 8), 10, depth, 4)
        assert net(x).shape == (2, 10) and net.hidden(x, depth).shape == (2, 4, side, side)
    with pytest.raises(UserInputError):
        PlainCNN((1, 8, 8), 10, 4, 4)


def test_layer_output_against_a_patch_loop() -> None:
    """Zhang et al.'s Alg. 2 output: position (row, col) of channel j holds ⟨U_j, Q(z_p(x))⟩, p = row·cols + col."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 5, 5, generator=gen)
    y = torch.arange(30) % 3
    model = build_ccnn((1, 5, 5), 3, PatchSpec(3, 1), x, features=12, seed=0)
    fit = fit_ccnn(model, x, y, NuclearSpec(radius=5.0, iterations=20))
    out = layer_output(model, fit, x[:4], 2)
    u = torch.linalg.svd(fit.model.weight.detach().double(), full_matrices=False)[0][:, :2]
    patches = extract_patches(x[:4], PatchSpec(3, 1), (1, 5, 5))  # (4, 9, 9)
    for n in range(4):
        for row in range(3):
            for col in range(3):
                q = model.features(patches[n, row * 3 + col]).double()
                torch.testing.assert_close(out[n, :, row, col].double(), q @ u, rtol=1e-5, atol=1e-6)


def _ccnn_results(errors: np.ndarray, gates: np.ndarray) -> xr.Dataset:
    seeds, depths = errors.shape[:2]
    return xr.Dataset({"test_error": (("seed", "depth", "model"), errors),
                       "gate": (("seed", "depth", "model"), gates),
                       "radius": (("seed", "depth", "layer"), np.full((seeds, depths, 2), 100.0))},
                      coords={"seed": np.arange(seeds), "depth": [1, 2][:depths], "model": list(MODELS),
                              "layer": ["ccnn_top", "convexified_top"]})


def test_ccnn_check_reads_tables_3_and_4() -> None:
    study = CCNNDepth(seeds=2)
    errors = np.array([[[3.0, 1.0, 2.0], [3.0, 4.0, 2.5]], [[2.0, 1.5, 1.0], [3.5, 5.0, 2.0]]])
    rows = {(r.quantity, r.key.get("depth"), r.key.get("model")): r
            for r in settle(study.check(_ccnn_results(errors, np.full((2, 2, 3), 0.01))))}
    published = rows[("table3_cifar10_error_pct", 2, "CCNN")]
    assert published.expected == 20.52 and "seed 000:169" in published.ref and published.verdict == "not comparable"
    assert rows[("table4_cifar10_error_pct", 2, "CNN-top-convexified")].expected == 21.88
    assert rows[("ccnn_beats_cnn", 1, None)].measured == "yes" and rows[("ccnn_beats_cnn", 1, None)].verdict == "agrees"
    assert rows[("ccnn_beats_cnn", 2, None)].measured == "no" and rows[("ccnn_beats_cnn", 2, None)].verdict == "differs"
    assert rows[("top_convexified_beats_cnn", 2, None)].measured == "yes"
    assert rows[("test_error_pct", 2, "CCNN")].measured == pytest.approx(4.5)
    gates = np.full((2, 2, 3), 0.01)
    gates[:, 1, 1] = 0.3  # CCNN-2's programmes stop far from their optimum in both seeds
    rows = {(r.quantity, r.key.get("depth"), r.key.get("model")): r for r in study.check(_ccnn_results(errors, gates))}
    assert rows[("ccnn_beats_cnn", 2, None)].verdict == "not comparable"
    assert rows[("test_error_pct", 2, "CCNN")].unconverged == 2
    assert rows[("ccnn_beats_cnn", 1, None)].verdict == "agrees"


@pytest.mark.slow
def test_ccnn_depth_quick_preset(tmp_path) -> None:
    result = run_study("ccnn-depth", "quick", out_dir=tmp_path)
    errors = result.dataset.test_error.values
    assert errors.shape == (1, 2, 3) and np.isfinite(errors).all() and (errors < 20).all()
    assert {r.quantity for r in result.rows} >= {"ccnn_beats_cnn", "top_convexified_beats_cnn", "test_error_pct"}
