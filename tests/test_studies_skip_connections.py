"""Study `skip-connections`: the claim rows judged on hand-made maps, the model specs, a small run and the quick
preset (slow: they train ResNets)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.studies import get_study, run_study
from lossatlas.studies.skip_connections import SkipConnections, model_spec


def test_registered_presets_and_specs() -> None:
    info = get_study("skip-connections")
    assert info.cls is SkipConnections
    assert info.preset("full").depths == (20, 56)
    net = build_model(model_spec(20, False, 1), input_shape=(1, 8, 8), output_dim=10)
    assert not any("shortcut" in name for name, _ in net.named_modules())
    assert any("shortcut" in name for name, _ in build_model(model_spec(20, True, 2), input_shape=(1, 8, 8),
                                                              output_dim=10).named_modules())
    with pytest.raises(UserInputError):
        SkipConnections(depths=(21,))


def _dataset(depth: int, errors: tuple[float, float], ratios: tuple[float, float]) -> xr.Dataset:
    """Two cells (with / without shortcut) with constant convexity maps; one unconverged point that must not
    count."""
    ratio = np.stack([np.full((3, 3), r) for r in ratios])
    converged = np.ones((2, 3, 3))
    converged[:, 0, 0] = 0
    ratio[:, 0, 0] = 0.9
    acc = np.array([[0.1, 1 - e / 100] for e in errors])
    return xr.Dataset(
        {"train_loss_curve": (("cell", "epoch"), [[2.0, 0.1], [2.0, 0.2]]), "test_accuracy_curve": (("cell", "epoch"),
                                                                                                     acc),
         "surface_train_loss": (("cell", "x", "y"), np.ones((2, 3, 3))), "lambda_max": (("cell", "cx", "cy"),
                                                                                         np.ones((2, 3, 3))),
         "lambda_min": (("cell", "cx", "cy"), -ratio), "convexity_ratio": (("cell", "cx", "cy"), ratio),
         "hessian_converged": (("cell", "cx", "cy"), converged), "surface_minima": ("cell", [1, 4]),
         "n_test": ("cell", [360, 360])},
        coords={"depth": ("cell", [depth, depth]), "shortcut": ("cell", [True, False]), "width": ("cell", [1, 1])})


def test_check_judges_the_claims() -> None:
    study = SkipConnections(cmap_grid=3)
    rows = {(r.quantity, r.key.get("shortcut")): r for r in study.check(_dataset(56, (5.0, 12.0), (0.05, 0.5)))}
    assert rows[("shortcut_lowers_test_error", None)].verdict == "agrees"
    assert rows[("noshort_more_nonconvex", None)].verdict == "agrees"
    assert rows[("nonconvex_pct", True)].measured == 0.0  # the unconverged corner (ratio 0.9) is left out
    assert rows[("nonconvex_pct", False)].measured == 100.0
    rows = {(r.quantity, r.key.get("shortcut")): r for r in study.check(_dataset(20, (5.0, 12.0), (0.05, 0.5)))}
    assert rows[("noshort_more_nonconvex", None)].verdict == "differs"  # Li et al.: alike at depth 20
    assert rows[("shortcut_lowers_test_error", None)].verdict == "not comparable"
    rows = {(r.quantity, r.key.get("shortcut")): r for r in study.check(_dataset(56, (12.0, 5.0), (0.3, 0.35)))}
    assert rows[("shortcut_lowers_test_error", None)].verdict == "differs"
    assert rows[("noshort_more_nonconvex", None)].verdict == "differs"  # 5 points < the 10-point margin


@pytest.mark.slow
def test_small_run(tmp_path) -> None:
    result = run_study("skip-connections", overrides={"epochs": "1", "grid": "3", "cmap_grid": "1",
                                                      "cmap_subset": "16"}, out_dir=tmp_path)
    quantities = {r.quantity for r in result.rows}
    assert {"test_error_pct", "nonconvex_pct", "top_eigenvalue", "noshort_more_nonconvex"} <= quantities
    ds = result.dataset
    assert ds.surface_train_loss.shape == (2, 3, 3) and np.isfinite(ds.surface_train_loss).all()
    assert (ds.lambda_max.values >= ds.lambda_min.values).all()


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("skip-connections", "quick", out_dir=tmp_path)
    assert (tmp_path / "skip-connections" / "skip_connections.png").is_file()
    assert all(r.verdict in ("agrees", "differs", "not comparable") for r in result.rows)
    assert any(r.quantity == "noshort_more_nonconvex" for r in result.rows)
