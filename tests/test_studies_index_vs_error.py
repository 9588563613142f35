"""Study `index-vs-error` (Dauphin et al. 2014; Pennington & Bahri 2017): the critical-point search and the fit
against known answers, the convergence gate, and the rows' sources, margins and verdicts on constructed points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from lossatlas.studies import run_study
from lossatlas.studies.index_vs_error import (
    MIN_POINTS,
    IndexVsError,
    fit_index_curve,
    gradient_norm_descent,
    study_data,
)


def test_gradient_norm_descent_finds_minima_and_saddles():
    def f(z):  # minima at (±1, 0), a saddle at (0, 0)
        return (z[0] ** 2 - 1) ** 2 + z[1] ** 2

    starts = torch.tensor([[0.05, 0.3], [0.9, -0.2], [-1.2, 0.1]], dtype=torch.float64)
    found, norm = gradient_norm_descent(f, starts, 100, 1e-12)
    assert (norm <= 1e-12).all()
    torch.testing.assert_close(found, torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_fit_recovers_a_planted_exponent():
    eps = np.linspace(0.6, 2.0, 30)
    alpha = 0.2 * (eps / 0.5 - 1) ** 1.5
    p, a, eps_c = fit_index_curve(np.concatenate([eps, [0.4, 0.45]]), np.concatenate([alpha, [0.0, 0.0]]))
    assert abs(p - 1.5) < 0.02 and abs(eps_c - 0.5) < 0.01 and abs(a - 0.2) < 0.01


def _points(loss: np.ndarray, index: np.ndarray, unconverged: int = 0) -> xr.Dataset:
    """Critical points at ``(loss, index)``, then ``unconverged`` starts whose search stalled (NaN, as _cell
    stores them)."""
    nan = np.full(unconverged, np.nan)
    return xr.Dataset({"loss": ("start", np.concatenate([loss, nan])),
                       "index": ("start", np.concatenate([index, nan])),
                       "lambda_min": ("start", np.concatenate([np.full(loss.size, -1.0), nan])),
                       "grad_norm": ("start", np.concatenate([np.full(loss.size, 1e-9), np.full(unconverged, 1e-2)])),
                       "start_step": ("start", np.zeros(loss.size + unconverged))})


def _rows(ds: xr.Dataset) -> dict:
    return {r.quantity: r for r in IndexVsError(bootstrap=100).check(ds)}


def test_planted_three_halves_law_agrees_and_the_starts_left_out_are_counted():
    eps = np.linspace(0.6, 2.0, 30)
    rows = _rows(_points(eps, 0.2 * (eps / 0.5 - 1) ** 1.5, unconverged=12))
    sign, exponent = rows["index_increases_with_loss"], rows["exponent"]
    assert sign.expected == "positive" and sign.measured == "positive" and sign.verdict == "agrees"
    assert sign.source == "published" and "Dauphin et al. 2014" in sign.ref and "seed 004:691" in sign.ref
    assert exponent.expected == 1.5 and exponent.margin == pytest.approx(0.15) and exponent.source == "published"
    assert "Pennington & Bahri 2017" in exponent.ref
    assert exponent.measured == pytest.approx(1.5, abs=0.02) and exponent.verdict == "agrees"
    assert sign.unconverged == exponent.unconverged == 12 and "30 of 42 starts reached a critical point" in sign.note


def test_other_exponents_and_signs_differ_and_a_weak_sign_is_inconclusive():
    eps = np.linspace(0.6, 2.0, 30)
    rows = _rows(_points(eps, 0.01 * (eps / 0.5 - 1) ** 3.0))
    assert rows["exponent"].measured == pytest.approx(3.0, abs=0.05) and rows["exponent"].verdict == "differs"
    rows = _rows(_points(eps, 0.5 - 0.2 * eps))  # the index falls with the loss
    assert rows["index_increases_with_loss"].measured == "negative"
    assert rows["index_increases_with_loss"].verdict == "differs"
    rng = np.random.default_rng(1)
    rows = _rows(_points(eps, rng.uniform(0.05, 0.5, eps.size)))  # no relation: the sign is not established
    sign = rows["index_increases_with_loss"]
    # no direction established: no label, inconclusive (never differs); its p still counts in Holm's family
    assert sign.measured is None and sign.verdict == "inconclusive" and sign.p is not None and sign.p >= 0.05


def test_too_few_critical_points_are_not_comparable_never_differs():
    eps = np.linspace(0.6, 2.0, MIN_POINTS - 1)
    rows = _rows(_points(eps, 0.5 - 0.2 * eps, unconverged=40))  # a "negative" sign on too few points
    assert set(rows) == {"index_increases_with_loss", "exponent"}
    for row in rows.values():
        assert row.verdict == "not comparable" and row.measured is None and row.unconverged == 40
        assert "not comparable (unconverged): 40 of 49 runs did not converge" in row.note


def test_index_vs_error_small_preset_indices_are_exact(tmp_path):
    result = run_study("index-vs-error", overrides={"runs": "2", "snapshots": "0,20", "iterations": "40",
                                                    "widths": "3", "bootstrap": "20"}, out_dir=tmp_path)
    ds = result.dataset
    found = np.isfinite(ds["index"].values)
    assert found.any() and {r.quantity for r in result.rows} == {"index_increases_with_loss", "exponent"}
    assert all(r.unconverged == int((~found).sum()) and r.source == "published" for r in result.rows)
    data = study_data("random:n=100,d=4", 0)
    assert ds.loss.values[found].min() > 0 and (ds.grad_norm.values[found] <= 1e-6).all()
    n = IndexVsError(widths=(3,)).parameter_count()  # (4 + 1) 3 + (3 + 1) 1 = 19: the index moves in steps of 1/19
    counts = ds["index"].values[found] * n
    assert n == 19 and np.allclose(counts, np.round(counts), atol=1e-9, rtol=0)
    assert data.x_train.shape == (100, 4) and IndexVsError().parameter_count() == 49


@pytest.mark.slow
def test_index_vs_error_quick_preset_finds_critical_points(tmp_path):
    result = run_study("index-vs-error", "quick", out_dir=tmp_path)
    rows = {r.quantity: r for r in result.rows}
    assert set(rows) == {"index_increases_with_loss", "exponent"}
    assert rows["exponent"].runs is None or rows["exponent"].unconverged < 64
