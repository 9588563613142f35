"""Safran & Shamir's batched gradient descent (``teacher_student.gradient_descent``), which drops runs from the
stacked batch as they finish, against two independent references, bit for bit: the per-run Python loop
(``gradient_descent_loop``) and an uncompacted batched loop written here (every run stays in a batch of fixed
size until the end, frozen once finished). Batch sizes, orders and compositions vary, so a result that
depended on the batch around a run (BLAS blocking, vectorised tails, a compaction bug) would show."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossatlas.studies.teacher_student import (
    Descent,
    Objective,
    gradient_descent,
    gradient_descent_loop,
    initial_students,
    teacher,
)


def uncompacted_descent(w0: torch.Tensor, v: torch.Tensor, step: float, *, grad_tol: float = 1e-9,
                        max_steps: int = 200_000, stop_below: float | None = None) -> Descent:
    """Every run advanced in one batch of all R runs at every step (``Objective`` on the whole batch); a run
    is frozen at its first iterate with ‖∇F‖ ≤ grad_tol or F ≤ stop_below, or at max_steps."""
    r = w0.shape[0]
    objective_fn = Objective(v, w0.shape[1])
    w = w0.clone()
    done = torch.zeros(r, dtype=torch.bool)
    out_w = w0.clone()
    objective, grad_norm = np.full(r, np.nan), np.full(r, np.nan)
    steps, stop, max_increase = np.zeros(r, dtype=np.int64), np.full(r, 2, dtype=np.int64), np.full(r, -np.inf)
    previous = torch.full((r,), math.inf, dtype=w0.dtype)
    worst = torch.full((r,), -math.inf, dtype=w0.dtype)
    for t in range(max_steps + 1):
        loss, grad = objective_fn(w)
        gnorm = torch.linalg.vector_norm(grad, dim=(1, 2))
        worst = torch.maximum(worst, loss - previous)
        converged = gnorm <= grad_tol
        below = loss <= stop_below if stop_below is not None else torch.zeros_like(converged)
        new = ~done & (converged | below | (t == max_steps))
        for i in np.flatnonzero(new.numpy()):
            out_w[i], objective[i], grad_norm[i] = w[i], float(loss[i]), float(gnorm[i])
            steps[i], stop[i], max_increase[i] = t, 0 if converged[i] else 1 if below[i] else 2, float(worst[i])
        done |= new
        if bool(done.all()):
            break
        previous = loss
        w = torch.where(done[:, None, None], w, w - step * grad)
    return Descent(out_w, objective, grad_norm, steps, stop, max_increase)


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """The same float64 bits everywhere (±0 told apart), NaN where the other has NaN (of any payload)."""
    nan = np.isnan(x)
    return (x.dtype == y.dtype == np.float64 and x.shape == y.shape and np.array_equal(nan, np.isnan(y))
            and np.array_equal(x[~nan].view(np.int64), y[~nan].view(np.int64)))


def assert_bit_identical(a: Descent, b: Descent) -> None:
    """Every output the same bits, not merely close."""
    assert same_bits(a.w.numpy(), b.w.numpy()), "w"
    for name in ("objective", "grad_norm", "max_increase"):
        assert same_bits(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.steps, b.steps) and np.array_equal(a.stop, b.stop)


SAFRAN = {"grad_tol": 1e-9, "max_steps": 3000, "stop_below": 1e-3}  # the quick/full presets' stop, k = n = 4


@pytest.mark.parametrize("runs", [1, 2, 3, 8, 17, 40])
def test_compacted_descent_equals_the_uncompacted_batch(runs):
    v, w0 = teacher(4), initial_students(runs, 4, 4, 4, seed=runs)
    got = gradient_descent(w0, v, 5 / 4, **SAFRAN)
    assert_bit_identical(got, uncompacted_descent(w0, v, 5 / 4, **SAFRAN))
    assert (got.stop == 1).all()  # every run early-stopped, ...
    if runs > 2:
        assert got.steps.max() > got.steps.min()  # ... at different steps, so the batch shrank along the way


def test_compacted_descent_equals_the_per_run_loop():
    v, w0 = teacher(4), initial_students(12, 4, 4, 4, seed=3)
    assert_bit_identical(gradient_descent(w0, v, 5 / 4, **SAFRAN), gradient_descent_loop(w0, v, 5 / 4, **SAFRAN))


def test_all_stop_reasons_and_diverging_runs_are_bit_identical():
    # n = k + 1 in d = k with step 5/k: most runs reach ‖∇F‖ ≤ 1e-6, some diverge (F → inf → NaN) to the cap
    v, w0 = teacher(4), initial_students(8, 5, 4, 4, seed=2)
    kwargs = {"grad_tol": 1e-6, "max_steps": 700}
    got = gradient_descent(w0, v, 5 / 4, **kwargs)
    assert set(got.stop.tolist()) == {0, 2} and np.isnan(got.objective).any()
    assert_bit_identical(got, uncompacted_descent(w0, v, 5 / 4, **kwargs))
    assert_bit_identical(got, gradient_descent_loop(w0, v, 5 / 4, **kwargs))
    # a teacher in more dimensions than units (d = k + 1); runs end by each of the three criteria
    v, w0 = teacher(3, 4), initial_students(10, 3, 4, 3, seed=5)
    kwargs = {"grad_tol": 4e-8, "max_steps": 190, "stop_below": 1e-14}
    got = gradient_descent(w0, v, 1.0, **kwargs)
    assert set(got.stop.tolist()) == {0, 1, 2} and np.isfinite(got.objective).all()
    assert_bit_identical(got, gradient_descent_loop(w0, v, 1.0, **kwargs))


def test_a_run_ends_the_same_whatever_batch_it_is_in():
    v, w0 = teacher(5), initial_students(30, 5, 5, 5, seed=7)
    full = gradient_descent(w0, v, 1.0, **SAFRAN)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    shuffled = gradient_descent(w0[order], v, 1.0, **SAFRAN)
    inverse = torch.argsort(order)
    assert_bit_identical(full, Descent(shuffled.w[inverse], *(getattr(shuffled, f)[inverse.numpy()] for f in
                                                               ("objective", "grad_norm", "steps", "stop",
                                                                "max_increase"))))
    for start, stop in ((0, 1), (3, 10), (11, 29)):
        part = gradient_descent(w0[start:stop], v, 1.0, **SAFRAN)
        assert_bit_identical(part, Descent(full.w[start:stop], *(getattr(full, f)[start:stop] for f in
                                                                 ("objective", "grad_norm", "steps", "stop",
                                                                  "max_increase"))))
