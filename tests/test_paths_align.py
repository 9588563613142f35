"""Weight matching (Ainsworth et al. 2023): derived permutation specs leave every zoo net's function unchanged,
aligning a permuted copy recovers the original exactly, one group's matching equals a brute-force search."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.paths.align import (
    align_checkpoint,
    align_weights,
    apply_permutation,
    load_spec,
    permutation_spec,
    weight_matching,
)
from tests.conftest import make_classification, mlp

# expected groups: one per hidden layer / conv; ResNets: one per residual stream + one inside each block
# (resnet20: 3 streams + 9 blocks; wrn-10-1: 3 streams, stage 1 shares the stem's, + 3 blocks)
ZOO = [("zoo:mlp:widths=12-10", (6,), 2), ("zoo:linear:widths=5-4", (6,), 2), ("zoo:two_layer:hidden=7", (6,), 1),
       ("zoo:cnn1d:channels=4", (20,), 3), ("zoo:bncnn:channels=4-6-5", (1, 8, 8), 3),
       ("zoo:vgg9", (1, 4, 4), 8), ("zoo:resnet20", (1, 6, 6), 12), ("zoo:wrn:depth=10,k=1", (1, 6, 6), 6)]


def _with_bn_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Running statistics that differ per channel (so a wrong permutation of them would show)."""
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(torch.randn(16, *shape, generator=torch.Generator().manual_seed(i)) * 2 + 0.5)
    return model.eval()


def _random_perms(spec, state, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = {}
    for name, entries in spec.items():
        for axis, e in enumerate(entries):
            if e is not None:
                group, _, block = e.partition(":")
                sizes[group] = state[name].shape[axis] // int(block or 1)
    return {group: torch.randperm(n, generator=g) for group, n in sizes.items()}


@pytest.mark.parametrize(("spec_text", "shape", "groups"), ZOO)
def test_permuted_units_compute_the_same_function(spec_text, shape, groups) -> None:
    model = _with_bn_statistics(build_model(spec_text, input_shape=shape, output_dim=3, seed=0), shape)
    x = torch.randn(9, *shape, generator=torch.Generator().manual_seed(5))
    spec = permutation_spec(model, x[:2])
    assert len({e.split(":")[0] for entries in spec.values() for e in entries if e}) == groups
    state = model.state_dict()
    perms = _random_perms(spec, state, seed=1)
    permuted = apply_permutation(spec, state, perms)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    other = build_model(spec_text, input_shape=shape, output_dim=3, seed=0)
    other.load_state_dict(permuted)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("spec_text", "shape"), [("zoo:mlp:widths=12-10", (6,)), ("zoo:cnn1d:channels=4", (20,)),
                                                  ("zoo:bncnn:channels=4-6-5", (1, 8, 8)), ("zoo:resnet20", (1, 6, 6))])
def test_aligning_a_permuted_copy_recovers_the_original_exactly(spec_text, shape) -> None:
    a = _with_bn_statistics(build_model(spec_text, input_shape=shape, output_dim=3, seed=0), shape)
    x = torch.randn(2, *shape)
    spec = permutation_spec(a, x)
    b = build_model(spec_text, input_shape=shape, output_dim=3, seed=0)
    b.load_state_dict(apply_permutation(spec, a.state_dict(), _random_perms(spec, a.state_dict(), seed=2)))
    aligned, _ = align_weights(a, b, x)
    for k, v in a.state_dict().items():
        assert torch.equal(aligned[k], v), k  # weights, BN weights/biases and running statistics


def test_one_group_matches_brute_force() -> None:
    """One hidden layer of 5 units: coordinate descent must find the best of all 120 permutations."""
    g = torch.Generator().manual_seed(0)
    a = {"w1": torch.randn(5, 3, generator=g), "w2": torch.randn(2, 5, generator=g)}
    b = {"w1": torch.randn(5, 3, generator=g), "w2": torch.randn(2, 5, generator=g)}
    spec = {"w1": ("H", None), "w2": (None, "H")}

    def objective(p: torch.Tensor) -> float:
        pb = apply_permutation(spec, b, {"H": p})
        return float(sum((a[k] * pb[k]).sum() for k in a))

    best = max(objective(torch.tensor(p)) for p in itertools.permutations(range(5)))
    got = weight_matching(spec, a, b)["H"]
    np.testing.assert_allclose(objective(got), best, rtol=1e-6)


