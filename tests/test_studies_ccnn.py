"""Study `ccnn`: the convexity rows judged on known curves, a small honest run on digits, the quick preset (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from lossatlas.data import load_data
from lossatlas.errors import UserInputError
from lossatlas.models.ccnn import build_ccnn, logits_from_features
from lossatlas.models.nuclear import NuclearSpec, fit_ccnn
from lossatlas.studies import get_study, run_study
from lossatlas.studies.ccnn import PATCHES, TABLE_1, CCNNStudy, line_barrier, second_differences


def test_registered_with_presets_and_table() -> None:
    info = get_study("ccnn")
    assert info.cls is CCNNStudy
    assert info.preset("full").datasets == ("digits", "mnist1d")
    assert [r[0] for r in TABLE_1] == ["basic", "rand", "rot", "img", "img+rot"]
    assert all(ccnn < cnn for _, cnn, ccnn in TABLE_1)  # Table 1: CCNN-1 below CNN-1 in every column
    with pytest.raises(UserInputError):
        CCNNStudy(datasets=("cifar10",))
    with pytest.raises(UserInputError):
        CCNNStudy(cnn_seeds=1)


def test_solve_stops_once_certified() -> None:
    """gap_tol stops the solve at the first check with Frank–Wolfe gap ≤ gap_tol; the gap it reports is the one
    autograd gives at the fitted A (⟨∇_A F, A⟩ + R σ_max(∇_A F)); gap_tol = 0 runs every iteration."""
    data = load_data("digits")
    x, y = (t[:300] for t in data.split("train"))
    model = build_ccnn(data.input_shape, data.output_dim, PATCHES["digits"], x, features=16, seed=0)
    full = fit_ccnn(model, x, y, NuclearSpec(radius=10.0, iterations=400))
    early = fit_ccnn(model, x, y, NuclearSpec(radius=10.0, iterations=400, gap_tol=0.05))
    assert full.iterations == 400 and early.iterations < 400 and early.iterations % 10 == 1
    assert early.fw_gap <= 0.05 < fit_ccnn(model, x, y, NuclearSpec(radius=10.0, iterations=early.iterations - 10)
                                           ).fw_gap
    z = model.feature_matrix(x).double()
    a = early.model.weight.detach().double().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits_from_features(z, a, early.model.bias.detach().double()), y)
    (grad,) = torch.autograd.grad(loss, a)
    want = float((grad * a.detach()).sum()) + 10.0 * float(torch.linalg.matrix_norm(grad, ord=2))
    assert early.fw_gap == pytest.approx(want, rel=1e-4, abs=1e-6)  # float32 weights of the fitted copy
    with pytest.raises(UserInputError):
        NuclearSpec(gap_tol=-1.0)


def test_line_measures() -> None:
    t = np.linspace(-0.5, 1.5, 21)
    parabola = (t - 0.3) ** 2 + 1.0
    assert second_differences(parabola).min() > 0
    assert line_barrier(parabola) == pytest.approx(0.0)  # the maximum on [0, 1] is an end
    bump = 1.0 + np.exp(-((t - 0.5) ** 2) / 0.02)
    assert second_differences(bump).min() < 0
    assert line_barrier(bump) == pytest.approx(1.0, abs=1e-5)  # ends at exp(−12.5)


def _dataset(ccnn_acc: float, cnn_acc: tuple[float, float], objectives: tuple[float, float], gap: float,
             ccnn_line: np.ndarray, cnn_line: np.ndarray) -> xr.Dataset:
    t = np.linspace(-0.5, 1.5, 21)
    one = {"data": ["digits"]}
    return xr.Dataset(
        {"ccnn_radius": ("data", [30.0]), "ccnn_objective": (("data", "start"), [list(objectives)]),
         "ccnn_fw_gap": (("data", "start"), [[gap, gap]]), "ccnn_bias_grad_norm": (("data", "start"), [[0.0, 0.0]]),
         "ccnn_test_accuracy": (("data", "start"), [[ccnn_acc, ccnn_acc]]),
         "ccnn_line": (("data", "t"), [ccnn_line]), "ccnn_line_from_start": (("data", "t"), [ccnn_line]),
         "cnn_test_accuracy": (("data", "seed"), [list(cnn_acc)]), "cnn_objective": (("data", "seed"), [[0.1, 0.2]]),
         "cnn_line": (("data", "t"), [cnn_line]), "n_test": ("data", [360])},
        coords={**one, "start": ["zero", "random"], "t": t})


def test_check_judges_rows() -> None:
    t = np.linspace(-0.5, 1.5, 21)
    convex, bump = (t - 0.5) ** 2 + 0.1, 0.1 + np.exp(-((t - 0.5) ** 2) / 0.02)
    study = CCNNStudy()
    rows = {(r.quantity, r.key.get("data"), r.key.get("model"), r.key.get("from")): r
            for r in study.check(_dataset(0.98, (0.96, 0.97), (0.1, 0.1 + 1e-5), 1e-4, convex, bump))}
    claim = rows[("ccnn_beats_cnn", "digits", None, None)]
    assert claim.verdict == "agrees" and claim.source == "published" and "2017" in claim.ref
    assert rows[("fw_gap_max", "digits", "CCNN-1", None)].verdict == "agrees"  # 1e-4 ≤ the 0.01 threshold
    assert rows[("fw_gap_max", "digits", "CCNN-1", None)].source == "protocol"
    spread = rows[("objective_spread", "digits", "CCNN-1", None)]
    assert (spread.source, spread.verdict, spread.margin) == ("sanity", "agrees", 1e-4)
    assert rows[("line_convex", "digits", "CCNN-1", None)].source == "sanity"
    assert rows[("line_convex", "digits", "CCNN-1", None)].verdict == "agrees"
    assert rows[("line_convex", "digits", "CNN-1", None)].measured == "no"  # the bump, reported only
    assert rows[("line_convex", "digits", "CNN-1", None)].verdict == "not comparable"
    table = rows[("test_error_pct", "MNIST-basic", "CCNN-1", None)]
    assert (table.verdict, table.expected, table.source) == ("not comparable", 2.38, "published")
    assert "seed 000:150" in table.ref and "seed 000:149" in rows[("test_error_pct", "MNIST-rot", "CNN-1", None)].ref
    ours = rows[("test_error_pct", "digits", "CCNN-1", None)]
    assert ours.measured == pytest.approx(100 * round(0.02 * 360) / 360) and ours.ci[0] < ours.measured < ours.ci[1]
    rows = {(r.quantity, r.key.get("model")): r
            for r in study.check(_dataset(0.90, (0.96, 0.97), (0.1, 0.2), 1e-4, bump, convex))}
    assert rows[("ccnn_beats_cnn", None)].verdict == "differs"
    assert rows[("objective_spread", "CCNN-1")].verdict == "differs"  # 0.1 apart, certified to 1e-4: a bug
    assert rows[("line_convex", "CCNN-1")].verdict == "differs"
    assert rows[("line_barrier", "CCNN-1")].verdict == "differs"


def test_unsolved_programme_is_not_comparable() -> None:
    """A Frank–Wolfe gap above the threshold gates the claim: not comparable (unconverged), never differs."""
    t = np.linspace(-0.5, 1.5, 21)
    convex = (t - 0.5) ** 2 + 0.1
    study = CCNNStudy(max_fw_gap=0.01)
    rows = {(r.quantity, r.key.get("model")): r
            for r in study.check(_dataset(0.90, (0.96, 0.97), (0.1, 0.1), 2.5, convex, convex))}
    claim = rows[("ccnn_beats_cnn", None)]
    assert claim.verdict == "not comparable" and claim.unconverged == 2 and "unconverged" in claim.note
    assert claim.expected == "yes" and claim.source == "published"
    assert rows[("fw_gap_max", "CCNN-1")].verdict == "differs" and rows[("fw_gap_max", "CCNN-1")].measured == 2.5
    rows = {(r.quantity, r.key.get("model")): r
            for r in study.check(_dataset(0.90, (0.96, 0.97), (0.1, 0.1), 0.009, convex, convex))}
    assert rows[("ccnn_beats_cnn", None)].verdict == "differs"  # solved: the ordering is judged


@pytest.mark.slow
def test_small_run_reaches_one_optimum(tmp_path) -> None:
    """A small honest run: the convex programme from two starts ends at one value within its certificate, and
    the line between the two solutions is convex."""
    result = run_study("ccnn", overrides={"features": "8", "iterations": "300", "cnn_filters": "4",
                                          "cnn_epochs": "1"}, out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model"), r.key.get("from")): r
            for r in result.rows if r.key.get("data") == "digits"}
    assert rows[("objective_spread", "CCNN-1", None)].verdict == "agrees"
    assert rows[("line_convex", "CCNN-1", None)].verdict == "agrees"
    assert rows[("line_convex", "CCNN-1", "random start")].verdict == "agrees"
    assert rows[("line_barrier", "CCNN-1", None)].verdict == "agrees"
    assert (tmp_path / "ccnn" / "ccnn_lines.png").is_file()


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("ccnn", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model"), r.key.get("from")): r
            for r in result.rows if r.key.get("data") == "digits"}
    for key in (("objective_spread", "CCNN-1", None), ("line_convex", "CCNN-1", None),
                ("line_convex", "CCNN-1", "random start"), ("line_barrier", "CCNN-1", None)):
        assert rows[key].verdict == "agrees", key
