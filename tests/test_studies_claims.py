"""The seed claims no study covered before issue 17: Safran & Shamir with n = k + 2, Li et al.'s random-direction
cosine, Nguyen & Hein's wide layer — against closed forms, autograd and direct evaluations, plus small presets."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lossatlas.directions import DirectionSpec, random_directions
from lossatlas.paths.pca import expected_abs_cos
from lossatlas.studies import run_study
from lossatlas.studies.nguyen_hein import (
    Net,
    classify,
    end_conditions,
    forward,
    jacobian,
    levenberg_marquardt,
    mean_loss,
    regression_data,
)
from lossatlas.studies.random_directions import (
    filter_normalised_abs_cos,
    gaussian_abs_cos,
    model_abs_cos,
    perturbed_filters,
)
from lossatlas.studies.safran_shamir_overparam import classify_ends
from lossatlas.studies.teacher_student import gradient_descent, initial_students, population_loss, teacher
from lossatlas.studies.verdict import seed_ref

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: one thread is faster


def _seed_window(number: str, line: int) -> str:
    files = sorted(SEEDS.glob(f"{number}_*.txt"))
    if not files:
        pytest.skip("the lecture notes (../shared/seeds) are not here")
    lines = files[0].read_text().splitlines()
    return "\n".join(lines[max(0, line - 6): line + 5])


def _check_sources(rows, seed_words: dict[str, str]) -> None:
    """Every row has a source and a ref; published refs name a paper with a year and point at a seed line whose
    neighbourhood holds the claim's words; derived refs start with an importable function."""
    assert rows
    for r in rows:
        assert r.source in ("published", "derived", "protocol", "sanity") and r.ref.strip()
        if r.source == "published":
            refs = seed_ref(r.ref)
            assert refs and any(str(y) in r.ref for y in range(1990, 2030)), r.ref
            for number, line in refs:
                assert seed_words[number] in _seed_window(number, line), (number, line)
        if r.source == "derived":
            path = r.ref.split(":")[0].split()[0]
            module, _, name = path.rpartition(".")
            assert callable(getattr(importlib.import_module(module), name))


# -- random directions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "mean"), [(2, 2 / math.pi), (3, 0.5), (4, 4 / (3 * math.pi))])
def test_exact_abs_cos_matches_elementary_closed_forms(n, mean):
    # n = 2: E|cos φ| = 2/π; n = 3: |cos| is uniform on [0, 1] (Archimedes); n = 4: E|cos| = 4/(3π)
    assert expected_abs_cos(n)[1] == pytest.approx(mean, rel=1e-12)


def test_exact_abs_cos_approaches_the_published_formula():
    ratios = [expected_abs_cos(n)[1] / expected_abs_cos(n)[0] for n in (10, 100, 10_000)]
    assert ratios[0] > ratios[1] > ratios[2] > 1
    assert ratios[2] - 1 == pytest.approx(1 / (4 * 10_000), rel=0.01)  # Γ-ratio expansion: 1 + 1/(4n) + O(n⁻²)


def test_gaussian_pairs_follow_the_exact_law():
    # n = 3: |cos| ~ Uniform(0, 1) exactly; n = 10: cos² ~ Beta(1/2, (n − 1)/2)
    x3 = gaussian_abs_cos(3, 4000, seed=1)
    assert stats.kstest(x3, "uniform").pvalue > 1e-3
    x10 = gaussian_abs_cos(10, 4000, seed=2)
    assert stats.kstest(x10**2, stats.beta(0.5, 4.5).cdf).pvalue > 1e-3
    se = x10.std(ddof=1) / math.sqrt(x10.size)
    assert abs(x10.mean() - expected_abs_cos(10)[1]) < 4 * se


def test_gaussian_pairs_are_seeded_and_chunking_does_not_change_them():
    a = gaussian_abs_cos(50, 30, seed=5)
    np.testing.assert_array_equal(a, gaussian_abs_cos(50, 30, seed=5))
    assert not np.array_equal(a, gaussian_abs_cos(50, 30, seed=6))
    assert gaussian_abs_cos(50, 30, seed=5, chunk_entries=100).shape == (30,)


