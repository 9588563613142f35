"""Study `initialisation`: the exact expectations beside the measured means, the orthogonal norms to 1e-6, and the
training consequence; a small honest run by default, the quick preset as a slow test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.models.initialisation import expected_norm_ratio
from lossatlas.studies import get_study, run_study, settle
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


def _ratio_dataset(params: Initialisation, means: dict[tuple[str, int], float]) -> xr.Dataset:
    """Every run of (scheme, depth) at the given value, so the measured mean is exactly that value."""
    ratio = np.full((len(params.schemes), len(params.depths), params.runs), np.nan)
    for i, scheme in enumerate(params.schemes):
        runs = params.orthogonal_runs if scheme == "orthogonal" else params.runs
        for j, depth in enumerate(params.depths):
            ratio[i, j, :runs] = means[(scheme, depth)]
    return xr.Dataset({"ratio": (("scheme", "depth", "run"), ratio)},
                      coords={"scheme": list(params.schemes), "depth": list(params.depths)})


def test_check_judges_rows() -> None:
    """check() on a hand-made dataset: the sources, the exact-SD interval, the 10% margin and the exact rows."""
    params = Initialisation(width=8, depths=(3,), runs=400, schemes=("residual", "orthogonal"), train_seeds=0)
    exact, sd = expected_norm_ratio("residual", 8, 3)
    assert exact == pytest.approx(8.0)  # (1 + σ²)^3
    ds = _ratio_dataset(params, {("residual", 3): exact, ("orthogonal", 3): 1.0})
    ds["ratio"][1, 0, 49] = 1.0 + 3e-6  # one orthogonal run off by ~1.5e-6 in the norm
    rows = {(r.quantity, r.key.get("scheme")): r for r in params.check(ds)}
    row = rows[("mean_sq_norm_ratio", "residual")]
    assert (row.source, row.expected, row.margin) == ("derived", pytest.approx(8.0), pytest.approx(0.8))
    assert row.ref.startswith("lossatlas.models.initialisation.expected_norm_ratio")
    se = sd / math.sqrt(400)  # the exact SD, not the sample SD (which is 0 here)
    assert row.ci == pytest.approx((exact - 1.959963984540054 * se, exact + 1.959963984540054 * se))
    assert row.verdict == ("agrees" if 1.6448536269514722 * se <= 0.8 else "inconclusive")
    assert rows[("mean_sq_norm_ratio", "orthogonal")].measured == pytest.approx(1.0, abs=1e-7)  # NaN padding ignored
    # a deviation of ~1.5e-6 in the norm is outside the 1e-6 tolerance
    assert rows[("orthogonal_max_norm_deviation", None)].verdict == "differs"
    assert rows[("orthogonal_max_norm_deviation", None)].source == "derived"
    # orthogonal means are exact (SD 0): rounding (1 − 1.1e-16, as at depth 50 and 100 of the full run) agrees, a
    # real deviation does not
    ortho = {(r.quantity, r.key.get("scheme")): r for r in params.check(
        _ratio_dataset(params, {("residual", 3): exact, ("orthogonal", 3): 0.9999999999999999}))}
    assert ortho[("mean_sq_norm_ratio", "orthogonal")].verdict == "agrees"
    ortho = {(r.quantity, r.key.get("scheme")): r for r in params.check(
        _ratio_dataset(params, {("residual", 3): exact, ("orthogonal", 3): 1.0 - 1e-3}))}
    assert ortho[("mean_sq_norm_ratio", "orthogonal")].verdict == "differs"
    wrong = {(r.quantity, r.key.get("scheme")): r for r in params.check(
        _ratio_dataset(params, {("residual", 3): exact * 1.5, ("orthogonal", 3): 1.0}))}
    assert wrong[("mean_sq_norm_ratio", "residual")].verdict == "differs"  # 4 exact SEs ≈ 1.3 < 4 = 0.5 · exact


def test_one_chance_miss_in_the_family_is_not_a_difference() -> None:
    """The 28 mean rows of the full preset are one family: one row 2.5 exact standard errors off (p ≈ 0.012, a
    per-row 95% test calls it different; Gaussian layers at depth 50, where one SE is 6% of the exact mean, so
    the row cannot agree within 10% either) is inconclusive after Holm's correction; 6 SEs off still differs."""
    params = Initialisation.full()
    assert len(params.schemes) * len(params.depths) == 28
    means = {(s, d): expected_norm_ratio(s, params.width, d, params.sigma2)[0] for s in params.schemes
             for d in params.depths}
    value, sd = expected_norm_ratio("gaussian", params.width, 50, params.sigma2)
    means[("gaussian", 50)] = value + 2.5 * sd / math.sqrt(params.runs)
    rows = params.check(_ratio_dataset(params, means))
    family = [r for r in rows if r.quantity == "mean_sq_norm_ratio"]
    assert len(family) == 28 and {r.family for r in family} == {"mean_sq_norm_ratio"}
    miss = next(r for r in family if r.key == {"scheme": "gaussian", "depth": 50})
    assert miss.verdict == "differs" and miss.p == pytest.approx(0.0124, abs=5e-4)  # before the correction
    settled = {(r.quantity, r.key.get("scheme"), r.key.get("depth")): r for r in settle(rows)}
    miss = settled[("mean_sq_norm_ratio", "gaussian", 50)]
    assert miss.verdict == "inconclusive" and miss.p_holm == pytest.approx(min(1.0, 28 * miss.p), rel=1e-6)
    assert "differs" not in {r.verdict for r in settled.values() if r.quantity == "mean_sq_norm_ratio"}
    means[("gaussian", 50)] = value + 6 * sd / math.sqrt(params.runs)
    settled = {(r.quantity, r.key.get("scheme"), r.key.get("depth")): r
               for r in settle(params.check(_ratio_dataset(params, means)))}
    assert settled[("mean_sq_norm_ratio", "gaussian", 50)].verdict == "differs"
    assert settled[("mean_sq_norm_ratio", "gaussian", 1)].family_verdict == "differs"


