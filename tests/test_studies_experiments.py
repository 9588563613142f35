"""The experiment studies: Safran & Shamir's closed form and batched GD, the stacked trainers of XOR/Jellyfish,
the critical-point search of index-vs-error — each against an independent reference — and small honest
presets of the studies. The quick presets themselves (and their agreement with the published rows) are
the slow tests at the bottom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lossatlas.curvature import FunctionHessian
from lossatlas.data import load_data
from lossatlas.studies import run_study
from lossatlas.studies.batched import batched_descent, descent_loop, model_loss, stacked_mlp, zoo_runs
from lossatlas.studies.index_vs_error import fit_index_curve, gradient_norm_descent
from lossatlas.studies.safran_shamir import TABLE, _half_unit
from lossatlas.studies.swirszcz import TABLE as SWIRSZCZ
from lossatlas.studies.teacher_student import (
    Objective,
    arccos_kernel,
    gradient_descent,
    gradient_descent_loop,
    hessian_eigenvalues,
    initial_students,
    population_loss,
    teacher,
)
from lossatlas.testing.reference import dense_function_hessian, spectrum


# -- Safran & Shamir: the closed form --------------------------------------------------------------------------
def test_arccos_kernel_and_objective_match_monte_carlo():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    prods = torch.relu(x @ a.T)[:, :, None] * torch.relu(x @ b.T)[:, None, :]
    se = prods.std(0) / math.sqrt(x.shape[0])
    assert ((arccos_kernel(a, b) - prods.mean(0)).abs() <= 5 * se).all()
    w, v = torch.randn(4, 3, generator=g, dtype=torch.float64), teacher(3)
    sq = 0.5 * (torch.relu(x @ w.T).sum(1) - torch.relu(x @ v.T).sum(1)) ** 2
    assert abs(float(population_loss(w, v)) - float(sq.mean())) <= 5 * float(sq.std()) / math.sqrt(x.shape[0])


def test_batched_objective_equals_autograd_of_the_closed_form():
    v = teacher(4, 5)
    w = initial_students(3, 5, 5, 4, seed=1)
    loss, grad = Objective(v, 5)(w)
    for i in range(3):
        torch.testing.assert_close(loss[i], population_loss(w[i], v), atol=1e-13, rtol=0)
        torch.testing.assert_close(grad[i], torch.func.grad(population_loss)(w[i], v), atol=1e-12, rtol=0)
    zero_loss, zero_grad = Objective(v, 4)(v[None].clone())  # the teacher itself: F = 0, ∇F = 0
    assert abs(float(zero_loss[0])) < 1e-13 and float(zero_grad.abs().max()) < 1e-13


def test_batched_descent_follows_each_run_exactly():
    v, w0 = teacher(4), initial_students(6, 4, 4, 4, seed=3)
    a = gradient_descent(w0, v, 5 / 4, max_steps=3000, stop_below=1e-3)
    b = gradient_descent_loop(w0, v, 5 / 4, max_steps=3000, stop_below=1e-3)
    torch.testing.assert_close(a.w, b.w, atol=1e-10, rtol=0)
    np.testing.assert_allclose(a.objective, b.objective, atol=1e-10, rtol=0)
    assert (a.steps == b.steps).all() and (a.stop == b.stop).all() and (a.stop != 2).all()


def test_hessian_of_the_closed_form_matches_function_hessian_and_reference():
    v = teacher(3)
    w = initial_students(1, 3, 3, 3, seed=4)[0]
    eig = hessian_eigenvalues(w, v)
    reference = spectrum(dense_function_hessian(lambda flat: population_loss(flat.reshape(3, 3), v), w.reshape(-1)))
    torch.testing.assert_close(eig, reference, atol=1e-10, rtol=0)
    direct = torch.func.hessian(lambda x: population_loss(x, v))(w).reshape(9, 9)
    library = FunctionHessian(lambda th: population_loss(th["w"], v), {"w": w}).dense()
    torch.testing.assert_close(direct, library, atol=1e-10, rtol=0)


def test_published_tables_are_the_notes_rows():
    assert TABLE[(10, 10)] == (1, 34.6, 0.03, 0.022) and TABLE[(19, 20)] == (2, 49.1, 0.0077, 0.027)
    assert len(TABLE) == 15 + 11 and _half_unit(0.0047) == pytest.approx(5e-5) and _half_unit(34.6) == 0.05
    # the notes' row "2 Adam 28% 79% 7% 0% GD 23% 90% 16% 62%"
    assert [SWIRSZCZ[(d, a, o, 2)] for o in ("adam", "gd") for d in ("xor", "jellyfish") for a in ("relu", "sigmoid")] \
        == [28, 79, 7, 0, 23, 90, 16, 62]


def test_safran_shamir_small_preset(tmp_path):
    result = run_study("safran-shamir", overrides={"table1_ks": "6", "table2_ks": "", "runs": "40"}, out_dir=tmp_path)
    spurious = [r for r in result.rows if r.quantity == "spurious_pct"]
    assert [r.verdict for r in spurious] == ["agrees"]
    ds = result.dataset
    assert (ds.max_increase.values <= 1e-12).all()  # GD was monotone: the early stop cannot change a verdict
    assert float(spurious[0].measured) == 100 * float(ds.spurious.values.mean())
    # a spurious point with a negative eigenvalue (a saddle where GD stopped) is counted and named in the note
    from lossatlas.studies.safran_shamir import SafranShamir

    positive = next(r for r in result.rows if r.quantity == "min_eigenvalue_positive_pct")
    assert positive.verdict == "agrees" and positive.measured == 100.0 and "λmin ≤ 0" not in positive.note
    saddle = ds.copy(deep=True)
    first = int(np.flatnonzero(saddle.spurious.values[0])[0])
    saddle.min_eigenvalue.values[0, first] = -0.0027
    params = SafranShamir(table1_ks=(6,), table2_ks=(), runs=40)
    row = next(r for r in params.check(saddle) if r.quantity == "min_eigenvalue_positive_pct")
    n = int(saddle.spurious.values[0].sum())
    assert row.verdict == "differs" and row.measured == 100 * (n - 1) / n
    assert f"here 1 of {n} have λmin ≤ 0 (lowest -0.0027)" in row.note


# -- the batched trainers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, lr", [("gd", 0.5), ("adam", 0.01)])
def test_stacked_training_equals_torch_optim_per_run(optimizer, lr):
    data = load_data("xor")
    x, y = data.x_train.double(), data.y_train
    model, theta = zoo_runs("zoo:mlp:widths=3,activation=sigmoid", range(3), input_shape=(2,), output_dim=2)
    per_run = model_loss(model, x, y, lambda out, t: F.cross_entropy(out, t, reduction="none"))

    def stacked(th):
        out = stacked_mlp(th, x, torch.sigmoid)
        return F.cross_entropy(out.transpose(1, 2), y.expand(out.shape[0], -1), reduction="none").mean(1)

    reference = descent_loop(per_run, theta, optimizer=optimizer, lr=lr, steps=60)
    for kwargs in ({"stacked": True}, {}):
        fn = stacked if kwargs else per_run
        got = batched_descent(fn, theta, optimizer=optimizer, lr=lr, steps=60, **kwargs).theta
        for k in theta:
            torch.testing.assert_close(got[k], reference[k], atol=1e-10, rtol=0)
    out = stacked_mlp(theta, x, torch.sigmoid)
    for i in range(3):
        torch.testing.assert_close(out[i], functional_call(model, {k: v[i] for k, v in theta.items()}, (x,)))


def test_xor_jellyfish_small_preset_and_the_blind_spot(tmp_path):
    result = run_study("xor-jellyfish", overrides={"activations": "sigmoid", "optimizers": "gd", "runs": "6",
                                                   "steps": "150", "blind_h": "3"}, out_dir=tmp_path)
    ds = result.dataset
    success = next(r for r in result.rows if r.quantity == "success_pct")
    assert success.key == {"data": "xor", "activation": "sigmoid", "optimizer": "gd", "h": 2}
    assert success.published == 90.0 and success.measured == 100 * float((ds.accuracy.values[0] >= 1).mean())
    # 150 steps are too few: the rows differ, and their notes say how far the runs got
    differing = [(i, r) for i, r in enumerate(r for r in result.rows if r.quantity == "success_pct")
                 if r.verdict == "differs"]
    assert differing
    for i, row in differing:
        acc = ds.accuracy.values[i]
        assert f"median {100 * np.median(acc):.2f}%, best {100 * acc.max():.2f}%" in row.note
    blind = {r.quantity: r for r in result.rows if r.quantity.startswith("blind_spot")}
    assert all(r.verdict == "agrees" for r in blind.values())
    assert blind["blind_spot_hidden_change"].measured == 0.0 and blind["blind_spot_accuracy_pct"].measured == 50.0


# -- index vs error ------------------------------------------------------------------------------------------------
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


def test_index_vs_error_small_preset_indices_are_exact(tmp_path):
    from lossatlas.studies.index_vs_error import study_data

    result = run_study("index-vs-error", overrides={"runs": "2", "snapshots": "0,20", "iterations": "40",
                                                    "widths": "3", "bootstrap": "20"}, out_dir=tmp_path)
    ds = result.dataset
    found = np.isfinite(ds["index"].values)
    assert found.any() and result.rows[0].measured == float(found.sum())
    data = study_data("random:n=100,d=4", 0)
    assert ds.loss.values[found].min() > 0 and (ds.grad_norm.values[found] <= 1e-6).all()
    assert set(np.round(ds["index"].values[found] * 25)) <= set(range(26))  # 25 parameters: steps of 1/25
    assert data.x_train.shape == (100, 4)


# -- the quick presets (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_safran_shamir_quick_preset_reproduces_the_rates(tmp_path):
    result = run_study("safran-shamir", "quick", out_dir=tmp_path)
    assert all(r.verdict == "agrees" for r in result.rows if r.quantity == "spurious_pct")
    assert all(r.verdict == "agrees" for r in result.rows if r.quantity == "min_eigenvalue_positive_pct")


@pytest.mark.slow
def test_xor_jellyfish_quick_preset_reproduces_the_rates(tmp_path):
    result = run_study("xor-jellyfish", "quick", out_dir=tmp_path)
    assert all(r.verdict == "agrees" for r in result.rows), [(r.key, r.published, r.measured) for r in result.rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["critical-points", "deep-linear", "single-neuron"])
def test_exact_quick_presets_agree_everywhere(tmp_path, name):
    result = run_study(name, "quick", out_dir=tmp_path)
    assert all(r.verdict != "differs" for r in result.rows)


@pytest.mark.slow
def test_index_vs_error_quick_preset_finds_critical_points(tmp_path):
    result = run_study("index-vs-error", "quick", out_dir=tmp_path)
    assert result.rows[0].measured >= 10 and any(r.quantity == "exponent" for r in result.rows)
