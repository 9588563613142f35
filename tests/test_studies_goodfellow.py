"""goodfellow: the profiles start at θ₀'s and end at θ*'s training loss, the climb statistic is the one a plain
loop gives, the 2-D view puts θ₀ at the origin and θ* on the first axis; the quick preset (slow) runs its checks."""

from __future__ import annotations

import numpy as np
import pytest

from lossatlas.params import read_state_dict
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id
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


def test_largest_climb_is_the_plain_loop_value(small) -> None:
    profiles = small.dataset.profile_train_loss.sel(model="cnn").values.reshape(-1, 5)
    expected = []
    for p in profiles:
        worst = 0.0
        for j in range(len(p)):
            for i in range(j):
                worst = max(worst, p[j] - min(p[: i + 1]))
        expected.append(worst / p[0])
    row = next(r for r in small.rows if r.quantity == "max_uphill_rel")
    assert row.measured == pytest.approx(max(expected), abs=1e-15)
    assert row.tolerance == 0.01 and row.published == 0.0
    bumps = next(r for r in small.rows if r.quantity == "bump_pct")
    assert bumps.measured == pytest.approx(100 * float(np.mean(np.array(expected) > 0.01)))


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
    assert all(r.verdict in ("agrees", "differs", "not comparable") for r in result.rows)
    assert (result.folder / "profiles.png").is_file() and (result.folder / "planes.png").is_file()
