"""Study `skip-connections`: the claim rows judged on hand-made maps (with the convergence gate), the training
schedule (warm-up, milestones) against a plain torch loop, the model specs, a small run and the quick preset (slow:
they train ResNets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.params import read_state_dict
from lossatlas.studies import get_study, run_study, settle
from lossatlas.studies.skip_connections import DECAY_AT, SkipConnections, model_spec
from lossatlas.training import TrainSpec, checkpoint_path, train
from tests.conftest import make_classification, mlp


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
    with pytest.raises(UserInputError):
        SkipConnections(epochs=2, warmup_epochs=3)
    full = info.preset("full")
    assert full.milestones() == (100, 150, 183) and full.warmup_epochs == 5  # Li et al.: 150, 225, 275 of 300
    assert DECAY_AT == (0.5, 0.75, 275 / 300)
    assert SkipConnections(epochs=2).milestones() == (1, 2)


SCHEDULE = TrainSpec(epochs=4, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-4, seed=3, warmup_epochs=2,
                     milestones=(3,), lr_decay=0.1)
STEP_LRS = [0.1 * t / 10 for t in range(1, 11)] + [0.1] * 5 + [0.01] * 5
"""SCHEDULE's learning rate at each of its 20 steps (70 samples, batches of 16: 5 per epoch), written out."""


def test_lr_factor_matches_the_schedule_written_out() -> None:
    factors = [SCHEDULE.lr_factor(epoch, b, 5) for epoch in range(1, 5) for b in range(5)]
    np.testing.assert_allclose([0.1 * f for f in factors], STEP_LRS, rtol=1e-15)
    assert TrainSpec().lr_factor(7, 3, 5) == 1.0 and not TrainSpec().scheduled
    assert TrainSpec(milestones=[2, 4]).config()["milestones"] == [2, 4]  # JSON form (run.json) as a list
    with pytest.raises(UserInputError):
        TrainSpec(lr_decay=0.0)


def test_schedule_matches_a_plain_loop_and_resumes_bit_exactly(tmp_path) -> None:
    """train() with warm-up and a milestone equals a hand-written SGD loop that sets each step's learning rate
    from STEP_LRS; a run stopped inside the warm-up and resumed ends bit-identical."""
    data = make_classification(n=70)
    train(mlp(), data, SCHEDULE, tmp_path / "full")
    final = read_state_dict(checkpoint_path(tmp_path / "full", 4))
    net = mlp()
    x, y = data.split("train")
    g = torch.Generator().manual_seed(SCHEDULE.seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = 0
    for _ in range(4):
        net.train()
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 16):
            for group in opt.param_groups:
                group["lr"] = STEP_LRS[step]
            step += 1
            idx = order[i:i + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="none").mean().backward()
            opt.step()
    ref = {k: v.detach() for k, v in net.state_dict().items()}
    assert all(torch.equal(final[k], ref[k]) for k in ref)

    class Stop(Exception):
        pass

    def stop(epoch: int, _n: int, metrics: dict[str, float]) -> None:
        if epoch == 1 and metrics:
            raise Stop

    with pytest.raises(Stop):
        train(mlp(), data, SCHEDULE, tmp_path / "cut", progress=stop)
    train(mlp(), data, SCHEDULE, tmp_path / "cut")
    cut = read_state_dict(checkpoint_path(tmp_path / "cut", 4))
    assert all(torch.equal(final[k], cut[k]) for k in final)


