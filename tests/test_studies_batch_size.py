"""batch-size-weight-decay: the stored ‖θ‖₂, curves and unit scale are those of the trained checkpoints, the four
configurations of a seed share θ₀, runs stopped early are unconverged (not failures), the direction rows follow
paired t-tests of the stored numbers, the checks no longer import the study (no import circle); the quick preset
(slow) runs."""

from __future__ import annotations

import ast
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from scipy.stats import t, ttest_rel

from lossatlas.params import read_state_dict
from lossatlas.studies import batch_size_checks, run_study
from lossatlas.studies.batch_size_checks import claim_rows, measures
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


def test_runs_stopped_early_are_unconverged(small) -> None:
    """One epoch leaves every run above 1% training error: the rows about minima are not comparable, with every
    run counted; the rows about training (‖θ‖₂) are still compared."""
    ds = small.dataset
    assert (ds.train_error > 0.01).all()
    for row in small.rows:
        assert row.source == "published" and ("2018" in row.ref or "2017" in row.ref)
        if row.quantity == "weight_norm_grows":
            assert row.measured in ("yes", "no") and row.unconverged == 0
        else:
            assert row.verdict == "not comparable" and row.unconverged >= 1 and "unconverged" in row.note


PARAMS = SimpleNamespace(width_height=0.1, large_quantile=0.9, small_quantile=0.1)


def _fake(test_error: np.ndarray, train_error: np.ndarray, curvature: np.ndarray) -> xr.Dataset:
    """A finished dataset (weight_decay 0 and 5e-4, SB/LB, seeds): test and train errors, parabolic 1-D curves
    a·α² (width at height h: 2√(h/a)), λmax = curvature, growing ‖θ‖₂, the SB→LB line a parabola around each end."""
    shape = test_error.shape
    seeds = shape[-1]
    alpha = np.linspace(-1, 1, 41)
    x = np.linspace(-0.5, 1.5, 41)
    curves = curvature[..., None] * alpha**2
    line = np.minimum(1.0 * x**2, 4.0 * (x - 1) ** 2)[None, None].repeat(2, 0).repeat(seeds, 1)
    g = np.random.default_rng(0)
    weights = g.normal(size=(*shape, 500)) * np.array([1.5, 1.0])[None, :, None, None]  # SB: more large weights
    run = ("weight_decay", "batch", "seed")
    return xr.Dataset(
        {"test_error": (run, test_error), "train_error": (run, train_error), "train_loss": (run, train_error),
         "lambda_max": (run, curvature), "eps_sharpness": (run, curvature), "unit_scale": (run, np.ones(shape)),
         "param_norm": ((*run, "epoch"), np.broadcast_to(np.array([1.0, 2.0, 3.0]), (*shape, 3))),
         "weights": ((*run, "weight_index"), weights),
         "fn_train_loss": ((*run, "alpha"), curves), "unit_train_loss": ((*run, "alpha"), curves),
         "line_train_loss": (("weight_decay", "seed", "x"), line)},
        coords={"weight_decay": [0.0, 5e-4], "batch": ["SB", "LB"], "batch_size": ("batch", [32, 1024]),
                "seed": np.arange(seeds), "epoch": np.arange(3), "alpha": alpha, "x": x})