def test_user_spec_json_and_function(tmp_path) -> None:
    model = mlp()
    derived = permutation_spec(model, torch.randn(2, 6))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: list(v) for k, v in derived.items()}))
    assert load_spec(path, model) == derived
    module = tmp_path / "myspec.py"
    module.write_text("def spec(model):\n"
                      "    return {'0.weight': ['H', None], '0.bias': ['H'], '2.weight': [None, 'H']}\n")
    assert load_spec(f"{module}:spec", model)["2.weight"] == (None, "H")
    with pytest.raises(UserInputError, match="--spec"):
        load_spec("nonsense", model)
    with pytest.raises(UserInputError, match="axes"):
        align_weights(model, mlp(seed=1), torch.randn(2, 6), spec={"0.weight": ("H",)})


def test_unsupported_architecture_and_mismatch_are_one_line() -> None:
    dense = build_model("zoo:densenet", input_shape=(1, 8, 8), output_dim=3, seed=0)
    with pytest.raises(UserInputError, match="--spec"):
        permutation_spec(dense, torch.randn(2, 1, 8, 8))
    with pytest.raises(UserInputError, match="architecture"):
        align_weights(mlp(), mlp(hidden=9), torch.randn(2, 6))


def _fit(data, seed: int) -> nn.Module:
    net = mlp(seed=seed, hidden=16)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(net(data.x_train), data.y_train).backward()
        opt.step()
    return net.eval()


def test_align_checkpoint_writes_weights_and_barriers(tmp_path) -> None:
    data = make_classification()
    a, b = _fit(data, 0), _fit(data, 1)
    ds = align_checkpoint(a, b, data, out=tmp_path / "b_aligned.safetensors", points=9)
    aligned = load_file(str(tmp_path / "b_aligned.safetensors"))
    c = mlp(hidden=16)
    c.load_state_dict(aligned)
    with torch.no_grad():  # the aligned model is model B, just relabelled
        torch.testing.assert_close(c.eval()(data.x_train), b(data.x_train), rtol=1e-5, atol=1e-5)
    for label in ("before", "after"):
        np.testing.assert_allclose(ds[f"{label}_train_loss"].values[[0, -1]],
                                   ds["before_train_loss"].values[[0, -1]], rtol=1e-6)
    assert ds.attrs["kind"] == "alignment" and (tmp_path / "b_aligned.zarr").is_dir()
    assert ds.attrs["after_train_loss_barrier"] < ds.attrs["before_train_loss_barrier"]


@pytest.mark.slow
def test_mnist1d_alignment_lowers_the_barrier(tmp_path) -> None:
    """Two independently trained MNIST-1D MLPs: the barrier after weight matching, reported beside before."""
    from lossatlas.data import load_data
    from lossatlas.training import TrainSpec, train

    data = load_data("mnist1d")
    a, b = (train(build_model("zoo:mlp:widths=64-64", input_shape=data.input_shape, output_dim=data.output_dim,
                              seed=s), data, TrainSpec(epochs=10, seed=s), tmp_path / f"m{s}") for s in (1, 2))
    ds = align_checkpoint(a, b, data, out=tmp_path / "b_aligned.safetensors", points=21)
    before, after = ds.attrs["before_train_loss_barrier"], ds.attrs["after_train_loss_barrier"]
    print(f"train barrier before {before:.4f} after {after:.4f}; test before "
          f"{ds.attrs['before_test_loss_barrier']:.4f} after {ds.attrs['after_test_loss_barrier']:.4f}")
    assert after < before


def test_deriving_a_spec_leaves_the_model_untouched() -> None:
    model = build_model("zoo:bncnn:channels=4-6", input_shape=(1, 8, 8), output_dim=3, seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    permutation_spec(model, torch.randn(4, 1, 8, 8) * 3 + 1)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
