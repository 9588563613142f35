"""Study `overparameterisation`: Yu & Chen's batched objective against a per-run loop, the rows judged on hand-made
results, the level-set nets as specified, and the quick preset (slow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.studies import get_study, run_study
from lossatlas.studies.overparameterisation import (
    NETS,
    Overparameterisation,
    _yu_chen_cell,
    random_regression,
    sigmoid_net_loss,
    two_layer_width,
    venturi_bound,
)


def test_registered_and_nets_as_the_theorems_need() -> None:
    info = get_study("overparameterisation")
    assert info.cls is Overparameterisation
    study = Overparameterisation(level_samples=8, level_dim=4, narrow=2, linear_width=3)
    wide = build_model(study.net_spec("quadratic-wide"), input_shape=(4,), output_dim=1)
    assert wide.layers[0].weight.shape == (18, 4) and wide.layers[0].bias is None  # width 2N + 2 > 2N
    x = torch.randn(3, 4)
    torch.testing.assert_close(wide(x), wide.layers[2](wide.layers[0](x) ** 2))
    linear = build_model(study.net_spec("linear"), input_shape=(4,), output_dim=1)
    assert [p.shape[0] for p in linear.parameters()] == [3, 3, 1]  # hidden 3 > min(n₀, n_L) = 1
    assert set(info.preset("full").nets) == set(NETS)
    with pytest.raises(UserInputError):
        Overparameterisation(nets=("tanh-wide",))


def test_sigmoid_objective_matches_a_loop() -> None:
    x, y = random_regression(5, 3, seed=0)
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(4, 6, 4, generator=g, dtype=torch.float64), torch.randn(4, 1, 6, generator=g,
                                                                               dtype=torch.float64)
    want = []
    for r in range(4):
        total = 0.0
        for i in range(5):
            hidden = torch.sigmoid(w1[r, :, :3] @ x[i] + w1[r, :, 3])
            total += 0.5 * float((y[i, 0] - w2[r, 0] @ hidden) ** 2)
        want.append(total / 5)
    torch.testing.assert_close(sigmoid_net_loss(w1, w2, x, y), torch.tensor(want, dtype=torch.float64))


def test_yu_chen_cell_descends() -> None:
    study = Overparameterisation(samples=6, input_dim=2, runs=4, steps=300)
    out = _yu_chen_cell(study, {"d1": 6}, seed=3)
    x, y = random_regression(6, 2, study.data_seed)
    assert out["loss"].shape == (4,) and (out["loss"] < 0.5 * float((y ** 2).mean())).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_yu_chen_cell_on_cuda_equals_cpu() -> None:
    study = Overparameterisation(samples=6, input_dim=2, runs=4, steps=300)
    cpu = _yu_chen_cell(study, {"d1": 6}, seed=3)
    cuda = _yu_chen_cell(dataclasses.replace(study, device="cuda"), {"d1": 6}, seed=3)
    np.testing.assert_allclose(cuda["loss"], cpu["loss"], rtol=1e-8, atol=1e-12)


def _level_dataset(study: Overparameterisation, loss: np.ndarray, grad: np.ndarray) -> xr.Dataset:
    """Two widths of Yu & Chen runs and two pairs × two thresholds of level-set results for the nets
    ``linear``, ``relu-narrow`` and ``quadratic-narrow`` (m = 2, n = 4: m^(−1/n) = 2^(−1/4) ≈ 0.841)."""
    success = np.ones((3, 2, 2))
    success[1, 0, 1] = 0
    geodesic = np.array([[[1.0, 1.2], [1.1, 1.3]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    ends = np.array([[[0.1, 0.2], [0.1, 0.1]], [[0.5, 0.9], [0.3, 0.2]], [[0.5, 0.6], [0.9, 1.0]]])
    line = np.array([[3.0, 3.0], [2.0, 2.0], [0.8, 1.1]])  # (net, pair): one straight line per pair
    paths = np.array([[[0.3, 0.2], [0.4, 0.5]], [[0.95, 0.85], [5.0, 0.86]], [[2.0, 1.5], [1.05, 1.2]]])
    return xr.Dataset(
        {"loss": (("d1", "run"), loss), "grad_norm": (("d1", "run"), grad),
         "string_success": (("net", "pair", "fraction"), success),
         "string_geodesic": (("net", "pair", "fraction"), geodesic),
         "string_line_max": (("net", "pair", "fraction"), np.repeat(line[:, :, None], 2, axis=2)),
         "string_path_max": (("net", "pair", "fraction"), paths),
         "end_loss": (("net", "pair", "end"), ends)},
        coords={"d1": [2, 4], "net": list(study.nets), "fraction": [0.1, 0.01]})


def test_check_judges_rows() -> None:
    study = Overparameterisation(samples=4, widths=(2, 4), runs=10, nets=("linear", "relu-narrow", "quadratic-narrow"),
                                 pairs=2, thresholds=(0.1, 0.01), level_dim=4, narrow=2)
    loss = np.array([[1e-2] * 10, [1e-6] * 9 + [1e-2]])
    grad = np.full((2, 10), 1e-3)  # every run that missed the loss was still descending
    rows = {(r.quantity, r.key.get("d1"), r.key.get("net"), r.key.get("threshold")): r
            for r in study.check(_level_dataset(study, loss, grad))}
    narrow = rows[("success_pct", 2, None, None)]
    assert narrow.verdict == "not comparable" and narrow.expected is None  # d₁ < m: reported, over all runs
    assert narrow.measured == 0.0 and narrow.runs == 10 and "10 of 10 runs still descending" in narrow.note
    grad_stuck = np.full((2, 10), 1e-3)
    grad_stuck[1, :6] = 1e-6
    cut = {(r.quantity, r.key.get("d1")): r for r in study.check(_level_dataset(study, np.full((2, 10), 1e-2),
                                                                                 grad_stuck))}[("success_pct", 4)]
    assert cut.verdict == "differs" and cut.runs == 6 and cut.unconverged == 4  # 6 stuck runs: 0 of 6 succeed
    grad_stuck[1, :6] = 1e-3
    grad_stuck[1, 0] = 1e-6  # only one of ten converged: too few to judge
    cut = {(r.quantity, r.key.get("d1")): r for r in study.check(_level_dataset(study, np.full((2, 10), 1e-2),
                                                                                 grad_stuck))}[("success_pct", 4)]
    assert cut.verdict == "not comparable" and cut.unconverged == 9 and "unconverged" in cut.note
    wide = rows[("success_pct", 4, None, None)]
    assert (wide.source, wide.expected, wide.margin) == ("published", 100.0, 5.0) and "1995" in wide.ref
    assert (wide.measured, wide.runs, wide.unconverged) == (100.0, 9, 1)  # the descending run is left out
    assert wide.verdict == "inconclusive"  # 9 of 9: Wilson's 90% interval reaches down to 77%
    grad[1, 9] = 1e-6  # now it stopped at a critical point above the success loss: a failure, counted
    row = {(r.quantity, r.key.get("d1")): r for r in study.check(_level_dataset(study, loss, grad))}[
        ("success_pct", 4)]
    assert (row.measured, row.runs, row.unconverged) == (90.0, 10, 0)
    loss[1] = 1e-6  # 10 of 10 succeed, and with 200 runs the rate is pinned within the 5-point margin
    many = Overparameterisation(samples=4, widths=(4,), runs=200, pairs=0)
    ds = xr.Dataset({"loss": (("d1", "run"), np.full((1, 200), 1e-6)), "grad_norm": (("d1", "run"),
                                                                                    np.full((1, 200), 1e-3))},
                    coords={"d1": [4]})
    assert many.check(ds)[0].verdict == "agrees"
    linear = rows[("connected_pct", None, "linear", 0.01)]
    assert linear.source == "published" and linear.family == "connected_pct:linear"
    assert linear.measured == 100.0 and linear.verdict == "inconclusive"  # 2 pairs cannot pin a rate
    assert rows[("connected_pct", None, "relu-narrow", 0.01)].verdict == "not comparable"  # no theorem number
    assert rows[("geodesic_grows", None, "linear", None)].verdict == "agrees"
    assert rows[("geodesic_grows", None, "relu-narrow", None)].verdict == "differs"


def test_venturi_bound_rows() -> None:
    """max(λ, m^(−1/n)) per pair, λ the larger end loss, the best of the line and the strings, against a loop."""
    study = Overparameterisation(samples=4, widths=(4,), runs=10, nets=("linear", "relu-narrow", "quadratic-narrow"),
                                 pairs=2, thresholds=(0.1, 0.01), level_dim=4, narrow=2)
    ds = _level_dataset(study, np.full((2, 10), 1e-6), np.full((2, 10), 1e-6))
    rows = {r.key["net"]: r for r in study.check(ds) if r.quantity == "venturi_bound_pct"}
    assert set(rows) == {"relu-narrow", "quadratic-narrow"}  # the deep linear net is no two-layer net
    gap = 2 ** -0.25
    assert venturi_bound(0.3, 2, 4) == pytest.approx(gap) and venturi_bound(0.9, 2, 4) == 0.9
    for k, net in enumerate(study.nets):
        if net == "linear":
            continue
        want = 0
        for p in range(2):
            best = min(float(ds.string_line_max.values[k, p, 0]), *map(float, ds.string_path_max.values[k, p]))
            want += best <= max(float(ds.end_loss.values[k, p].max()), gap)
        assert rows[net].measured == 100 * want / 2, net
        assert rows[net].source == "published" and "2018" in rows[net].ref and rows[net].key["m"] == 2
    # relu-narrow: pair 0 reaches 0.85 ≤ max(0.9, 0.841); pair 1 reaches 0.86 > max(0.3, 0.841)
    assert rows["relu-narrow"].measured == 50.0
    # quadratic-narrow: pair 0's line at 0.8 ≤ 0.841; pair 1 reaches 1.05 > max(1.0, 0.841)
    assert rows["quadratic-narrow"].measured == 50.0
    assert two_layer_width(study.net_spec("quadratic-wide")) == 2 * study.level_samples + 2
    assert two_layer_width(study.net_spec("linear")) is None


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("overparameterisation", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("net"), r.key.get("threshold")): r for r in result.rows}
    for net in ("linear", "quadratic-wide"):
        for f in (0.1, 0.01):  # 2 pairs: a rate of 100% cannot be pinned within 5 points, so never 'agrees'
            assert rows[("connected_pct", net, f)].measured == 100.0, (net, f)
            assert rows[("connected_pct", net, f)].verdict == "inconclusive", (net, f)
    assert {r.key["net"] for r in result.rows if r.quantity == "venturi_bound_pct"} == {
        "quadratic-wide", "quadratic-narrow", "relu-narrow"}
    assert (tmp_path / "overparameterisation" / "overparameterisation.png").is_file()
