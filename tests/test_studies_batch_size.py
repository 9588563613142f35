"""batch-size-weight-decay: the stored ‖θ‖₂, curves and unit scale are those of the trained checkpoints, the four
configurations of a seed share θ₀, the text rows follow the stored numbers; the quick preset (slow) runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lossatlas.params import read_state_dict
from lossatlas.studies import get_study, parse_overrides, run_study
from lossatlas.studies.batch_size_checks import measures
from lossatlas.studies.framework import cell_id
from lossatlas.studies.runs import read_metrics
from lossatlas.training import checkpoint_path

SMALL = {"model": "zoo:vgg9_1d:width=4", "small_batch": "100", "large_batch": "400", "epochs": "1",
         "curve_points": "5", "hessian_samples": "100", "eps_iterations": "2", "data": "mnist1d:n=1000"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return run_study("batch-size-weight-decay", overrides=SMALL, out_dir=tmp_path_factory.mktemp("bswd"))


def _run_dir(result, wd: float, batch: int):
    return result.folder / "runs" / cell_id({"weight_decay": wd, "batch_size": batch, "seed": 0})


def test_stored_numbers_are_those_of_the_checkpoints(small) -> None:
    ds = small.dataset
    first = read_state_dict(checkpoint_path(_run_dir(small, 0.0, 100), 0))
    for wd in (0.0, 5e-4):
        for b, batch in enumerate((100, 400)):
            folder = _run_dir(small, wd, batch)
            state = read_state_dict(checkpoint_path(folder, 1))
            at = ds.sel(weight_decay=wd, seed=0).isel(batch=b)
            names = [k for k in state if "running" not in k and "num_batches" not in k]
            norm = np.sqrt(sum(float((state[k].double() ** 2).sum()) for k in names))
            assert at.param_norm.values[-1] == pytest.approx(norm, rel=1e-9)
            assert at.unit_scale.values == pytest.approx(
                np.sqrt(sum(float((state[k].double() ** 2).sum()) for k in names if state[k].dim() > 1)), rel=1e-9)
            metrics = read_metrics(folder)
            centre = at.fn_train_loss.values[at.alpha.values.size // 2]  # α = 0: the trained net itself
            assert centre == pytest.approx(metrics["train_loss"][-1], rel=1e-5)
            assert float(at.test_error) == pytest.approx(1 - metrics["test_accuracy"][-1], abs=1e-12)
            initial = read_state_dict(checkpoint_path(folder, 0))
            assert all(bool((initial[k] == first[k]).all()) for k in first)  # one θ₀ per seed


def test_text_rows_follow_the_stored_numbers(small) -> None:
    info = get_study("batch-size-weight-decay")
    params = dataclasses.replace(info.preset("quick"), **parse_overrides(info, SMALL))
    ds, ms = small.dataset, measures(params, small.dataset)
    for row in small.rows:
        if row.quantity == "small_batch_lower_test_error":
            err = ds.test_error.sel(weight_decay=row.key["weight_decay"], seed=0).values
            assert row.measured == ("yes" if err[1] > err[0] else "no") and row.published == "yes"
        if row.quantity == "sharper_batch":
            v = ms[row.key["measure"]].sel(weight_decay=row.key["weight_decay"]).values
            larger = row.key["measure"] in ("lambda_max", "eps_sharpness")
            assert row.measured == ("LB" if (v[1].mean() > v[0].mean()) == larger else "SB")


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("batch-size-weight-decay", "quick", out_dir=tmp_path)
    claims = {r.quantity for r in result.rows}
    assert {"small_batch_lower_test_error", "interpolation_flatter_end", "weight_norm_grows", "more_large_weights",
            "sharper_batch", "sharpness_orders_test_error"} <= claims
    assert all(r.verdict in ("agrees", "differs", "not comparable") for r in result.rows)
    assert (result.folder / "li_figures_2_3.png").is_file()


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    from lossatlas.studies.batch_size_checks import spearman

    g = np.random.default_rng(1)
    x, y = g.integers(0, 4, size=(20, 9)).astype(float), g.normal(size=(20, 9))
    expected = [spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(spearman(x, y), expected, rtol=1e-12, atol=1e-12)