def test_direction_rows_are_paired_t_tests_with_a_gate() -> None:
    g = np.random.default_rng(1)
    test_error = 0.02 + 0.001 * g.random((2, 2, 4))
    test_error[:, 1] += 0.01  # LB worse in every seed
    train_error = np.zeros((2, 2, 4))
    train_error[1, 0, 3] = 0.05  # weight decay 5e-4, SB, seed 3 did not converge: its seed leaves the pair
    curvature = np.where(np.arange(2)[None, :, None] == 1, 4.0, 1.0) * (1 + 0.1 * g.random((2, 2, 4)))
    ds = _fake(test_error, train_error, curvature)
    np.testing.assert_allclose(measures(PARAMS, ds).fn_width, 2 * np.sqrt(0.1 / curvature), rtol=0.02)
    rows = claim_rows(PARAMS, ds)
    by = {(r.quantity, tuple(r.key.values())): r for r in rows}
    for wd, keep in ((0.0, [0, 1, 2, 3]), (5e-4, [0, 1, 2])):
        w = 0 if wd == 0 else 1
        row = by[("small_batch_lower_test_error", (wd,))]
        gap = 100 * (test_error[w, 1, keep] - test_error[w, 0, keep])
        half = t.ppf(0.975, gap.size - 1) * gap.std(ddof=1) / np.sqrt(gap.size)
        assert (row.measured, row.verdict, row.runs, row.unconverged) == ("yes", "agrees", len(keep), 4 - len(keep))
        assert f"[{gap.mean() - half:.3g}, {gap.mean() + half:.3g}]" in row.note
        sharper = by[("sharper_batch", (wd, "lambda_max"))]  # no published claim: shown, not compared
        assert sharper.measured == "LB" and sharper.verdict == "not comparable"
        assert by[("sharper_batch", (wd, "fn_width"))].verdict == "agrees"  # widths 2√(0.1/a): LB narrower
    assert by[("test_error_pct", (5e-4, "SB"))].runs == 3
    assert by[("interpolation_flatter_end", (0.0,))].verdict == "agrees"  # SB end: a = 1, LB end: a = 4
    assert by[("interpolation_flatter_end", (5e-4,))].measured == "SB"
    assert by[("interpolation_flatter_end", (5e-4,))].verdict == "differs"
    assert by[("more_large_weights", (0.0,))].verdict == "agrees"
    assert by[("weight_norm_grows", (0.0, "SB"))].verdict == "agrees"
    # the other direction, with the p of a paired t-test; and no direction when the interval contains 0
    flipped = test_error[:, ::-1].copy()
    row = next(r for r in claim_rows(PARAMS, _fake(flipped, train_error, curvature))
               if r.quantity == "small_batch_lower_test_error" and r.key["weight_decay"] == 0.0)
    assert row.measured == "no" and row.verdict == "differs"
    assert row.p == pytest.approx(ttest_rel(flipped[0, 1], flipped[0, 0]).pvalue, rel=1e-6)
    noisy = 0.02 + 0.01 * g.standard_normal((2, 2, 4))
    noisy[:, 1] = noisy[:, 0] + np.array([0.01, -0.01, 0.012, -0.009])
    row = next(r for r in claim_rows(PARAMS, _fake(noisy, train_error, curvature))
               if r.quantity == "small_batch_lower_test_error" and r.key["weight_decay"] == 0.0)
    assert row.measured is None and row.verdict == "inconclusive"
    # too few converged seeds: not comparable (unconverged), never 'differs'
    train_error[0, 1, :3] = 0.2
    row = next(r for r in claim_rows(PARAMS, _fake(flipped, train_error, curvature))
               if r.quantity == "small_batch_lower_test_error" and r.key["weight_decay"] == 0.0)
    assert row.verdict == "not comparable" and row.unconverged == 3


def test_the_checks_do_not_import_the_study() -> None:
    """The import circle batch_size_checks ↔ batch_size_weight_decay is gone, TYPE_CHECKING imports included."""
    tree = ast.parse(inspect.getsource(batch_size_checks))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("batch_size_weight_decay" in (m or "") for m in imported)


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("batch-size-weight-decay", "quick", out_dir=tmp_path)
    claims = {r.quantity for r in result.rows}
    assert {"small_batch_lower_test_error", "interpolation_flatter_end", "weight_norm_grows", "more_large_weights",
            "sharper_batch", "sharpness_orders_test_error"} <= claims
    assert all(r.verdict == "not comparable" for r in result.rows if r.quantity != "weight_norm_grows")  # 3 epochs
    assert (result.folder / "li_figures_2_3.png").is_file()


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    from lossatlas.studies.batch_size_checks import spearman

    g = np.random.default_rng(1)
    x, y = g.integers(0, 4, size=(20, 9)).astype(float), g.normal(size=(20, 9))
    expected = [spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(spearman(x, y), expected, rtol=1e-12, atol=1e-12)
