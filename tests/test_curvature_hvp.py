"""Hessian-vector products against the dense float64 Hessian (torch.autograd.functional.hessian)."""

from __future__ import annotations

import pytest
import torch

from lossatlas.curvature.hvp import FunctionHessian, HessianOperator, gradient_sum, hvp_sum, select_parameters
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import NonFiniteError, UserInputError
from lossatlas.params import flatten
from lossatlas.testing.reference import dense_gradient, dense_hessian, tiny_bn_problem
from tests.conftest import make_classification, mlp

N_TRAIN, BATCH = 53, 16  # 53 = 3 · 16 + 5: an uneven last batch


@pytest.fixture(scope="module")
def problem() -> dict:
    """A BatchNorm CNN (eval mode, non-default running statistics) and its dense float64 Hessian."""
    net, data = tiny_bn_problem(n=N_TRAIN, seed=1)
    ev = Evaluator(net, data, EvalSpec(batch_size=BATCH, splits=("train",)))
    x, y = data.x_train, data.y_train
    return {"data": data, "net": net, "ev": ev, "H": dense_hessian(net, ev.loss_fn, x, y),
            "g": dense_gradient(net, ev.loss_fn, x, y)}


@pytest.mark.parametrize("cache", [False, True])  # forward-over-reverse, or stored reverse graphs
def test_hvp_matches_dense_hessian_with_bn_and_uneven_last_batch(problem, cache) -> None:
    op = HessianOperator(problem["ev"], dtype="float64", cache=cache)
    assert op.n == problem["H"].shape[0] and op.num_samples == N_TRAIN and op.cache is cache
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), problem["H"] @ v, rtol=1e-10, atol=1e-12)
    assert op.hvp_count == 1
    # a dict in gives a dict out, same numbers
    out = op.matvec(op.to_dict(v))
    assert list(out) == op.names
    torch.testing.assert_close(flatten(out), problem["H"] @ v, rtol=1e-10, atol=1e-12)