def _uneven_theta() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(20, 3, generator=g) * 3.0, "a.bias": torch.randn(20, generator=g),
            "b.weight": torch.randn(8, 20, generator=g), "c.weight": torch.randn(4, 8, 2, 2, generator=g) * 0.3}


def test_filter_normalised_effective_dimension_matches_the_second_moment():
    theta = _uneven_theta()
    norms, sizes = perturbed_filters(theta)
    assert sizes.sum() == 60 + 160 + 128 and norms.size == 20 + 8 + 4  # the bias is ignored (Li et al.'s default)
    n, n_eff, expected = filter_normalised_abs_cos(theta)
    a = norms / norms.sum()
    assert n == 348 and n_eff == pytest.approx(1 / float(sum(a[i] ** 2 / sizes[i] for i in range(a.size))))
    assert n_eff < n and expected == pytest.approx(math.sqrt(2 / (math.pi * n_eff)))
    # E cos² = Σ a_f²/n_f = 1/n_eff exactly (no normal approximation), checked on the real directions
    cos = model_abs_cos(theta, 3000, seed=0)
    second = cos**2
    assert abs(second.mean() - 1 / n_eff) < 4 * second.std(ddof=1) / math.sqrt(second.size)


def test_filter_normalised_equal_filters_give_the_gaussian_dimension():
    theta = {"w": torch.ones(50, 40)}  # every filter the same size and norm: n_eff = n
    n, n_eff, expected = filter_normalised_abs_cos(theta)
    assert n == 2000 and n_eff == pytest.approx(2000) and expected == pytest.approx(expected_abs_cos(2000)[0])


def test_model_abs_cos_is_the_cosine_of_the_library_directions():
    theta = _uneven_theta()
    d1, d2 = random_directions(theta, DirectionSpec(seed=7), 2)
    v1 = torch.cat([d1[k].double().flatten() for k in theta])
    v2 = torch.cat([d2[k].double().flatten() for k in theta])
    assert model_abs_cos(theta, 1, seed=7)[0] == pytest.approx(float(abs(v1 @ v2) / (v1.norm() * v2.norm())))


def test_random_directions_quick_rows(tmp_path):
    result = run_study("random-directions", "quick", {"dims": "10,1000", "pairs": "300", "models": "mlp",
                                                      "model_pairs": "40"}, out_dir=tmp_path)
    rows = {(r.quantity, tuple(r.key.values())): r for r in result.rows}
    assert set(rows) == {("abs_cos", (10,)), ("abs_cos_exact", (10,)), ("abs_cos", (1000,)),
                         ("abs_cos_exact", (1000,)), ("abs_cos_model", ("mlp",))}
    assert rows[("abs_cos", (10,))].expected == pytest.approx(math.sqrt(2 / (10 * math.pi)))
    assert rows[("abs_cos", (10,))].source == "published" and rows[("abs_cos_exact", (10,))].source == "derived"
    assert rows[("abs_cos_model", ("mlp",))].source == "derived"
    assert all(r.verdict != "differs" for r in result.rows)
    assert rows[("abs_cos", (1000,))].margin == pytest.approx(0.1 * math.sqrt(2 / (1000 * math.pi)))
    _check_sources(result.rows, {"002": r"\sqrt{\frac{2}{\pi n}}"})


# -- Safran & Shamir, n = k + 2 -----------------------------------------------------------------------------------
def test_classify_ends_gate_and_threshold():
    objective = np.array([5e-4, 2e-2, 2e-2, np.nan, 3e-2, 1e-3])
    stop = np.array([1, 0, 2, 3, 0, 0])
    converged, spurious = classify_ends(objective, stop, 1e-3)
    np.testing.assert_array_equal(converged, [True, True, False, False, True, True])
    np.testing.assert_array_equal(spurious, [False, True, False, False, True, False])


def test_step_five_over_k_diverges_at_n_k_plus_2_and_five_over_n_does_not():
    # the set-up check behind the study's step 5/n (NOTES): at k = 6, n = 8 the tables' step 5/k blows up
    k, n = 6, 8
    w0 = initial_students(40, n, k, k, seed=1)
    wild = gradient_descent(w0, teacher(k), 5 / k, grad_tol=1e-9, max_steps=1500, stop_below=1e-3)
    tame = gradient_descent(w0, teacher(k), 5 / n, grad_tol=1e-9, max_steps=1500, stop_below=1e-3)
    assert (~np.isfinite(wild.objective)).sum() >= 5
    assert np.isfinite(tame.objective).all() and (tame.max_increase <= 1e-12).all()