def test_training_rows_sources() -> None:
    """trains_pct of residual_beta is a protocol row (our criterion), the other schemes' rows are reported only."""
    params = Initialisation(width=8, depths=(3,), runs=10, schemes=("gaussian", "residual_beta"), train_seeds=3)
    ds = _ratio_dataset(params, {(s, 3): expected_norm_ratio(s, 8, 3)[0] for s in params.schemes})
    final = np.array([[2.3, 2.3, 2.3], [0.1, 0.2, 2.0]])  # residual_beta: 2 of 3 below ln(10)/2
    curves = np.stack([np.stack([np.full(3, 2.3), f]).T for f in final])  # (scheme, seed, epoch): 2.3, then final
    ds["train_loss"] = (("train_scheme", "seed", "epoch"), curves)
    ds["init_norm_ratio"] = (("train_scheme", "seed"), np.ones((2, 3)))
    ds = ds.assign_coords(train_scheme=["gaussian", "residual_beta"])
    rows = {(r.quantity, r.key.get("scheme")): r for r in params.check(ds)}
    beta = rows[("trains_pct", "residual_beta")]
    assert (beta.source, beta.expected, beta.measured) == ("protocol", 100.0, pytest.approx(200 / 3))
    assert beta.verdict in ("inconclusive", "differs") and beta.runs == 3
    gauss = rows[("trains_pct", "gaussian")]
    assert gauss.expected is None and gauss.verdict == "not comparable" and gauss.measured == 0.0


def test_small_run_exact_parts(tmp_path) -> None:
    result = run_study("initialisation", overrides={"width": "16", "depths": "1,4", "runs": "300",
                                                    "train_seeds": "0"}, out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("scheme"), r.key.get("depth")): r for r in result.rows}
    deviation = rows[("orthogonal_max_norm_deviation", None, None)]
    assert deviation.verdict == "agrees" and deviation.measured < 1e-12
    for scheme in ("gaussian", "residual", "residual_beta"):
        row = rows[("mean_sq_norm_ratio", scheme, 4)]
        assert row.expected == pytest.approx(expected_norm_ratio(scheme, 16, 4)[0], rel=1e-14)
        assert row.source == "derived" and row.verdict in ("agrees", "inconclusive")
        half = (row.ci[1] - row.ci[0]) / 2
        assert abs(row.measured - row.expected) < 2.1 * half  # within 4 exact standard errors
    assert (tmp_path / "initialisation" / "results.json").is_file()
    assert (tmp_path / "initialisation" / "initialisation.png").is_file()


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("initialisation", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("scheme")): r for r in result.rows if r.quantity != "mean_sq_norm_ratio"}
    assert rows[("orthogonal_max_norm_deviation", None)].verdict == "agrees"
    means = [r for r in result.rows if r.quantity == "mean_sq_norm_ratio"]
    assert "differs" not in {r.verdict for r in means}  # one Holm family: a chance miss is inconclusive
    assert rows[("trains_pct", "residual_beta")].measured == 100.0  # 1 seed: inconclusive at best (protocol row)
    assert rows[("trains_pct", "gaussian")].measured == 0.0  # plain deep ReLU nets do not train here
