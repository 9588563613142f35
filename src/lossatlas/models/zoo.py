"""The model zoo: a name -> builder registry, the small architectures, and ``zoo:NAME:key=value`` options.

Every builder is called as ``builder(input_shape=..., output_dim=..., **keys)``; its keyword-only
parameters after those two *are* its zoo keys, and their type hints say how a key's text is read:
``bool`` (true/false, yes/no, 1/0), ``int``, ``float``, ``str``, or ``tuple[int, ...]`` written with ``-``
(``widths=256-256``; an empty value is the empty tuple). The small models live here:

* ``mlp``: fully connected net on the flattened input, with configurable widths and activation
  (``quadratic`` is sigma(z) = z**2, the activation of Du & Lee 2018 / Soltanolkotabi et al. 2019);
  ``residual=true`` adds h <- h + act(W h) around every hidden layer whose width is kept, which with the
  default widths 100-100 is the MLP of Greydanus 2020's MNIST-1D benchmarks (``MLPBase``).
* ``logistic``: multinomial logistic regression, one linear map with bias to the class logits (Greydanus
  2020's ``LinearBase``, the "logistic regression" column of the MNIST-1D benchmark table).
* ``cnn1d``: the MNIST-1D CNN of Greydanus 2020 ("Scaling down Deep Learning", ``ConvBase``).
* ``bncnn``: a 4-conv BatchNorm CNN (Ioffe & Szegedy 2015) for quick image experiments.
* ``linear``: a deep linear network x -> W_L ... W_1 x (Saxe et al. 2014; Kawaguchi 2016).
* ``two_layer``: x -> a^T sigma(W x), the one-hidden-layer nets of Safran & Shamir 2018.
* ``cnn1``: one convolution + linear layer, the CNN-1 that Zhang et al. 2017 convexify (``ccnn.py``).

The image models (``resnet20/56/110``, ``wrn``, ``vgg9``, ``densenet``; ``vgg9_1d``: VGG-9 for 1-D signals) and
the recurrent ones (``gru``, ``lstm``: Greydanus 2020's MNIST-1D GRU and its LSTM twin) and ``gpt`` (a small
decoder-only transformer on int64 token ids, Radford et al. 2019; the 2-layer, width-128, 4-head default of
Power et al. 2022's grokking runs) live in their own files.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.models.ccnn import cnn1
from lossatlas.models.densenet import densenet
from lossatlas.models.recurrent import gru, lstm
from lossatlas.models.resnet import image_channels, require_positive, resnet20, resnet56, resnet110, wrn
from lossatlas.models.transformer import gpt
from lossatlas.models.vgg import vgg9, vgg9_1d
from lossatlas.specs import Spec, parse_options, parse_spec, typed_options


class Quadratic(nn.Module):
    """The quadratic activation sigma(z) = z**2 (Du & Lee 2018, "On the Power of Over-parametrization")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


#: Activation names accepted by ``mlp`` and ``two_layer``; ``linear`` is the identity.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "linear": nn.Identity,
    "quadratic": Quadratic,
}


