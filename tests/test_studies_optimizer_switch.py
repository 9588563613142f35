"""optimizer-switch: every run of an init starts from one θ₀, a switched run is the SGD run until the switch
(bit for bit), the plane puts SGD at the origin and Adam on the first axis, runs stopped early are unconverged
(not failures), the barrier and basin rows follow the stored numbers; the quick preset (slow) runs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import ttest_1samp

from lossatlas.params import read_state_dict
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id
from lossatlas.studies.optimizer_switch import OptimizerSwitch, run_names
from lossatlas.studies.runs import read_metrics
from lossatlas.training import checkpoint_path

SMALL = {"epochs": "2", "switch_epochs": "1", "directions": "1", "points": "5", "plane_points": "3",
         "data": "mnist1d:n=1000"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return run_study("optimizer-switch", overrides=SMALL, out_dir=tmp_path_factory.mktemp("switch"))


def _folder(result, name: str):
    return result.folder / "runs" / cell_id({"init": 0, "run": name})


def test_runs_share_the_initialisation_and_the_switch_follows_sgd_until_it(small) -> None:
    names = ["sgd", "adam", "rmsprop", "sgd>adam@1"]
    first = read_state_dict(checkpoint_path(_folder(small, "sgd"), 0))
    for name in names[1:]:
        other = read_state_dict(checkpoint_path(_folder(small, name), 0))
        assert all(bool((other[k] == first[k]).all()) for k in first)
    sgd, switched = read_metrics(_folder(small, "sgd")), read_metrics(_folder(small, "sgd>adam@1"))
    for column in ("train_loss", "test_accuracy", "param_norm"):
        assert sgd[column][1] == switched[column][1]  # epoch 1: the same SGD steps
        assert sgd[column][2] != switched[column][2]  # epoch 2: Adam after the switch
    adam = read_metrics(_folder(small, "adam"))
    assert adam["train_loss"][1] != sgd["train_loss"][1]


def test_plane_coordinates_are_distances_between_the_solutions(small) -> None:
    ds = small.dataset
    sgd, adam = (read_state_dict(checkpoint_path(_folder(small, n), 2)) for n in ("sgd", "adam"))
    distance = np.sqrt(sum(float(((adam[k].double() - sgd[k].double()) ** 2).sum()) for k in sgd))
    np.testing.assert_allclose(ds.anchor_x.values[:2], [0.0, distance], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ds.anchor_y.values[:2], [0.0, 0.0], atol=1e-12)


def test_runs_stopped_early_are_unconverged(small) -> None:
    ds = small.dataset
    assert (ds.train_loss > 0.25 * ds.initial_loss).all()  # two epochs: no run reaches L(θ₀)/4
    for row in small.rows:
        assert row.verdict == "not comparable" and row.unconverged == 1 and "unconverged" in row.note
        assert row.source == "published" and "2016" in row.ref


def _fake(params: OptimizerSwitch, barriers: np.ndarray, radius: np.ndarray, final: np.ndarray) -> xr.Dataset:
    """A finished dataset: lines with barriers (init, pair) on the chord, parabolic basins whose radius at
    ``basin_height`` is ``radius`` (init, run, direction), final training losses (init, run), L(θ₀) = 2.3."""
    names, pairs = run_names(params), params.pairs()
    t = np.linspace(0, 1, 21)
    alpha = np.linspace(-1, 1, 41)
    lines = 0.05 + barriers[..., None] * 4 * t * (1 - t)  # the barrier is the bump over the flat chord
    basins = params.basin_height * (alpha / radius[..., None]) ** 2
    inits = barriers.shape[0]
    return xr.Dataset(
        {"line_train_loss": (("init", "pair", "t"), lines), "train_loss": (("init", "run"), final),
         "initial_loss": (("init", "run"), np.full(final.shape, 2.3)),
         "unit_scale": (("init", "run"), np.ones(final.shape)),
         "basin_unit": (("init", "run", "direction", "alpha"), basins),
         "basin_filter": (("init", "run", "direction", "alpha"), basins)},
        coords={"init": np.arange(inits), "run": names, "pair": [f"{a}|{b}" for a, b in pairs], "t": t,
                "alpha": alpha})


def test_check_follows_the_stored_numbers_and_the_gate() -> None:
    params = OptimizerSwitch(inits=3, epochs=30, switch_epochs=(2, 10), directions=4)
    names, pairs = run_names(params), [f"{a}|{b}" for a, b in params.pairs()]
    g = np.random.default_rng(0)
    barriers = np.full((3, len(pairs)), 0.5)
    barriers[:, pairs.index("sgd|sgd>adam@10")] = [0.5, 0.0, 0.5]  # one flat line: the switch claim fails
    radius = 0.3 + 0.05 * g.random((3, len(names), 4))
    radius[:, names.index("adam")] += 0.2  # Adam's basins wider along every direction
    final = np.full((3, len(names)), 0.05)
    final[2, names.index("rmsprop")] = 1.5  # unconverged: init 2 leaves every line touching RMSprop
    rows = OptimizerSwitch.check(params, _fake(params, barriers, radius, final))
    by = {(r.quantity, tuple(r.key.values())): r for r in rows}
    present = by[("barrier_present", ("sgd|rmsprop",))]
    assert (present.measured, present.verdict, present.unconverged) == ("yes", "agrees", 1)
    assert by[("barrier", ("sgd|rmsprop",))].measured == pytest.approx(0.5, abs=1e-3)
    switch = by[("switch_barrier_present", (10,))]
    assert (switch.measured, switch.verdict, switch.unconverged) == ("no", "differs", 0)
    assert by[("basin_radius", ("rmsprop", "unit"))].runs == 2 * 4
    larger = by[("larger_basin_for_adam", ("unit",))]
    diffs = (radius[:, names.index("adam")] - radius[:, names.index("sgd")]).reshape(-1)
    assert (larger.measured, larger.verdict, larger.runs) == ("yes", "agrees", diffs.size)
    assert by[("larger_basin_for_adam", ("filter",))].verdict == "not comparable"  # no claim in filter units
    radius[:, names.index("adam")] -= 0.4  # now narrower: the direction is the other one, with the t-test's p
    rows = OptimizerSwitch.check(params, _fake(params, barriers, radius, final))
    larger = next(r for r in rows if r.quantity == "larger_basin_for_adam" and r.key["norm"] == "unit")
    diffs = (radius[:, names.index("adam")] - radius[:, names.index("sgd")]).reshape(-1)
    assert larger.measured == "no" and larger.verdict == "differs"
    assert larger.p == pytest.approx(ttest_1samp(diffs, 0.0).pvalue, rel=1e-6)


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("optimizer-switch", "quick", out_dir=tmp_path)
    claims = {r.quantity for r in result.rows}
    assert {"barrier_present", "switch_barrier_present", "basin_radius", "larger_basin_for_adam"} <= claims
    ok = result.dataset.train_loss <= 0.25 * result.dataset.initial_loss  # 4 epochs: far from the gate
    assert all(r.verdict == "not comparable" for r in result.rows) or bool(ok.any())
    assert (result.folder / "optimizer_switch.png").is_file()