def test_gd_ends_against_direct_evaluation():
    k, n = 6, 8
    v = teacher(k)
    end = gradient_descent(initial_students(12, n, k, k, seed=3), v, 5 / n, grad_tol=1e-9, max_steps=20_000,
                           stop_below=1e-3)
    converged, spurious = classify_ends(end.objective, end.stop, 1e-3)
    assert converged.all()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, k, generator=g, dtype=torch.float64)
    target = torch.relu(x @ v.T).sum(1)
    for i in range(12):
        w = end.w[i]
        direct = 0.5 * ((torch.relu(x @ w.T).sum(1) - target) ** 2)  # Monte-Carlo F: independent of the closed form
        assert float(direct.mean()) == pytest.approx(float(end.objective[i]), rel=0.05, abs=2e-4)
        if end.stop[i] == 0:  # autograd gradient of the closed-form loss, not Objective's hand-written one
            wr = w.clone().requires_grad_()
            (grad,) = torch.autograd.grad(population_loss(wr, v), wr)
            assert float(grad.norm()) <= 1.01e-9
        assert spurious[i] == (float(direct.mean()) > 1e-3 + 5 * float(direct.std()) / math.sqrt(x.shape[0]))


def test_safran_shamir_overparam_quick_rows(tmp_path):
    result = run_study("safran-shamir-overparam", "quick", {"ks": "6,7", "runs": "80"}, out_dir=tmp_path)
    assert [dict(r.key) for r in result.rows] == [{"k": 6, "n": 8}, {"k": 7, "n": 9}]
    for r in result.rows:
        assert r.quantity == "spurious_pct" and r.expected == 0.0 and r.source == "published"
        assert r.margin == 5.0 and r.runs == 80 - r.unconverged and r.verdict != "differs"
    _check_sources(result.rows, {"004": "k + 2"})


def test_safran_shamir_overparam_runs_stopped_early_are_unconverged_not_failed(tmp_path):
    result = run_study("safran-shamir-overparam", "quick", {"ks": "8", "runs": "20", "max_steps": "3"},
                       out_dir=tmp_path)
    (row,) = result.rows
    assert row.verdict == "not comparable" and row.unconverged == 20 and row.measured is None
    assert "unconverged" in row.note


# -- Nguyen & Hein ------------------------------------------------------------------------------------------------
def _problem(d1: int = 7, runs: int = 3):
    x, y = regression_data(5, 3, seed=11)
    net = Net(3, d1, 2)
    return net, net.init(runs, seed=4), x, y


def test_jacobian_against_autograd():
    net, theta, x, _ = _problem()
    f1, f2, _ = forward(net, theta, x)
    jac = jacobian(net, theta, x, f1, f2)
    for i in range(theta.shape[0]):
        ref = torch.autograd.functional.jacobian(lambda t: forward(net, t[None], x)[2][0], theta[i])
        torch.testing.assert_close(jac[i], ref, rtol=1e-12, atol=1e-14)


def test_forward_against_a_naive_loop():
    net, theta, x, y = _problem()
    w1, w2, w3 = net.unpack(theta)
    for r in range(theta.shape[0]):
        total = 0.0
        for i in range(x.shape[1]):
            h1 = [1 / (1 + math.exp(-float(w1[r, u] @ x[:, i]))) for u in range(net.d1)]
            h2 = [1 / (1 + math.exp(-sum(float(w2[r, j, u]) * h1[u] for u in range(net.d1)))) for j in range(net.d2)]
            out = sum(float(w3[r, 0, j]) * h2[j] for j in range(net.d2))
            total += 0.5 * (out - float(y[i])) ** 2 / x.shape[1]
        assert float(mean_loss(net, theta, x, y)[r]) == pytest.approx(total, rel=1e-12)


