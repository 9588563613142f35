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


def test_check_judges_rows() -> None:
    study = Overparameterisation(samples=4, widths=(2, 4), runs=10, nets=("linear", "relu-narrow"), pairs=2,
                                 thresholds=(0.1, 0.01))
    loss = np.array([[1e-2] * 10, [1e-6] * 9 + [1e-2]])
    success = np.ones((2, 2, 2))
    success[1, 0, 1] = 0
    geodesic = np.array([[[1.0, 1.2], [1.1, 1.3]], [[1.0, 1.0], [1.0, 1.0]]])
    ds = xr.Dataset({"loss": (("d1", "run"), loss), "grad_norm": (("d1", "run"), np.full((2, 10), 1e-3)),
                     "string_success": (("net", "pair", "fraction"), success),
                     "string_geodesic": (("net", "pair", "fraction"), geodesic)},
                    coords={"d1": [2, 4], "net": ["linear", "relu-narrow"], "fraction": [0.1, 0.01]})
    rows = {(r.quantity, r.key.get("d1"), r.key.get("net"), r.key.get("threshold")): r for r in study.check(ds)}
    assert rows[("success_pct", 2, None, None)].verdict == "not comparable"  # d₁ < m
    assert rows[("success_pct", 4, None, None)].measured == 90.0
    assert rows[("success_pct", 4, None, None)].verdict == "differs"  # Wilson(9/10) tops out at 98.2%
    ds["loss"][1] = 1e-6
    assert {(r.quantity, r.key.get("d1")): r for r in study.check(ds)}[("success_pct", 4)].verdict == "agrees"
    assert rows[("connected_pct", None, "linear", 0.01)].verdict == "agrees"
    assert rows[("connected_pct", None, "relu-narrow", 0.01)].verdict == "not comparable"
    assert rows[("geodesic_grows", None, "linear", None)].verdict == "agrees"
    assert rows[("geodesic_grows", None, "relu-narrow", None)].verdict == "differs"


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("overparameterisation", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("net"), r.key.get("threshold")): r for r in result.rows}
    for net in ("linear", "quadratic-wide"):
        for f in (0.1, 0.01):
            assert rows[("connected_pct", net, f)].verdict == "agrees", (net, f)
    assert (tmp_path / "overparameterisation" / "overparameterisation.png").is_file()
