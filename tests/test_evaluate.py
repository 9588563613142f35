"""The evaluation engine against naive references: per-point loops, torch's own losses, BN by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossatlas.data import Dataset
from lossatlas.directions import DirectionSpec, Ignore, random_directions
from lossatlas.engine import BNPolicy, EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.params import add_scaled
from tests.conftest import bn_cnn, make_classification, mlp

COORDS = torch.tensor([[0.0, 0.0], [0.4, -0.3], [-1.0, 0.7], [0.25, 0.25], [1.5, -1.5]], dtype=torch.float64)


def _naive(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Whole-split loss and accuracy with a plain forward on all samples at once."""
    with torch.no_grad():
        out = net(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def _moved(net: nn.Module, point: dict[str, torch.Tensor]) -> nn.Module:
    clone = copy.deepcopy(net)
    state = clone.state_dict()
    state.update(point)
    clone.load_state_dict(state)
    return clone.eval()


@pytest.mark.parametrize("bn", [BNPolicy.eval, BNPolicy.states])
@pytest.mark.parametrize("model", ["mlp", "bn_cnn"])
def test_batched_equals_naive_per_point(model: str, bn: BNPolicy) -> None:
    data = make_classification(image=model == "bn_cnn")
    net = mlp() if model == "mlp" else bn_cnn()
    ev = Evaluator(net, data, EvalSpec(batch_size=16, bn=bn))  # 103 = 6·16 + 7: an uneven last batch
    theta = ev.theta()
    dirs = random_directions(theta, DirectionSpec(ignore=Ignore.none, seed=2), 2)
    batched = ev.evaluate_coords(theta, dirs, COORDS)
    for p in range(len(COORDS)):
        point = add_scaled(theta, dirs, COORDS[p].tolist())
        reference = _moved(net, point)
        for split in ("train", "test"):
            loss, acc = _naive(reference, *data.split(split))
            np.testing.assert_allclose(float(batched[f"{split}_loss"][p]), loss, rtol=1e-5)
            np.testing.assert_allclose(float(batched[f"{split}_accuracy"][p]), acc, rtol=1e-12)
        one = ev.evaluate_one(point)
        np.testing.assert_allclose(float(batched["train_loss"][p]), one["train_loss"], rtol=1e-5)


def test_points_per_pass_does_not_change_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """One point per pass (plain forward passes) vs all points in one vmapped pass: the same numbers."""
    data = make_classification()
    small = Evaluator(mlp(), data, EvalSpec(batch_size=50))
    big = Evaluator(mlp(), data, EvalSpec(batch_size=50))
    monkeypatch.setattr(small, "points_per_pass", lambda *a: 1)
    monkeypatch.setattr(big, "_one_point_per_pass", lambda points=0: False)
    assert big.points_per_pass() >= len(COORDS)
    passes: dict[str, list[int]] = {"small": [], "big": []}  # points per pass
    real_one, real_stacked = small._point_by_point, big.evaluate_stacked

    def one_by_one(point, p, buffers):  # type: ignore[no-untyped-def]
        passes["small"].append(p)
        return real_one(point, p, buffers)

    def stacked(points):  # type: ignore[no-untyped-def]
        passes["big"].append(next(iter(points.values())).shape[0])
        return real_stacked(points)

    monkeypatch.setattr(small, "_point_by_point", one_by_one)
    monkeypatch.setattr(big, "evaluate_stacked", stacked)
    theta = small.theta()
    dirs = random_directions(theta, DirectionSpec(seed=0), 2)
    a, b = small.evaluate_coords(theta, dirs, COORDS), big.evaluate_coords(theta, dirs, COORDS)
    assert passes == {"small": [1] * len(COORDS), "big": [len(COORDS)]}
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9)


def test_recompute_bn_matches_manual_reestimation() -> None:
    data = make_classification(image=True, n=90)
    net = bn_cnn()
    ev = Evaluator(net, data, EvalSpec(batch_size=30, bn=BNPolicy.recompute))
    theta = ev.theta()
    d = random_directions(theta, DirectionSpec(seed=5), 1)
    point = add_scaled(theta, d, [0.6])
    got = ev.evaluate_coords(theta, d, torch.tensor([[0.6]], dtype=torch.float64))
    # reference: what BatchNorm computes from ONE batch of the whole training split (train mode, a cumulative
    # average over that single batch = its mean and unbiased variance), layer after layer
    ref = _moved(net, point)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ref.train()
    with torch.no_grad():
        ref(data.x_train)
    ref.eval()
    loss, _ = _naive(ref, data.x_train, data.y_train)
    np.testing.assert_allclose(float(got["train_loss"][0]), loss, rtol=1e-5)
    # and it differs from keeping the old statistics (the policy matters)
    stale, _ = _naive(_moved(net, point), data.x_train, data.y_train)
    assert abs(stale - loss) > 1e-4


