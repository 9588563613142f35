"""Study `initialisation`: the exact expectations beside the measured means, the orthogonal norms to 1e-6, and the
training consequence; a small honest run by default, the quick preset as a slow test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.models.initialisation import expected_norm_ratio
from lossatlas.studies import get_study, run_study
from lossatlas.studies.initialisation import Initialisation, _norm_cell


def test_registered_with_presets() -> None:
    info = get_study("initialisation")
    assert info.cls is Initialisation
    quick, full = info.preset("quick"), info.preset("full")
    assert max(full.depths) > max(quick.depths) and full.runs > quick.runs
    with pytest.raises(UserInputError):
        Initialisation(schemes=("xavier",))


def test_norm_cell_measures_the_exact_mean() -> None:
    """The cells: the mean of r_L over runs lies within 4 exact standard errors of (E ρ)^L at every depth (scheme,
    depth and width reach the propagation; one net of the largest depth serves all depths of an L-free scheme)."""
    params = Initialisation(width=16, runs=2000, depths=(2, 6))
    for scheme in ("residual", "gaussian"):
        r = _norm_cell(params, {"scheme": scheme}, seed=11)["ratio"]
        assert r.shape == (2000, 2)
        for j, depth in enumerate((2, 6)):
            mean, sd = expected_norm_ratio(scheme, 16, depth, 1.0)
            assert abs(float(r[:, j].mean()) - mean) < 4 * sd / math.sqrt(2000)
    r = _norm_cell(params, {"scheme": "residual_beta", "depth": 6}, seed=12)["ratio"]
    mean, sd = expected_norm_ratio("residual_beta", 16, 6, 1.0)
    assert r.shape == (2000, 1) and abs(float(r.mean()) - mean) < 4 * sd / math.sqrt(2000)
    assert _norm_cell(params, {"scheme": "orthogonal"}, seed=13)["ratio"].shape == (params.orthogonal_runs, 2)


def test_check_judges_rows() -> None:
    """check() on a hand-made dataset: exact means agree, a wrong mean differs, orthogonal deviation needs 1e-6."""
    params = Initialisation(width=8, depths=(3,), runs=400, schemes=("residual", "orthogonal"), train_seeds=0)
    exact = expected_norm_ratio("residual", 8, 3)[0]
    ratio = np.full((2, 1, 400), np.nan)
    ratio[0, 0], ratio[1, 0, :50] = exact, 1.0
    ratio[1, 0, 49] = 1.0 + 3e-6
    ds = xr.Dataset({"ratio": (("scheme", "depth", "run"), ratio)},
                    coords={"scheme": ["residual", "orthogonal"], "depth": [3]})
    rows = {(r.quantity, r.key.get("scheme")): r for r in params.check(ds)}
    assert rows[("mean_sq_norm_ratio", "residual")].verdict == "agrees"
    assert rows[("mean_sq_norm_ratio", "residual")].published == pytest.approx(8.0)  # (1 + σ²)^3
    assert rows[("mean_sq_norm_ratio", "orthogonal")].measured == pytest.approx(1.0, abs=1e-7)  # NaN padding ignored
    # a deviation of ~1.5e-6 in the norm is outside the 1e-6 tolerance
    assert rows[("orthogonal_max_norm_deviation", None)].verdict == "differs"
    # orthogonal means have a zero-width interval (exact SD 0): rounding (1 − 1.1e-16, as at depth 50 and 100 of the
    # full run) agrees, a real deviation does not
    ratio[1, 0, :50] = 0.9999999999999999
    ortho = {(r.quantity, r.key.get("scheme")): r for r in params.check(ds.copy(data={"ratio": ratio}))}
    assert ortho[("mean_sq_norm_ratio", "orthogonal")].verdict == "agrees"
    ratio[1, 0, :50] = 1.0 - 1e-3
    ortho = {(r.quantity, r.key.get("scheme")): r for r in params.check(ds.copy(data={"ratio": ratio}))}
    assert ortho[("mean_sq_norm_ratio", "orthogonal")].verdict == "differs"
    ds["ratio"][0] = exact * 1.5  # 4 / √400 · SD(r_3) ≈ 1.3 < 4 = 0.5 · exact
    assert {(r.quantity, r.key.get("scheme")): r for r in params.check(ds)}[
        ("mean_sq_norm_ratio", "residual")].verdict == "differs"


def test_small_run_exact_parts(tmp_path) -> None:
    result = run_study("initialisation", overrides={"width": "16", "depths": "1,4", "runs": "300",
                                                    "train_seeds": "0"}, out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("scheme"), r.key.get("depth")): r for r in result.rows}
    deviation = rows[("orthogonal_max_norm_deviation", None, None)]
    assert deviation.verdict == "agrees" and deviation.measured < 1e-12
    for scheme in ("gaussian", "residual", "residual_beta"):
        row = rows[("mean_sq_norm_ratio", scheme, 4)]
        assert row.published == pytest.approx(expected_norm_ratio(scheme, 16, 4)[0], rel=1e-14)
        half = (row.ci[1] - row.ci[0]) / 2
        assert abs(row.measured - row.published) < 2.1 * half  # within 4 exact standard errors
    assert (tmp_path / "initialisation" / "results.json").is_file()
    assert (tmp_path / "initialisation" / "initialisation.png").is_file()


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("initialisation", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("scheme")): r for r in result.rows if r.quantity != "mean_sq_norm_ratio"}
    assert rows[("orthogonal_max_norm_deviation", None)].verdict == "agrees"
    means = [r for r in result.rows if r.quantity == "mean_sq_norm_ratio"]
    assert sum(r.verdict == "agrees" for r in means) >= len(means) - 2  # 95% intervals: a miss is chance
    assert rows[("trains_pct", "residual_beta")].verdict == "agrees"
    assert rows[("trains_pct", "gaussian")].measured == 0.0  # plain deep ReLU nets do not train here
