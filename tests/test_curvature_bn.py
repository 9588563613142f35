"""What each ``--bn`` policy means for the Hessian (always over the parameters, BN statistics held fixed),
checked against the dense float64 reference Hessian of a model holding those statistics."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossatlas.cli import app
from lossatlas.curvature.analysis import HessianSpec, hessian_analysis
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.testing.reference import dense_hessian, spectrum, tiny_bn_problem


def whole_split_statistics(net: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A float64 copy whose BN buffers are what BatchNorm computes from one batch of all of ``x`` (train mode,
    momentum 1: running mean = batch mean, running var = unbiased batch variance), then in eval mode."""
    ref = copy.deepcopy(net).double()
    for m in ref.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    ref.train()
    with torch.no_grad():
        ref(x.double())
    return ref.eval()


@pytest.mark.parametrize(("policy", "split"), [("eval", "train"), ("states", "train"), ("recompute", "train"),
                                               ("recompute", "test")])
def test_each_bn_policy_against_the_dense_reference(policy, split) -> None:
    net, data = tiny_bn_problem(n=37, seed=6)
    x, y = data.split(split)
    holder = whole_split_statistics(net, data.x_train) if policy == "recompute" else net
    assert policy != "recompute" or not torch.equal(holder[1].running_mean, net[1].running_mean)
    espec = EvalSpec(batch_size=16, bn=policy, splits=(split,))
    ds, _ = hessian_analysis(net, data, HessianSpec(top=2, bottom=2, critical=True, trace=True, split=split), espec)
    h = dense_hessian(holder, Evaluator(net, data, espec).loss_fn, x, y)
    eig = spectrum(h)
    # recomputed statistics are stored in the model's float32 buffers: 6e-8 relative rounding
    rtol = 1e-6 if policy == "recompute" else 1e-8
    np.testing.assert_allclose(ds["top_eigenvalues"].values, eig.flip(0)[:2].numpy(), rtol=rtol)
    np.testing.assert_allclose(ds["bottom_eigenvalues"].values, eig[:2].numpy(), rtol=rtol)
    if policy == "recompute":  # the stored statistics give another Hessian, far outside that tolerance
        stored = spectrum(dense_hessian(net, Evaluator(net, data, espec).loss_fn, x, y))
        assert float((stored.flip(0)[:2] - eig.flip(0)[:2]).abs().max()) > 1e-3 * float(eig.abs().max())
    assert ds.attrs["trace"] == pytest.approx(float(h.trace()), rel=rtol)
    tau = ds.attrs["zero_tol"]
    assert ds.attrs["negative_count"] == int((eig < -tau).sum()) and ds.attrs["eigen_method"] == "dense"
    assert ds.attrs["bn"] == policy
    assert ds.attrs["bn_statistics"] == {"eval": "stored running statistics, held fixed",
                                         "states": "θ's own running statistics (the stored ones), held fixed",
                                         "recompute": "re-estimated on the whole training split at θ, then held "
                                                      "fixed"}[policy]


def test_the_policies_are_documented_and_printed(tmp_path) -> None:
    runner = CliRunner()
    output = runner.invoke(app, ["hessian", "--help"], env={"COLUMNS": "200"}).output
    help_text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())  # the option table's text, unwrapped
    for fragment in ("always over the parameters only", "eval = the stored running statistics",
                     "states = θ's own statistics", "recompute = re-estimated on the whole training split"):
        assert fragment in help_text, fragment
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=rng.normal(size=(30, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 30))
    result = runner.invoke(app, ["hessian", "--model", "zoo:bncnn:channels=2", "--data", str(npz), "--top", "1",
                                 "--bn", "recompute", "--out", str(tmp_path / "h.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ("BatchNorm (--bn recompute): re-estimated on the whole training split at θ, then held fixed; the Hessian "
            "is over the parameters only") in result.stdout.splitlines()
