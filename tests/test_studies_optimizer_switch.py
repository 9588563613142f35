"""optimizer-switch: every run of an init starts from one θ₀, a switched run is the SGD run until the switch
(bit for bit), the plane puts SGD at the origin and Adam on the first axis; the quick preset (slow) runs."""

from __future__ import annotations

import numpy as np
import pytest

from lossatlas.params import read_state_dict
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id
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


def test_barrier_rows_use_the_threshold_on_the_initial_loss(small) -> None:
    threshold = 0.01 * float(small.dataset.initial_loss.mean())
    rows = {(r.quantity, tuple(r.key.items())): r for r in small.rows}
    for (quantity, key), row in rows.items():
        if quantity == "barrier":
            claim = "barrier_present" if key[0][0] == "pair" else "switch_barrier_present"
            assert rows[(claim, key)].measured == ("yes" if row.measured > threshold else "no")


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("optimizer-switch", "quick", out_dir=tmp_path)
    claims = {r.quantity for r in result.rows}
    assert {"barrier_present", "switch_barrier_present", "basin_radius", "larger_basin_for_adam"} <= claims
    assert (result.folder / "optimizer_switch.png").is_file()
