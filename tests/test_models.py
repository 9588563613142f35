"""Tests for lossatlas.models: every zoo model builds and runs, seeding is exact, specs load, errors are
one-line UserInputErrors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.models import ZOO, build_model, zoo_names
from lossatlas.models.zoo import zoo_keys

FLAT = (40,)
DIGITS = (1, 8, 8)
CIFAR = (3, 32, 32)
IMAGE_MODELS = ["bncnn", "resnet20", "resnet56", "resnet110", "wrn", "vgg9", "densenet"]
FLAT_MODELS = ["mlp", "logistic", "cnn1d", "gru", "lstm", "vgg9_1d", "linear", "two_layer", "cnn1"]
FORWARD_CASES = [(name, shape) for name in IMAGE_MODELS for shape in (DIGITS, CIFAR)] + [
    (name, shape) for name in FLAT_MODELS for shape in (FLAT, DIGITS)
]
TOKEN_MODELS = ["gpt"]  # int64 token ids (N, T) -> per-token logits (N, T, V)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_one_line_error(spec: str, match: str, **kwargs: object) -> None:
    options: dict[str, object] = {"input_shape": FLAT, "output_dim": 3, **kwargs}
    with pytest.raises(UserInputError, match=match) as info:
        build_model(spec, **options)  # type: ignore[arg-type]
    message = str(info.value)
    assert message and "\n" not in message, repr(message)


# --------------------------------------------------------------------------- the zoo


def test_forward_cases_cover_the_whole_zoo() -> None:
    assert {name for name, _ in FORWARD_CASES} | set(TOKEN_MODELS) == set(zoo_names()) == set(ZOO)


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_token_model_builds_and_forwards(name: str) -> None:
    model = build_model(f"zoo:{name}", input_shape=(5,), output_dim=7)
    assert all(not m.training for m in model.modules())
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids)
    assert out.shape == (2, 5, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "shape"), FORWARD_CASES, ids=lambda v: str(v))
def test_zoo_model_builds_and_forwards(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(f"zoo:{name}", input_shape=shape, output_dim=3)
    assert isinstance(model, nn.Module)
    assert all(not m.training for m in model.modules()), "model must be returned in eval mode"
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_reject_flat_inputs(name: str) -> None:
    _assert_one_line_error(f"zoo:{name}", r"\(C, H, W\)", input_shape=FLAT)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [("zoo:mlp", FLAT), ("zoo:resnet20", DIGITS), ("zoo:two_layer", FLAT), ("zoo:densenet", DIGITS)],
)
def test_seed_gives_bit_identical_weights_and_spares_global_rng(spec: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = _state(build_model(spec, input_shape=shape, output_dim=3, seed=7))
    assert torch.equal(torch.get_rng_state(), before), "build_model must not advance the global RNG"
    second = _state(build_model(spec, input_shape=shape, output_dim=3, seed=7))
    other = _state(build_model(spec, input_shape=shape, output_dim=3, seed=8))
    assert first.keys() == second.keys() == other.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    floats = [k for k, v in first.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    assert floats and all(not torch.equal(first[k], other[k]) for k in floats)


def test_mlp_widths_give_exact_layer_shapes() -> None:
    model = build_model("zoo:mlp:widths=256-256", input_shape=FLAT, output_dim=10)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "layers.0.weight": (256, 40),
        "layers.0.bias": (256,),
        "layers.2.weight": (256, 256),
        "layers.2.bias": (256,),
        "layers.4.weight": (10, 256),
        "layers.4.bias": (10,),
    }


def test_mlp_keys_are_honoured() -> None:
    model = build_model("zoo:mlp:widths=7,activation=quadratic,bias=false", input_shape=FLAT, output_dim=2)
    assert [tuple(p.shape) for p in model.parameters()] == [(7, 40), (2, 7)]
    w1, w2 = (p.detach() for p in model.parameters())
    x = torch.randn(5, 40)
    torch.testing.assert_close(model(x), (x @ w1.T) ** 2 @ w2.T)


def test_zoo_defaults_are_listed() -> None:
    assert zoo_keys("mlp") == {"widths": (100, 100), "activation": "relu", "bias": True, "residual": False}
    assert zoo_keys("resnet56") == {"shortcut": True, "width": 1}


def test_cnn1d_matches_greydanus_mnist1d_convbase() -> None:
    model = build_model("zoo:cnn1d", input_shape=FLAT, output_dim=10)
    assert [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv1d)] == [(5,), (3,), (3,)]
    assert model.linear.in_features == 125
    assert sum(p.numel() for p in model.parameters()) == 5210


def test_resnet_sizes_match_he_et_al() -> None:
    model = build_model("zoo:resnet20", input_shape=CIFAR, output_dim=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20  # 19 conv3x3 layers + the linear layer
    assert abs(sum(p.numel() for p in model.parameters()) - 0.27e6) < 0.01e6
    wide = build_model("zoo:resnet20:width=2", input_shape=DIGITS, output_dim=10)
    assert wide.linear.in_features == 128


def test_resnet_noshort_has_no_identity_path() -> None:
    short = build_model("zoo:resnet56", input_shape=DIGITS, output_dim=4)
    plain = build_model("zoo:resnet56:shortcut=false", input_shape=DIGITS, output_dim=4)
    assert not any("shortcut" in name for name, _ in plain.named_parameters())
    assert any("shortcut" in name for name, _ in short.named_parameters())
    # The same weights where names match: the only differences are the downsampling shortcuts.
    result = short.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".shortcut." in key for key in result.missing_keys)
    x = torch.randn(2, *DIGITS)
    with torch.no_grad():
        assert not torch.allclose(short(x), plain(x))
        # Zero the residual branch of a stride-1 block: with a shortcut it passes relu(x) through,
        # without one it outputs relu(0) = 0.
        for model in (short, plain):
            nn.init.zeros_(model.layer1[1].bn2.weight)
            nn.init.zeros_(model.layer1[1].bn2.bias)
        h = torch.rand(2, 16, 8, 8) + 0.1
        torch.testing.assert_close(short.layer1[1](h), h)
        torch.testing.assert_close(plain.layer1[1](h), torch.zeros_like(h))


def test_vgg9_is_seven_convs_and_two_linear_layers() -> None:
    for spec, has_bn in (("zoo:vgg9", True), ("zoo:vgg9:bn=false", False)):
        model = build_model(spec, input_shape=CIFAR, output_dim=10)
        modules = list(model.modules())
        assert sum(isinstance(m, nn.Conv2d) for m in modules) == 7
        assert sum(isinstance(m, nn.Linear) for m in modules) == 2
        assert any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in modules) is has_bn
    assert model.fc[0].in_features == 256 * 4 * 4  # 32 -> 16 -> 8 -> 4, as in Li et al.


def test_wrn_and_densenet_structure() -> None:
    model = build_model("zoo:wrn:depth=10,k=3", input_shape=DIGITS, output_dim=5)
    assert model.linear.in_features == 64 * 3
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 1
    dense = build_model("zoo:densenet:depth=16,growth=4", input_shape=DIGITS, output_dim=5)
    assert len(dense.dense1) == 2 and dense.dense1[0].conv2.out_channels == 4


def test_deep_linear_network_is_linear() -> None:
    single = build_model("zoo:linear", input_shape=FLAT, output_dim=3)
    assert [tuple(p.shape) for p in single.parameters()] == [(3, 40)]
    empty = build_model("zoo:linear:widths=", input_shape=FLAT, output_dim=3)
    assert [tuple(p.shape) for p in empty.parameters()] == [(3, 40)]
    deep = build_model("zoo:linear:widths=5-6", input_shape=FLAT, output_dim=3)
    assert [tuple(p.shape) for p in deep.parameters()] == [(5, 40), (6, 5), (3, 6)]
    x, y = torch.randn(4, 40), torch.randn(4, 40)
    torch.testing.assert_close(deep(2.0 * x - 3.0 * y), 2.0 * deep(x) - 3.0 * deep(y))


def test_two_layer_with_fixed_second_layer_is_a_sum_of_relus() -> None:
    model = build_model("zoo:two_layer:hidden=6,second_layer_trainable=false", input_shape=(4,), output_dim=1)
    assert torch.equal(model.output.weight, torch.ones(1, 6))
    assert not model.output.weight.requires_grad and model.hidden.weight.requires_grad
    assert model.hidden.bias is None
    x = torch.randn(8, 4)
    torch.testing.assert_close(model(x), torch.relu(x @ model.hidden.weight.T).sum(-1, keepdim=True))


# --------------------------------------------------------------------------- user files and modules

USER_SOURCE = """
import torch
from torch import nn

