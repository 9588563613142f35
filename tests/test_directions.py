"""Directions: Gaussian, normalised as Li et al. (2018), deterministic, invariant to ReLU rescaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lossatlas.directions import (
    DirectionSpec,
    Ignore,
    Norm,
    gaussian_direction,
    normalize_direction,
    random_directions,
)
from lossatlas.engine import Evaluator
from lossatlas.errors import UserInputError
from lossatlas.params import add_scaled, parameters_of
from tests.conftest import bn_cnn, make_classification, mlp


def _big_theta() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(64, 100), "a.bias": torch.randn(64), "b.weight": torch.randn(10, 64) * 3}


def test_raw_directions_are_standard_gaussian() -> None:
    d = gaussian_direction(_big_theta(), torch.Generator().manual_seed(3))
    values = torch.cat([v.reshape(-1) for v in d.values()]).double().numpy()
    assert abs(values.mean()) < 4 / np.sqrt(values.size)  # zero mean within 4 standard errors
    assert stats.kstest(values, "norm").pvalue > 1e-3
    # the same test rejects the uniform "random" directions of older tools: it can fail
    uniform = np.random.default_rng(0).random(values.size)
    assert stats.kstest(uniform, "norm").pvalue < 1e-6
    assert stats.kstest(uniform - 0.5, "norm").pvalue < 1e-6


def test_filter_normalised_direction_is_gaussian_within_each_filter() -> None:
    theta = _big_theta()
    d = random_directions(theta, DirectionSpec(norm=Norm.filter, ignore=Ignore.biasbn, seed=4), 1)[0]
    w = d["a.weight"].double()
    # each filter is a Gaussian vector rescaled: standardised entries are N(0, 1)
    z = (w / w.norm(dim=1, keepdim=True) * np.sqrt(w.shape[1])).reshape(-1).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 4 / np.sqrt(z.size)


@pytest.mark.parametrize("norm", list(Norm))
def test_normalisation_scales(norm: Norm) -> None:
    theta = _big_theta()
    raw = gaussian_direction(theta, torch.Generator().manual_seed(0))
    d = normalize_direction(raw, theta, norm, Ignore.biasbn)
    assert torch.count_nonzero(d["a.bias"]) == 0
    if norm is Norm.filter:
        for k in ("a.weight", "b.weight"):
            torch.testing.assert_close(d[k].norm(dim=1), theta[k].norm(dim=1), rtol=1e-5, atol=0)
    elif norm is Norm.layer:
        for k in ("a.weight", "b.weight"):
            torch.testing.assert_close(d[k].norm(), theta[k].norm(), rtol=1e-5, atol=0)
    elif norm is Norm.model:
        dn = torch.sqrt(d["a.weight"].norm() ** 2 + d["b.weight"].norm() ** 2)
        tn = torch.sqrt(theta["a.weight"].norm() ** 2 + theta["b.weight"].norm() ** 2)
        torch.testing.assert_close(dn, tn, rtol=1e-5, atol=0)
    else:
        torch.testing.assert_close(d["a.weight"], raw["a.weight"])


def test_ignore_none_keeps_one_dimensional_tensors() -> None:
    theta = _big_theta()
    d = random_directions(theta, DirectionSpec(norm=Norm.filter, ignore=Ignore.none, seed=0), 1)[0]
    torch.testing.assert_close(d["a.bias"].norm(), theta["a.bias"].norm(), rtol=1e-5, atol=0)


def test_directions_are_deterministic_and_seeded() -> None:
    theta = _big_theta()
    a = random_directions(theta, DirectionSpec(seed=7), 2)
    b = random_directions(theta, DirectionSpec(seed=7), 2)
    c = random_directions(theta, DirectionSpec(seed=8), 2)
    assert all(torch.equal(a[i][k], b[i][k]) for i in range(2) for k in theta)
    assert not torch.equal(a[0]["a.weight"], c[0]["a.weight"])
    assert not torch.equal(a[0]["a.weight"], a[1]["a.weight"])
    # the first direction of a 2D surface is the direction of the 1D surface with the same seed
    one = random_directions(theta, DirectionSpec(seed=7), 1)
    assert torch.equal(one[0]["b.weight"], a[0]["b.weight"])


def test_bad_spec_values_are_one_line_errors() -> None:
    with pytest.raises(UserInputError, match="--norm must be one of"):
        DirectionSpec(norm="filters")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="--ignore must be one of"):
        DirectionSpec(ignore="bias")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="seed"):
        DirectionSpec(seed=-1)


def _curve(net, data, norm: Norm, alphas: list[float]) -> np.ndarray:
    ev = Evaluator(net, data)
    theta = ev.theta()
    d = random_directions(theta, DirectionSpec(norm=norm, ignore=Ignore.biasbn, seed=11), 1)[0]
    return np.array([ev.evaluate_one(add_scaled(theta, [d], [a]))["train_loss"] for a in alphas])


def test_filter_normalised_curves_are_invariant_to_relu_rescaling() -> None:
    """Li et al. Sec. 4: scaling layer l by c and layer l+1 by 1/c leaves f(θ) unchanged; with filter
    normalisation the 1D curve is unchanged too, with raw directions it is not."""
    data = make_classification(n=200)
    net = mlp(hidden=16)
    scaled = mlp(hidden=16)
    c = 7.0
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    alphas = [-1.0, -0.5, -0.1, 0.0, 0.3, 0.8, 1.0]
    base_filter = _curve(net, data, Norm.filter, alphas)
    np.testing.assert_allclose(_curve(scaled, data, Norm.filter, alphas), base_filter, rtol=1e-5)
    base_raw = _curve(net, data, Norm.none, alphas)
    scaled_raw = _curve(scaled, data, Norm.none, alphas)
    assert np.max(np.abs(scaled_raw - base_raw) / np.abs(base_raw)) > 1e-2


def test_bn_states_directions_cover_running_stats() -> None:
    from lossatlas.engine import BNPolicy, EvalSpec

    net = bn_cnn()
    ev = Evaluator(net, make_classification(image=True), EvalSpec(bn=BNPolicy.states))
    theta = ev.theta()
    assert "1.running_mean" in theta and "1.running_mean" not in parameters_of(net)
    d = random_directions(theta, DirectionSpec(ignore=Ignore.none), 1)[0]
    torch.testing.assert_close(d["1.running_var"].norm(), theta["1.running_var"].norm(), rtol=1e-5, atol=0)
