"""Parameter dicts, functional evaluation and checkpoint loading."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.params import (
    add_scaled,
    flatten,
    functional_forward,
    load_checkpoint,
    parameters_of,
    read_state_dict,
    save_checkpoint,
    stack_points,
    unflatten,
)
from tests.conftest import bn_cnn, mlp


def test_flatten_roundtrip() -> None:
    theta = parameters_of(mlp())
    back = unflatten(flatten(theta), theta)
    assert list(back) == list(theta)
    for k in theta:
        torch.testing.assert_close(back[k], theta[k], rtol=0, atol=0)
    with pytest.raises(ValueError):
        unflatten(torch.zeros(3), theta)


def test_stack_points_matches_add_scaled() -> None:
    theta = parameters_of(mlp())
    g = torch.Generator().manual_seed(1)
    dirs = [{k: torch.randn(v.shape, generator=g) for k, v in theta.items()} for _ in range(2)]
    coords = torch.tensor([[0.5, -1.0], [0.0, 0.0], [2.0, 0.25]], dtype=torch.float64)
    stacked = stack_points(theta, dirs, coords)
    for p in range(3):
        ref = add_scaled(theta, dirs, coords[p].tolist())
        for k in theta:
            torch.testing.assert_close(stacked[k][p], ref[k], rtol=1e-6, atol=1e-6)


def test_functional_forward_equals_module_forward() -> None:
    net = bn_cnn()
    x = torch.randn(5, 1, 4, 4)
    out = functional_forward(net, parameters_of(net), dict(net.named_buffers()), x)
    torch.testing.assert_close(out, net(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_roundtrip(tmp_path, suffix) -> None:
    net = bn_cnn()
    path = save_checkpoint(net, tmp_path / f"w{suffix}")
    other = bn_cnn(seed=5)
    loaded = load_checkpoint(other, path)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # the model passed in is not modified
    assert not torch.equal(other.state_dict()["0.weight"], net.state_dict()["0.weight"])


def test_checkpoint_mismatch_names_first_parameter(tmp_path) -> None:
    small = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    path = save_checkpoint(small, tmp_path / "small.safetensors")
    with pytest.raises(UserInputError, match=r"parameter '2.weight' has shape \(3, 8\)") as info:
        load_checkpoint(mlp(), path)
    assert "\n" not in str(info.value)
    bigger = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    with pytest.raises(UserInputError, match="'3.weight' the model lacks"):
        load_checkpoint(small, save_checkpoint(bigger, tmp_path / "big.pt"))
    with pytest.raises(UserInputError, match="'2.bias' is missing"):
        load_checkpoint(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
                        save_checkpoint({"0.weight": torch.zeros(8, 6), "0.bias": torch.zeros(8),
                                         "2.weight": torch.zeros(3, 8)}, tmp_path / "part.pt"))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoint_is_never_unpickled(tmp_path, capsys) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(UserInputError, match="weights_only"):
        read_state_dict(path)
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserInputError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(UserInputError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