def with_args(input_shape, output_dim):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], output_dim))

def only_output(output_dim):
    return nn.Linear(40, output_dim)

def no_args():
    return nn.Linear(40, 3).double()

def with_kwargs(**kwargs):
    return nn.Linear(kwargs["input_shape"][0], kwargs["output_dim"])

def needs_more(input_shape, output_dim, depth):
    return nn.Linear(1, 1)

def not_a_model(input_shape, output_dim):
    return 42

class Net(nn.Module):
    def __init__(self, input_shape=(40,), output_dim=3):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], output_dim)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(textwrap.dedent(USER_SOURCE))
    return path


@pytest.mark.parametrize("function", ["with_args", "only_output", "no_args", "with_kwargs", "Net"])
def test_file_spec_loads_function(user_file: Path, function: str) -> None:
    model = build_model(f"{user_file}:{function}", input_shape=FLAT, output_dim=3, seed=3)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model(torch.randn(2, 40)).shape == (2, 3)
    again = build_model(f"{user_file}:{function}", input_shape=FLAT, output_dim=3, seed=3)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_module_spec_loads_function(user_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "lossatlas_test_userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(user_file.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = build_model("lossatlas_test_userpkg.nets:with_args", input_shape=FLAT, output_dim=5)
        assert model(torch.randn(2, 40)).shape == (2, 5)
        _assert_one_line_error("lossatlas_test_userpkg.nets:missing", "has no function 'missing'")
        _assert_one_line_error("lossatlas_test_userpkg.nope:with_args", "cannot import module")
    finally:
        for name in [n for n in sys.modules if n.startswith("lossatlas_test_userpkg")]:
            del sys.modules[name]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("zoo:foo", r"unknown zoo model 'foo'; choose one of: mlp, cnn1d"),
        ("zoo:mlp:depth=3", r"unknown key 'depth' for zoo model 'mlp'; valid keys: widths, activation, bias"),
        ("zoo:mlp:widths=abc", r"bad value widths='abc'"),
        ("zoo:mlp:widths=10-x", r"bad value widths='10-x'"),
        ("zoo:mlp:bias=maybe", r"bad value bias='maybe'.*true or false"),
        ("zoo:mlp:activation=swish", r"unknown activation 'swish'.*relu"),
        ("zoo:mlp:widths", r"expected key=value, got 'widths'"),
        ("zoo:mlp:bias=true,bias=false", r"given twice"),
        ("zoo:mlp:widths=0", r"widths > 0"),
        ("zoo:wrn:depth=15", r"depth = 6n \+ 4"),
        ("zoo:densenet:depth=41", r"depth = 6n \+ 4"),
        ("zoo:wrn:dropout=1.5", r"dropout"),
        ("zoo:cnn1d:channels=2.5", r"expected an integer"),
        ("mlp", r"has no 'zoo:' prefix; did you mean 'zoo:mlp'"),
        ("my_model", r"cannot read model spec 'my_model'; use 'zoo:NAME"),
        ("does/not/exist.py:build", r"model file 'does/not/exist.py' not found"),
        ("lossatlas_no_such_module_xyz:build", r"cannot import module 'lossatlas_no_such_module_xyz'"),
        (":build", r"cannot read model spec ':build'; use 'zoo:NAME"),
    ],
)
def test_bad_specs_raise_one_line_user_errors(spec: str, match: str) -> None:
    _assert_one_line_error(spec, match, input_shape=(1, 8, 8) if "wrn" in spec or "dense" in spec else FLAT)