def _dataset(depth: int, errors: tuple[float, float], ratios: tuple[float, float],
             losses: tuple[float, float] = (0.001, 0.002)) -> xr.Dataset:
    """Two cells (with / without shortcut) with constant convexity maps and the given final train losses; one
    unconverged map point that must not count."""
    ratio = np.stack([np.full((3, 3), r) for r in ratios])
    converged = np.ones((2, 3, 3))
    converged[:, 0, 0] = 0
    ratio[:, 0, 0] = 0.9
    acc = np.array([[0.1, 1 - e / 100] for e in errors])
    return xr.Dataset(
        {"train_loss_curve": (("cell", "epoch"), [[2.0, losses[0]], [2.0, losses[1]]]),
         "test_accuracy_curve": (("cell", "epoch"), acc),
         "surface_train_loss": (("cell", "x", "y"), np.ones((2, 3, 3))),
         "lambda_max": (("cell", "cx", "cy"), np.ones((2, 3, 3))),
         "lambda_min": (("cell", "cx", "cy"), -ratio), "convexity_ratio": (("cell", "cx", "cy"), ratio),
         "hessian_converged": (("cell", "cx", "cy"), converged), "surface_minima": ("cell", [1, 4]),
         "n_test": ("cell", [360, 360])},
        coords={"depth": ("cell", [depth, depth]), "shortcut": ("cell", [True, False]), "width": ("cell", [1, 1])})


def _rows(study: SkipConnections, ds: xr.Dataset) -> dict:
    return {(r.quantity, r.key.get("shortcut")): r for r in settle(study.check(ds))}


def test_check_judges_the_claims() -> None:
    study = SkipConnections(cmap_grid=3)
    rows = _rows(study, _dataset(56, (5.0, 12.0), (0.05, 0.5)))
    claim = rows[("shortcut_lowers_test_error", None)]
    assert claim.verdict == "agrees" and claim.source == "published" and "2018" in claim.ref
    assert rows[("noshort_more_nonconvex", None)].verdict == "agrees"
    assert rows[("nonconvex_pct", True)].measured == 0.0  # the unconverged corner (ratio 0.9) is left out
    assert rows[("nonconvex_pct", False)].measured == 100.0
    error = rows[("test_error_pct", True)]
    assert error.measured == pytest.approx(100 * 18 / 360) and error.ci[0] < error.measured < error.ci[1]
    assert error.verdict == "not comparable" and error.expected is None
    loss = rows[("final_train_loss", False)]
    assert (loss.source, loss.expected, loss.margin, loss.verdict) == ("protocol", 0.0, 0.01, "agrees")
    rows = _rows(study, _dataset(20, (5.0, 12.0), (0.05, 0.5)))
    assert rows[("noshort_more_nonconvex", None)].verdict == "differs"  # Li et al.: alike at depth 20
    assert rows[("shortcut_lowers_test_error", None)].verdict == "not comparable"
    rows = _rows(study, _dataset(56, (12.0, 5.0), (0.3, 0.35)))
    assert rows[("shortcut_lowers_test_error", None)].verdict == "differs"
    assert rows[("noshort_more_nonconvex", None)].verdict == "differs"  # 5 points < the 10-point margin


def test_unconverged_nets_make_the_depth_not_comparable() -> None:
    """The gate: a net above the stated final train loss (or a NaN one) leaves its depth's claims not comparable,
    never 'differs', and the protocol row says which net missed."""
    study = SkipConnections(cmap_grid=3, converged_loss=0.01)
    for losses, missed in (((0.001, 1.18), 1), ((1.08, 1.18), 2), ((0.001, float("nan")), 1)):
        rows = _rows(study, _dataset(56, (12.0, 5.0), (0.3, 0.35), losses=losses))
        for claim in ("shortcut_lowers_test_error", "noshort_more_nonconvex"):
            row = rows[(claim, None)]
            assert row.verdict == "not comparable" and row.unconverged == missed, (losses, claim)
            assert "final train loss ≤ 0.01" in row.note and row.expected == "yes"
        assert rows[("final_train_loss", False)].verdict in ("differs", "not comparable")
    rows = _rows(study, _dataset(56, (12.0, 5.0), (0.3, 0.35), losses=(0.01, 0.0099)))  # at the threshold: counts
    assert rows[("shortcut_lowers_test_error", None)].verdict == "differs"


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
    assert all(r.verdict in ("agrees", "differs", "inconclusive", "not comparable") for r in result.rows)
    claims = [r for r in result.rows if r.quantity == "noshort_more_nonconvex"]
    losses = {r.key["shortcut"]: r.measured for r in result.rows if r.quantity == "final_train_loss"}
    converged = all(loss <= 0.01 for loss in losses.values())
    assert len(claims) == 1 and (claims[0].verdict == "not comparable") == (not converged)
