"""goodfellow: the profiles start at θ₀'s and end at θ*'s training loss, the climb statistic is the one a plain
loop gives, the convergence gate leaves out runs that stopped early (never counted as failures), every row names a
published source, the 2-D view puts θ₀ at the origin and θ* on the first axis; the quick preset (slow) runs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from lossatlas.params import read_state_dict
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id, wilson_interval
from lossatlas.studies.goodfellow import Goodfellow
from lossatlas.studies.runs import climbs, read_metrics
from lossatlas.training import list_checkpoints

SMALL = {"models": "cnn", "epochs": "2", "points": "5", "checkpoints": "2", "plane_models": "cnn",
         "plane_points": "3", "data": "mnist1d:n=1000"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return run_study("goodfellow", overrides=SMALL, out_dir=tmp_path_factory.mktemp("goodfellow"))


def test_profiles_run_from_the_initial_to_the_final_training_loss(small) -> None:
    ds = small.dataset
    folder = small.folder / "runs" / cell_id({"model": "cnn", "pair": 0})
    for s in ("A", "B"):
        metrics = read_metrics(folder / f"start_{s}")
        profile = ds.profile_train_loss.sel(model="cnn", pair=0, start=s).values
        assert profile[0] == pytest.approx(metrics["train_loss"][0], rel=1e-6)
        assert profile[-1] == pytest.approx(metrics["train_loss"][-1], rel=1e-6)
    between = ds.between_train_loss.sel(model="cnn", pair=0).values
    assert between[0] == pytest.approx(read_metrics(folder / "start_A")["train_loss"][-1], rel=1e-6)
    assert between[-1] == pytest.approx(read_metrics(folder / "start_B")["train_loss"][-1], rel=1e-6)


def _plain_climb(p: np.ndarray) -> float:
    worst = 0.0
    for j in range(len(p)):
        for i in range(j):
            worst = max(worst, p[j] - min(p[: i + 1]))
    return worst / p[0]


def test_runs_stopped_early_are_unconverged_not_failures(small) -> None:
    """Two epochs leave the CNN far above L(θ₀)/4: every claim is 'not comparable', with both runs counted."""
    profiles = small.dataset.profile_train_loss.sel(model="cnn").values.reshape(-1, 5)
    assert (profiles[:, -1] > 0.25 * profiles[:, 0]).all()  # the set-up: no run reached the gate
    rows = {r.quantity: r for r in small.rows}
    assert set(rows) == {"max_uphill_rel", "bump_pct", "solution_barrier", "solution_barrier_present"}
    for quantity in ("max_uphill_rel", "bump_pct"):
        assert rows[quantity].verdict == "not comparable" and rows[quantity].unconverged == 2
        assert rows[quantity].measured is None and "unconverged" in rows[quantity].note
    assert rows["solution_barrier_present"].unconverged == 1  # one pair
    assert all(r.source == "published" and "2015" in r.ref for r in small.rows)


def _fake(profiles: np.ndarray, between: np.ndarray) -> xr.Dataset:
    """A goodfellow dataset of one model: profiles (pair, start, α), lines between solutions (pair, α)."""
    pairs, _, points = profiles.shape
    alpha = np.linspace(0, 1, points)
    return xr.Dataset(
        {"profile_train_loss": (("model", "pair", "start", "alpha"), profiles[None]),
         "between_train_loss": (("model", "pair", "alpha"), between[None]),
         "distance_solutions": (("model", "pair"), np.ones((1, pairs))),
         "distance_travelled": (("model", "pair", "start"), np.ones((1, pairs, 2)))},
        coords={"model": ["mlp"], "pair": np.arange(pairs), "start": ["A", "B"], "alpha": alpha})


def test_check_on_known_profiles_gates_counts_and_measures_climbs() -> None:
    g = np.random.default_rng(3)
    alpha = np.linspace(0, 1, 11)
    profiles = np.empty((3, 2, 11))
    for k in range(6):  # monotone descents from 2.3 to 0.1, two with a bump (0.3 and 0.005 of L(θ₀))
        profiles.flat[k * 11:(k + 1) * 11] = 2.3 - 2.2 * alpha ** (0.5 + g.random())
    profiles[0, 1, 4] += 0.3 * 2.3  # a bump above the 1% margin
    profiles[1, 0, 6] += 0.005 * 2.3  # a climb inside the margin
    profiles[2, 1, -1] = 1.0  # θ* above L(θ₀)/4: unconverged, left out with its pair
    profiles[2, 1, 3] += 5.0  # ... so its huge bump must not count
    between = 0.1 + 1.5 * np.sin(np.pi * alpha)[None].repeat(3, 0)
    between[1] = 0.1  # a flat line: no barrier between the two solutions of pair 1
    rows = {r.quantity: r for r in Goodfellow().check(_fake(profiles, between))}
    converged = profiles.reshape(6, 11)[:5]
    climbs_ = [_plain_climb(p) for p in converged]
    top = rows["max_uphill_rel"]
    assert isinstance(top.measured, float) and 0.1 < top.measured < 0.3
    assert top.measured == pytest.approx(max(climbs_), abs=1e-12)
    assert (top.expected, top.margin, top.verdict, top.unconverged) == (0.0, 0.01, "differs", 1)
    bumps = rows["bump_pct"]
    assert bumps.measured == pytest.approx(100 * 1 / 5) and bumps.runs == 5 and bumps.margin == 5.0
    lo, hi = wilson_interval(1, 5)
    assert bumps.ci == pytest.approx((100 * lo, 100 * hi))
    # one bump refutes a rate of exactly 0 (the Wilson lower bound of 1 of 5 is above 0)
    assert bumps.verdict == "differs" and bumps.p is not None and bumps.p < 0.05
    present = rows["solution_barrier_present"]  # pairs 0 and 1 converged; pair 1's line is flat
    assert present.measured == "no" and present.verdict == "differs" and present.unconverged == 1
    assert "seed 004:793" in present.ref
    height = rows["solution_barrier"]
    assert height.expected is None and height.verdict == "not comparable" and height.runs == 2
    assert height.measured == pytest.approx(np.mean([1.5, 0.0]), abs=1e-9)


def test_climbs_count_a_bump_climbed_in_small_steps_in_full() -> None:
    curve = np.array([2.0, 1.9, 1.95, 2.0, 2.05, 2.1, 1.0, np.nan])
    np.testing.assert_allclose(climbs(curve)[:7], [0, 0, 0.05, 0.1, 0.15, 0.2, 0], atol=1e-12)
    assert climbs(curve)[7] == np.inf and climbs([3.0, 2.0, 1.0]).max() == 0.0


def test_plane_puts_init_at_the_origin_and_the_solution_on_the_first_axis(small) -> None:
    ds = small.dataset.sel(plane_model="cnn")
    files = list_checkpoints(small.folder / "runs" / cell_id({"model": "cnn", "pair": 0}) / "start_A")
    first, last = (read_state_dict(f) for f in (files[0], files[-1]))
    length = float(np.sqrt(sum(float(((last[k].double() - first[k].double()) ** 2).sum()) for k in first)))
    np.testing.assert_allclose([ds.path_x.values[0], ds.path_y.values[0], ds.path_y.values[-1]], 0.0, atol=1e-9)
    assert ds.path_x.values[-1] == pytest.approx(length, rel=1e-9)
    assert ds.path_residual.values.min() == pytest.approx(0.0, abs=1e-6)  # the farthest checkpoint spans the plane
    assert list(ds.path_epoch.values) == [0, 1, 2]


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("goodfellow", "quick", out_dir=tmp_path)
    quantities = {(r.quantity, r.key["model"]) for r in result.rows}
    assert {("max_uphill_rel", m) for m in ("mlp", "cnn", "lstm")} <= quantities
    assert all(r.verdict == "not comparable" for r in result.rows if r.quantity != "solution_barrier")  # 3 epochs
    assert (result.folder / "profiles.png").is_file() and (result.folder / "planes.png").is_file()