def make_activation(name: str, model: str) -> nn.Module:
    """A fresh activation module by name; UserInputError naming the choices for an unknown one."""
    if name not in ACTIVATIONS:
        raise UserInputError(
            f"unknown activation '{name}' for zoo model '{model}'; choose one of: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def _widths(values: Sequence[int] | int, key: str, model: str) -> tuple[int, ...]:
    result = (int(values),) if isinstance(values, int) else tuple(int(v) for v in values)
    for value in result:
        require_positive(value, key, model)
    return result


class MLP(nn.Module):
    """Flatten, then ``Linear -> act -> ... -> Linear`` through ``sizes = (in, hidden..., out)``.

    With ``activation=None`` (a deep linear network) no activation modules sit between the linear maps,
    so parameters are named ``layers.0.weight, layers.1.weight, ...``; otherwise ``layers.0, layers.2, ...``.
    Input (N, *input_shape) -> output (N, sizes[-1]).
    """

    def __init__(
        self, sizes: Sequence[int], *, activation: str | None, bias: bool, model: str = "mlp"
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if index > 0 and activation is not None:
                layers.append(make_activation(activation, model))
            layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.flatten(x))


class ResidualMLP(nn.Module):
    """Greydanus 2020's ``MLPBase`` generalised: ``h1 = act(W1 x)``, then for each further hidden layer
    ``h <- h + act(W h)`` when it keeps the width (``act(W h)`` otherwise), then a linear read-out.

    Linear maps are ``layers.0, layers.1, ...``. Input (N, *input_shape) -> output (N, sizes[-1]).
    """

    def __init__(self, sizes: Sequence[int], *, activation: str, bias: bool) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.activation = make_activation(activation, "mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(x)
        for index, layer in enumerate(self.layers[:-1]):
            out = self.activation(layer(h))
            h = h + out if index > 0 and out.shape == h.shape else out
        return self.layers[-1](h)


def mlp(
    *,
    input_shape: tuple[int, ...],
    output_dim: int,
    widths: tuple[int, ...] = (100, 100),
    activation: str = "relu",
    bias: bool = True,
    residual: bool = False,
) -> nn.Module:
    """Multilayer perceptron on the flattened input; ``widths=256-256`` on (40,) and 10 is 40-256-256-10.

    ``residual=true`` is Greydanus 2020's MNIST-1D MLP (skip connections around width-preserving hidden layers).
    """
    make_activation(activation, "mlp")
    sizes = (math.prod(input_shape), *_widths(widths, "widths", "mlp"), output_dim)
    if residual:
        return ResidualMLP(sizes, activation=activation, bias=bias)
    return MLP(sizes, activation=activation, bias=bias, model="mlp")


def logistic(*, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """Multinomial logistic regression: flatten, one ``Linear(in, classes)`` with bias (``layers.0``).

    With the cross-entropy loss this is the convex model of Greydanus 2020's "logistic regression" baseline.
    """
    return MLP((math.prod(input_shape), output_dim), activation=None, bias=True, model="logistic")


def deep_linear(
    *, input_shape: tuple[int, ...], output_dim: int, widths: tuple[int, ...] = (), bias: bool = False
) -> nn.Module:
    """Deep linear network x -> W_L ... W_1 x (Saxe et al. 2014; Kawaguchi 2016): no nonlinearity.

    ``widths`` are the hidden sizes; the default (empty) is a single linear map.
    """
    sizes = (math.prod(input_shape), *_widths(widths, "widths", "linear"), output_dim)
    return MLP(sizes, activation=None, bias=bias, model="linear")


class MNIST1DConvNet(nn.Module):
    """The MNIST-1D CNN of Greydanus 2020 (``ConvBase`` in github.com/greydanus/mnist1d).

    The input is flattened to a signal of length L and read as (N, 1, L); three Conv1d layers with
    ``channels`` channels (kernel 5, then 3, 3; stride 2; padding 1), each followed by ReLU, then a linear
    layer on the flattened features. For L = 40 the conv lengths are 19, 10, 5 and the linear layer has
    ``5 * channels`` inputs (125 for the default 25 channels), exactly as in the original code.
    """

    def __init__(self, length: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        out_length = length
        for kernel in (5, 3, 3):
            out_length = (out_length + 2 - kernel) // 2 + 1
            if out_length < 1:
                raise UserInputError(
                    f"zoo model 'cnn1d' needs inputs with at least 3 features, got {length}; "
                    "use a longer signal or zoo:mlp"
                )
        self.linear = nn.Linear(channels * out_length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], 1, -1)
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.linear(torch.flatten(h, 1))


def cnn1d(*, input_shape: tuple[int, ...], output_dim: int, channels: int = 25) -> nn.Module:
    """The MNIST-1D CNN (Greydanus 2020) with ``channels`` channels per conv layer."""
    require_positive(channels, "channels", "cnn1d")
    return MNIST1DConvNet(math.prod(input_shape), channels, output_dim)


class BatchNormCNN(nn.Module):
    """``(conv3x3 -> BatchNorm2d -> ReLU) x len(channels)`` with a 2x2 max-pool after every second conv
    while the spatial size is at least 2, then global average pooling and a linear classifier.

    BatchNorm after every conv as in Ioffe & Szegedy 2015. Input (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(
        self, channels: Sequence[int], *, in_channels: int, height: int, width: int, num_classes: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        current, h, w = in_channels, height, width
        for index, out_channels in enumerate(channels):
            layers += [
                nn.Conv2d(current, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            current = out_channels
            if index % 2 == 1 and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(current, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def bncnn(
    *, input_shape: tuple[int, ...], output_dim: int, channels: tuple[int, ...] = (16, 32, 32, 64)
) -> nn.Module:
    """Small BatchNorm CNN; ``channels`` gives one conv per entry (default 16-32-32-64, pools after 2, 4)."""
    in_channels = image_channels(input_shape, "bncnn")
    widths = _widths(channels, "channels", "bncnn")
    if not widths:
        raise UserInputError("zoo model 'bncnn' needs at least one conv width, e.g. channels=16-32-32-64")
    return BatchNormCNN(
        widths,
        in_channels=in_channels,
        height=int(input_shape[1]),
        width=int(input_shape[2]),
        num_classes=output_dim,
    )


class TwoLayerNet(nn.Module):
    """f(x) = a^T sigma(W x): ``hidden`` (weight W, k x d) -> activation -> ``output`` (weight a^T, out x k).

    Safran & Shamir 2018 ("Spurious Local Minima are Common in Two-Layer ReLU Neural Networks") study
    x -> sum_i relu(w_i^T x), i.e. a = 1 fixed: ``second_layer_trainable=False`` sets ``output.weight`` to
    ones and freezes it with ``requires_grad_(False)``. ``bias`` adds a bias to the hidden layer only.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        activation: str,
        bias: bool,
        second_layer_trainable: bool,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(in_features, hidden, bias=bias)
        self.activation = make_activation(activation, "two_layer")
        self.output = nn.Linear(hidden, out_features, bias=False)
        if not second_layer_trainable:
            with torch.no_grad():
                self.output.weight.fill_(1.0)
            self.output.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(self.hidden(self.flatten(x))))


def two_layer(
    *,
    input_shape: tuple[int, ...],
    output_dim: int,
    hidden: int = 10,
    activation: str = "relu",
    second_layer_trainable: bool = True,
    bias: bool = False,
) -> nn.Module:
    """One-hidden-layer net x -> a^T sigma(W x) (Safran & Shamir 2018) for teacher-student studies."""
    require_positive(hidden, "hidden", "two_layer")
    return TwoLayerNet(
        math.prod(input_shape),
        hidden,
        output_dim,
        activation=activation,
        bias=bias,
        second_layer_trainable=second_layer_trainable,
    )


#: Zoo name -> builder ``(input_shape=..., output_dim=..., **keys) -> nn.Module``.
ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "bncnn": bncnn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "wrn": wrn,
    "vgg9": vgg9,
    "densenet": densenet,
    "linear": deep_linear,
    "two_layer": two_layer,
    "logistic": logistic,
    "gru": gru,
    "lstm": lstm,
    "vgg9_1d": vgg9_1d,
    "cnn1": cnn1,
    "gpt": gpt,
}


def zoo_names() -> list[str]:
    """Names of the zoo models, in registry order."""
    return list(ZOO)


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in ZOO:
        raise UserInputError(f"unknown zoo model '{name}'; choose one of: {', '.join(ZOO)}")
    return ZOO[name]


def zoo_keys(name: str) -> dict[str, object]:
    """The keys a zoo model accepts, with their defaults (e.g. ``{'widths': (100, 100), ...}``)."""
    signature = inspect.signature(_lookup(name))
    return {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and key not in ("input_shape", "output_dim")
    }


def parse_zoo_options(name: str, options: str | Sequence[tuple[str, str]]) -> dict[str, object]:
    """Typed keyword arguments for zoo model ``name`` from ``key=value,...`` text or parsed pairs.

    Each value is read according to the builder's type hint (:func:`lossatlas.specs.coerce`); unknown keys,
    repeated keys and unreadable values raise :class:`UserInputError`.
    """
    builder = _lookup(name)
    pairs = parse_options(options, f"zoo:{name}") if isinstance(options, str) else options
    return typed_options(pairs, builder, f"zoo model '{name}'", reserved=("input_shape", "output_dim"))


def build_zoo_model(spec: str | Spec, *, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """Build from a parsed ``zoo:`` spec, or the text after ``zoo:`` (``NAME[:key=value,...]``), unseeded."""
    parsed = spec if isinstance(spec, Spec) else parse_spec("zoo:" + spec, "model", builtins=list(ZOO), prefix="zoo:")
    builder = _lookup(parsed.name)
    kwargs = parse_zoo_options(parsed.name, parsed.options)
    return builder(input_shape=input_shape, output_dim=output_dim, **kwargs)
