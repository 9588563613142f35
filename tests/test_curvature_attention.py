"""Hessian-vector products through attention (``nn.TransformerEncoder``): PyTorch's default CPU attention kernel has
no second derivative, so every product runs on the math kernel (:mod:`lossatlas.curvature.attention`). Checked
against a dense float64 Hessian from ``torch.autograd.functional.hessian``, and through ``lossatlas hessian``."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel
from typer.testing import CliRunner

from lossatlas.cli import app
from lossatlas.curvature.attention import math_attention
from lossatlas.curvature.hvp import FunctionHessian, HessianOperator, hvp_sum
from lossatlas.data import Dataset
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.params import flatten, functional_forward
from lossatlas.testing.reference import full_batch_loss, spectrum
from tests.attention_model import build

N, T, F, CLASSES = 23, 5, 3, 3  # batches of 8 leave an uneven last batch of 7
MODEL = f"{Path(__file__).parent / 'attention_model.py'}:build"


def _draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, F, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


@pytest.fixture(scope="module")
def problem() -> dict:
    (x, y), (xt, yt) = _draw(N, 0), _draw(9, 1)
    data = Dataset(name="tokens", x_train=x, y_train=y, x_test=xt, y_test=yt, task="classification",
                   num_classes=CLASSES)
    net = build((T, F), CLASSES).eval()
    ev = Evaluator(net, data, EvalSpec(batch_size=8, splits=("train",)))
    loss, theta = full_batch_loss(net, ev.loss_fn, x, y)
    with sdpa_kernel(SDPBackend.MATH):  # the reference, too, needs the differentiable kernel
        h = torch.autograd.functional.hessian(loss, theta, vectorize=True)
    return {"data": data, "net": net, "ev": ev, "H": (h + h.T) / 2}


def test_the_default_attention_kernel_has_no_second_derivative(problem) -> None:
    """Why the math kernel is needed: a plain product through the encoder fails, reverse-over-reverse (what the
    operator uses) and forward-over-reverse alike."""
    net = copy.deepcopy(problem["net"]).double()
    theta = {k: p.detach() for k, p in net.named_parameters()}
    x, y = problem["data"].x_train.double(), problem["data"].y_train

    def loss(th: dict) -> torch.Tensor:
        return problem["ev"].loss_fn(functional_forward(net, th, {}, x), y).mean()

    with pytest.raises(RuntimeError, match="scaled_dot_product"):
        vjp(grad(loss), theta)[1](theta)
    with pytest.raises(RuntimeError, match="scaled_dot_product"):
        jvp(grad(loss), (theta,), (theta,))


@pytest.mark.parametrize("cache", [False, True])  # forward-over-reverse, or stored reverse graphs
def test_hvp_through_attention_equals_the_dense_hessian(problem, cache) -> None:
    op = HessianOperator(problem["ev"], dtype="float64", cache=cache)
    assert op.n == problem["H"].shape[0] and op.cache is cache
    v = torch.randn(op.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), problem["H"] @ v, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(op._dense_columns(torch.eye(op.n, dtype=torch.float64)[:5], batched=True),
                               problem["H"][:5], rtol=1e-8, atol=1e-8)


def test_hvp_sum_and_function_hessian_go_through_attention(problem) -> None:
    op = HessianOperator(problem["ev"], dtype="float64", cache=False)
    v = op.to_dict(torch.randn(op.n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    total = hvp_sum(op.model, op.theta, op.buffers, op.loss_fn, op.x, op.y, v)
    torch.testing.assert_close(flatten(total) / N, problem["H"] @ flatten(v), rtol=1e-8, atol=1e-8)

    def mean_loss(th: dict) -> torch.Tensor:
        return op.loss_fn(functional_forward(op.model, th, op.buffers, op.x), op.y).mean()

    fh = FunctionHessian(mean_loss, op.theta)
    torch.testing.assert_close(fh.matvec(flatten(v)), problem["H"] @ flatten(v), rtol=1e-8, atol=1e-8)


def test_math_attention_is_counted_across_threads_and_restores_the_kernels() -> None:
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with math_attention():
            entered.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    entered.wait(10)
    with math_attention():
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert not torch.backends.cuda.flash_sdp_enabled()  # the other thread still holds it
    release.set()
    other.join(10)
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == before


def test_hessian_cli_on_a_transformer_runs_and_finds_the_top_eigenvalues(problem, tmp_path) -> None:
    npz = tmp_path / "tokens.npz"
    np.savez(npz, x=problem["data"].x_train.numpy(), y=problem["data"].y_train.numpy(),
             x_test=problem["data"].x_test.numpy(), y_test=problem["data"].y_test.numpy())
    out = tmp_path / "h.json"
    result = CliRunner().invoke(app, ["hessian", "--model", MODEL, "--data", str(npz), "--top", "2",
                                      "--batch-size", "8", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.stdout.startswith("top eigenvalues: ")
    top = json.loads(out.read_text())["data_vars"]["top_eigenvalues"]["data"]
    np.testing.assert_allclose(top, spectrum(problem["H"]).flip(0)[:2].numpy(), rtol=1e-6)