def test_recompute_bn_does_not_depend_on_the_batch_size() -> None:
    """Whole-split statistics (Σx, Σx² per channel in float64, layer by layer): batch 7 and batch 1000 give the
    same surface. Averaging per-batch statistics (momentum=None over batches) would not: an uneven last batch
    counts too much and the variance becomes a mean of within-batch variances."""
    data = make_classification(image=True, n=90)
    net = bn_cnn()
    coords = torch.tensor([[0.0], [0.4], [-0.9]], dtype=torch.float64)
    values = []
    for batch_size in (7, 1000):
        ev = Evaluator(net, data, EvalSpec(batch_size=batch_size, bn=BNPolicy.recompute))
        theta = ev.theta()
        d = random_directions(theta, DirectionSpec(seed=5), 1)
        values.append(ev.evaluate_coords(theta, d, coords))
    for k in values[0]:
        torch.testing.assert_close(values[0][k], values[1][k], rtol=1e-5, atol=1e-7)


def test_user_model_is_unchanged() -> None:
    net = bn_cnn()
    net.train()  # a model left in train mode must stay in train mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = make_classification(image=True)
    for bn in BNPolicy:
        ev = Evaluator(net, data, EvalSpec(bn=bn, batch_size=40))
        theta = ev.theta()
        dirs = random_directions(theta, DirectionSpec(seed=1), 1)
        ev.evaluate_coords(theta, dirs, torch.tensor([[0.5], [1.0]], dtype=torch.float64))
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mse_regression_against_closed_form() -> None:
    """Linear model, MSE: L(θ + αd) is an exact quadratic we can write down."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(57, 4, generator=g, dtype=torch.float64)
    y = torch.randn(57, 2, generator=g, dtype=torch.float64)
    data = Dataset("reg", x.float(), y.float(), None, None, "regression", None)
    net = nn.Linear(4, 2, bias=False)
    ev = Evaluator(net, data, EvalSpec(loss="mse", batch_size=10))
    theta = ev.theta()
    d = {"weight": torch.randn(2, 4, generator=g)}
    alphas = torch.linspace(-2, 2, 9, dtype=torch.float64)
    got = ev.evaluate_coords(theta, [d], alphas[:, None])["train_loss"].numpy()
    w, dw = theta["weight"].double(), d["weight"].double()
    xx, yy = x.float().double(), y.float().double()
    exact = [float((((w + a * dw) @ xx.T).T - yy).pow(2).mean()) for a in alphas]
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    assert ev.metric_names == ["train_loss"]


def test_custom_loss_spec(tmp_path) -> None:
    path = tmp_path / "myloss.py"
    path.write_text("import torch\ndef hinge(out, y):\n    return torch.relu(1 - out.gather(1, y[:, None])[:, 0])\n")
    data = make_classification()
    ev = Evaluator(mlp(), data, EvalSpec(loss=f"{path}:hinge"))
    with torch.no_grad():
        out = mlp()(data.x_train)
    ref = float(torch.relu(1 - out.gather(1, data.y_train[:, None])[:, 0]).mean())
    np.testing.assert_allclose(ev.evaluate_one(ev.theta())["train_loss"], ref, rtol=1e-6)
    with pytest.raises(UserInputError, match="has no function 'nope'"):
        EvalSpec(loss=f"{path}:nope") and Evaluator(mlp(), data, EvalSpec(loss=f"{path}:nope"))
    with pytest.raises(UserInputError, match="unknown loss"):
        Evaluator(mlp(), data, EvalSpec(loss="hinge"))


def test_eval_spec_validation() -> None:
    with pytest.raises(UserInputError, match="--bn must be one of"):
        EvalSpec(bn="train")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="--batch-size"):
        EvalSpec(batch_size=0)