@pytest.mark.parametrize(
    ("function", "match"),
    [
        ("missing", r"has no function 'missing'; it defines: .*with_args"),
        ("not_a_model", r"returned int, not a torch.nn.Module"),
        ("needs_more", r"give its other parameters default values"),
        ("torch", r"is a module, not a function"),
    ],
)
def test_bad_user_functions_raise_one_line_user_errors(user_file: Path, function: str, match: str) -> None:
    _assert_one_line_error(f"{user_file}:{function}", match)


def test_broken_user_file_raises_one_line_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import torch\nraise RuntimeError('boom\\nsecond line')\n")
    _assert_one_line_error(f"{path}:build", r"importing model file .* failed: RuntimeError: boom$")
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def build(:\n")
    _assert_one_line_error(f"{syntax}:build", r"failed: SyntaxError")


def test_bad_shapes_raise_user_errors() -> None:
    _assert_one_line_error("zoo:mlp", "input_shape", input_shape=())
    _assert_one_line_error("zoo:mlp", "output_dim", output_dim=0)
    _assert_one_line_error("zoo:cnn1d", "at least 3 features", input_shape=(2,))


def test_vgg9_width_scales_every_layer_and_keeps_the_recipe() -> None:
    small = build_model("zoo:vgg9:width=8", input_shape=DIGITS, output_dim=10)
    full = build_model("zoo:vgg9", input_shape=DIGITS, output_dim=10)
    convs = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16, 32, 32, 32]
    assert [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)] == [64, 64, 128, 128, 256, 256, 256]
    assert [type(m) for m in small.modules()] == [type(m) for m in full.modules()]
    assert small.fc[0].out_features == 32


def test_vgg9_1d_is_the_vgg9_recipe_on_signals() -> None:
    net = build_model("zoo:vgg9_1d:width=16", input_shape=FLAT, output_dim=10)
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv1d)] == [16, 16, 32, 32, 64, 64, 64]
    assert sum(isinstance(m, nn.MaxPool1d) for m in net.modules()) == 3  # 40 -> 20 -> 10 -> 5
    assert net.fc[0].in_features == 64 * 5 and isinstance(net.fc[1], nn.BatchNorm1d)
    plain = build_model("zoo:vgg9_1d:width=16,bn=false", input_shape=FLAT, output_dim=10)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
