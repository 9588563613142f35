"""The training loop: checkpoints from the initial point on, deterministic, resumable."""

from __future__ import annotations

import csv

import pytest
import torch

from lossatlas.errors import UserInputError
from lossatlas.params import read_state_dict
from lossatlas.training import TrainSpec, checkpoint_path, list_checkpoints, train
from tests.conftest import bn_cnn, make_classification, mlp


def test_checkpoints_metrics_and_determinism(tmp_path) -> None:
    data = make_classification(n=120)
    spec = TrainSpec(epochs=4, batch_size=32, lr=0.1, save_every=2, seed=3)
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = train(net, data, spec, tmp_path / "a")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # user's model untouched
    names = [p.name for p in list_checkpoints(tmp_path / "a")]
    assert names == ["epoch_0000.safetensors", "epoch_0002.safetensors", "epoch_0004.safetensors"]
    init = read_state_dict(checkpoint_path(tmp_path / "a", 0))
    assert all(torch.equal(init[k], before[k]) for k in before)
    rows = list(csv.DictReader((tmp_path / "a" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # the metrics log is the full-split mean loss of the checkpoint (an independent recomputation)
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(trained(data.x_train), data.y_train)
    assert abs(float(rows[-1]["train_loss"]) - float(ref)) < 1e-5
    train(mlp(), data, spec, tmp_path / "b")
    a, b = (read_state_dict(checkpoint_path(tmp_path / d, 4)) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_training_resumes_to_identical_weights(tmp_path) -> None:
    data = make_classification(n=100, image=True)
    spec = TrainSpec(epochs=3, batch_size=16, lr=0.05, seed=1)
    train(bn_cnn(), data, spec, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_two(epoch: int, _n: int, _m: dict[str, float]) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(bn_cnn(), data, spec, tmp_path / "cut", progress=stop_after_two)
    train(bn_cnn(), data, spec, tmp_path / "cut")
    a = read_state_dict(checkpoint_path(tmp_path / "full", 3))
    b = read_state_dict(checkpoint_path(tmp_path / "cut", 3))
    assert all(torch.equal(a[k], b[k]) for k in a)  # BN running stats included
    rows = list(csv.DictReader((tmp_path / "cut" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_train_spec_validation_and_config_guard(tmp_path) -> None:
    for kwargs, fragment in [({"epochs": -1}, "--epochs"), ({"lr": 0}, "--lr"), ({"optimizer": "lbfgs"},
                             "--optimizer"), ({"momentum": 1.5}, "--momentum"), ({"save_every": 0}, "--save-every"),
                             ({"loss": "hinge"}, "unknown loss")]:
        with pytest.raises(UserInputError, match=fragment):
            TrainSpec(**kwargs)  # type: ignore[arg-type]
    data = make_classification(n=40)
    train(mlp(), data, TrainSpec(epochs=1), tmp_path / "r")
    with pytest.raises(UserInputError, match="different configuration"):
        train(mlp(), data, TrainSpec(epochs=1, lr=0.2), tmp_path / "r")


def test_kill_between_metrics_row_and_state_file_does_not_duplicate_rows(tmp_path, monkeypatch) -> None:
    """A crash after epoch 2's metrics row is appended but before state.pt is replaced: the resumed run repeats
    epoch 2 and must not log it twice; the log equals an uninterrupted run's."""
    data = make_classification(n=60)
    spec = TrainSpec(epochs=3, batch_size=16, lr=0.05, seed=1)
    train(mlp(), data, spec, tmp_path / "full")
    real_save = torch.save

    def crash_at_epoch_two(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", crash_at_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(mlp(), data, spec, tmp_path / "cut")
    monkeypatch.setattr(torch, "save", real_save)
    train(mlp(), data, spec, tmp_path / "cut")
    full, cut = ((tmp_path / d / "metrics.csv").read_text() for d in ("full", "cut"))
    assert [line.split(",")[0] for line in cut.splitlines()[1:]] == ["0", "1", "2", "3"]
    assert cut == full