def test_dense_operator_and_gradient_match_reference(problem) -> None:
    op = HessianOperator(problem["ev"], dtype="float64")
    torch.testing.assert_close(op.dense(chunk=50), problem["H"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(flatten(op.gradient()), problem["g"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("batched", [True, False])  # vmap over the basis block (GPU), or one column after another
def test_dense_columns_every_path_match_the_reference(problem, cache, batched) -> None:
    op = HessianOperator(problem["ev"], cache=cache)
    basis = torch.eye(op.n, dtype=torch.float64)[40:47]
    torch.testing.assert_close(op._dense_columns(basis, batched=batched), problem["H"][40:47], rtol=1e-9, atol=1e-12)


def test_dense_build_continues_from_saved_columns_to_the_same_matrix(problem) -> None:
    """An interrupted build keeps whole blocks (``on_block``); given them back it computes only the rest."""
    saved: list[torch.Tensor] = []
    op = HessianOperator(problem["ev"])
    full = op.dense(chunk=16, on_block=lambda rows: saved.append(torch.cat(rows)))
    assert [s.shape[0] for s in saved] == [16, 32, 48, 64, 80, 96, 112, 123] and op.hvp_count == 123
    again = HessianOperator(problem["ev"])
    done: list[tuple[int, int]] = []
    resumed = again.dense(chunk=16, columns=saved[2], progress=lambda a, b: done.append((a, b)))
    assert torch.equal(resumed, full) and again.hvp_count == 123 - 48
    assert done[0] == (48, 123) and done[-1] == (123, 123)
    with pytest.raises(ValueError, match="whole number of blocks"):
        again.dense(chunk=16, columns=saved[2][:40])


def test_float32_products_are_close(problem) -> None:
    op = HessianOperator(problem["ev"], dtype="float32")
    assert op.cache  # a tiny problem fits the default 1 GiB budget
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = problem["H"] @ v
    assert op.matvec(v).dtype == torch.float64
    torch.testing.assert_close(op.matvec(v), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))


def test_batch_size_does_not_change_the_average(problem) -> None:
    """Sum of batch sums / N: batch 16 (uneven), 7 and one full batch agree to rounding."""
    v = torch.randn(problem["H"].shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for batch, cache in ((N_TRAIN, False), (BATCH, True), (7, False)):
        ev = Evaluator(problem["net"], problem["data"], EvalSpec(batch_size=batch, splits=("train",)))
        results.append(HessianOperator(ev, cache=cache).matvec(v))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-12, atol=1e-14)


def test_hvp_sum_over_shards_is_what_an_executor_needs(problem) -> None:
    """Uneven shards: Σ hvp_sum / N = H v, and Σ gradient_sum / N = ∇L."""
    op = HessianOperator(problem["ev"])
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    total = torch.zeros(op.n, dtype=torch.float64)
    grad_total = torch.zeros(op.n, dtype=torch.float64)
    for lo, hi in ((0, 20), (20, 21), (21, N_TRAIN)):
        xs, ys = op.x[lo:hi], op.y[lo:hi]
        total += flatten(hvp_sum(op.model, op.theta, op.buffers, op.loss_fn, xs, ys, v))
        grad_total += flatten(gradient_sum(op.model, op.theta, op.buffers, op.loss_fn, xs, ys)[0])
    torch.testing.assert_close(total / N_TRAIN, problem["H"] @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_total / N_TRAIN, problem["g"], rtol=1e-10, atol=1e-12)


def test_parameter_subset_by_regex_is_the_dense_sub_block(problem) -> None:
    names = [n for n, _ in problem["net"].named_parameters()]
    op = HessianOperator(problem["ev"], params=r"^(0|4)\.weight$")
    assert op.names == ["0.weight", "4.weight"]
    x, y = problem["data"].x_train, problem["data"].y_train
    ref = dense_hessian(problem["net"], problem["ev"].loss_fn, x, y, names=op.names)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref @ v, rtol=1e-10, atol=1e-12)
    assert select_parameters(names, None) == names


@pytest.mark.parametrize(("pattern", "fragment"), [("^nothing$", "selects no parameter"),
                                                   ("([", "not a valid regular expression")])
def test_bad_parameter_regex_is_a_one_line_error(problem, pattern, fragment) -> None:
    with pytest.raises(UserInputError, match="--params") as info:
        HessianOperator(problem["ev"], params=pattern)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_nan_loss_is_a_one_line_non_finite_error() -> None:
    """Non-finite values raise NonFiniteError (one line), not UserInputError: code that may skip a diverged
    point (convexity maps) catches exactly that and never swallows a real input error."""
    net = mlp()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    op = HessianOperator.from_model(net, make_classification())
    with pytest.raises(NonFiniteError, match="finite loss") as info:
        op.check_finite()
    assert "\n" not in str(info.value) and not isinstance(info.value, UserInputError)
    with pytest.raises(NonFiniteError, match="not finite"):
        op.matvec(torch.ones(op.n))


def test_bad_dtype_and_split_are_one_line_errors(problem) -> None:
    with pytest.raises(UserInputError, match="--dtype must be float32 or float64"):
        HessianOperator(problem["ev"], dtype="float16")
    with pytest.raises(UserInputError, match="split 'test' is not available"):
        HessianOperator(problem["ev"], split="test")


def test_bn_states_policy_holds_statistics_fixed() -> None:
    """Under bn=states θ carries BN statistics, but the Hessian is over parameters only (statistics held fixed):
    it equals the eval-mode Hessian, and a product is finite (torch cannot differentiate running_var)."""
    net, data = tiny_bn_problem(n=21)
    ev = Evaluator(net, data, EvalSpec(batch_size=8, bn="states", splits=("train",)))
    assert any(name.endswith("running_var") for name in ev.theta())
    op = HessianOperator(ev)
    assert not any(name.endswith(("running_var", "running_mean")) for name in op.names)
    ref = dense_hessian(net, ev.loss_fn, data.x_train, data.y_train, names=op.names)
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref @ v, rtol=1e-10, atol=1e-12)


def test_function_hessian_closed_form() -> None:
    """L(w) = w₀² w₁ + 3 w₁²: H = [[2 w₁, 2 w₀], [2 w₀, 6]]."""
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    op = FunctionHessian(lambda t: t["w"][0] ** 2 * t["w"][1] + 3 * t["w"][1] ** 2, {"w": w})
    expected = torch.tensor([[2 * w[1], 2 * w[0]], [2 * w[0], 6.0]], dtype=torch.float64)
    torch.testing.assert_close(op.dense(), expected)
    torch.testing.assert_close(flatten(op.gradient()), torch.stack([2 * w[0] * w[1], w[0] ** 2 + 6 * w[1]]))