def test_levenberg_marquardt_ends_against_direct_checks():
    x, y = regression_data(8, 3, seed=2)
    net = Net(3, 10, 3)
    scale = 0.5 * float((y * y).mean())
    theta0 = net.init(16, seed=9)
    ends = levenberg_marquardt(net, theta0, x, y, grad_tol=1e-9, stop_below=1e-6 * scale, max_steps=400)
    converged, at_global = classify(ends.loss / scale, ends.stop, 1e-6)
    direct = mean_loss(net, ends.theta, x, y).numpy()  # loss recomputed from the returned parameters
    np.testing.assert_allclose(direct, ends.loss, rtol=1e-10, atol=1e-300)
    assert (direct <= mean_loss(net, theta0, x, y).numpy()).all()  # a descent method: never above the start
    for i in range(16):
        t = ends.theta[i:i + 1].clone().requires_grad_()
        (grad,) = torch.autograd.grad(mean_loss(net, t, x, y).sum(), t)
        if ends.stop[i] == 0:
            assert float(grad.norm()) <= 1.01e-9
        elif ends.stop[i] == 1:
            assert direct[i] <= 1e-6 * scale
        assert at_global[i] == (converged[i] and direct[i] <= 1e-6 * scale)
    assert at_global.sum() >= 12  # d1 = 10 >= m = 8: the wide net fits the data from most starts


def test_levenberg_marquardt_batched_equals_one_run_at_a_time():
    net, theta, x, y = _problem(runs=4)
    scale = 0.5 * float((y * y).mean())
    kw = {"grad_tol": 1e-9, "stop_below": 1e-8 * scale, "max_steps": 200}
    batch = levenberg_marquardt(net, theta, x, y, **kw)
    for i in range(4):
        alone = levenberg_marquardt(net, theta[i:i + 1], x, y, **kw)
        # batched and single matrix products round differently (~1e-17 in JJᵀ); near the zero-loss manifold LM
        # moves along flat directions, so the iterates agree to rounding amplified there, not bit for bit
        assert (alone.steps[0], alone.stop[0]) == (batch.steps[i], batch.stop[i])
        assert alone.loss[0] == pytest.approx(batch.loss[i], rel=1e-6, abs=1e-14)
        torch.testing.assert_close(alone.theta[0], batch.theta[i], rtol=1e-4, atol=1e-6)


def test_saturation_bounds_the_second_layer_gradient():
    # ‖∇_{W₂}L‖ = ‖δ₂F₁ᵀ‖/m >= σ_min(F₁) ‖δ₂‖/m, with ‖δ₂‖ = saturation · ‖W₃‖ ‖r‖ (d₁ >= m: F₁ has rank m)
    net, theta, x, y = _problem(d1=9, runs=3)
    cond = end_conditions(net, theta, x, y)
    t = theta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mean_loss(net, t, x, y).sum(), t)
    g2 = net.unpack(grad)[1].flatten(1).norm(dim=1).numpy()
    f1 = forward(net, theta, x)[0]
    smin = torch.linalg.svdvals(f1)[:, -1].numpy()
    res = (forward(net, theta, x)[2] - y).norm(dim=1).numpy()
    bound = smin * cond["saturation"] * cond["w3_norm"] * res / x.shape[1]
    assert (g2 >= bound * (1 - 1e-9)).all() and (bound > 0).all()
    assert (cond["saturation"] <= 0.25).all()


def test_nguyen_hein_quick_rows(tmp_path):
    result = run_study("nguyen-hein", "quick", {"widths": "3,12", "runs": "30"}, out_dir=tmp_path)
    narrow, wide = result.rows
    assert (narrow.quantity, narrow.source, narrow.expected, narrow.verdict) == (
        "global_pct_narrow", "protocol", None, "not comparable")
    assert (wide.quantity, wide.source, wide.expected, wide.margin) == ("global_pct", "published", 100.0, 5.0)
    assert dict(wide.key) == {"d1": 12, "m": 12} and wide.verdict != "differs"
    _check_sources(result.rows, {"003": "global minimum"})


def test_nguyen_hein_runs_stopped_early_are_unconverged_not_failed(tmp_path):
    result = run_study("nguyen-hein", "quick", {"widths": "24", "runs": "10", "max_steps": "1"}, out_dir=tmp_path)
    (row,) = result.rows
    assert row.verdict == "not comparable" and row.unconverged == 10 and "unconverged" in row.note
