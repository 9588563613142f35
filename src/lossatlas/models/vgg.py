"""VGG-9, the plain (shortcut-free) CNN of Li et al. 2018's loss-landscape study.

Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets", Sec. 4 and Fig. 3; code
``cifar10/models/vgg.py``) build VGG-9 from the VGG recipe of Simonyan & Zisserman 2015 as 7 conv layers
(64-64-M-128-128-M-256-256-256-M, each conv3x3 + BatchNorm + ReLU) followed by 2 fully connected layers
(flatten -> Linear(256 * h * w, 256) + BatchNorm1d + ReLU -> Linear(256, classes)).

Departures for small inputs: a 2x2 max-pool (``ceil_mode=True`` as in Li et al.) is only inserted while
the current spatial size is at least 2, so (1, 8, 8) digits go 8 -> 4 -> 2 -> 1 and (3, 32, 32) CIFAR goes
32 -> 16 -> 8 -> 4 exactly as in the paper. ``bn=False`` drops every BatchNorm layer. Parameter names
(``features.0.weight``, ``fc.0.weight``, ``classifier.weight``) follow Li et al.'s code.

``vgg9_1d`` is the same recipe for 1-D signals (an input of any shape is read as one channel of length
L = prod(shape), e.g. MNIST-1D's 40): Conv1d(k=3, pad=1) + BatchNorm1d + ReLU, 1-D max-pools (40 -> 20 -> 10 -> 5).

Laptop scale: ``width`` is the first conv width (Li et al.: 64); every width of the recipe scales with it
(``width=8`` gives 8-8-M-16-16-M-32-32-32-M and a 32-unit FC layer), the layer structure stays VGG-9's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lossatlas.models.resnet import image_channels, require_positive

#: Li et al. 2018's VGG-9 feature config: conv widths and "M" for a 2x2 max-pool.
VGG9_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


def _fc_head(in_features: int, width: int, batch_norm: bool) -> nn.Sequential:
    """VGG-9's hidden fully connected layer: Linear (+ BatchNorm1d) + ReLU (names fc.0, fc.1[, fc.2])."""
    layers: list[nn.Module] = [nn.Linear(in_features, width)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(width))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-style CNN: conv3x3(+BN)+ReLU stack with conditional max-pools, then FC(+BN)+ReLU, then FC.

    Input (N, in_channels, height, width) -> logits (N, num_classes).
    """

    def __init__(
        self,
        config: Sequence[int | str],
        *,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, h, w = in_channels, height, width
        for item in config:
            if item == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                    h, w = math.ceil(h / 2), math.ceil(w / 2)
                continue
            out_channels = int(item)
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU())
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.fc = _fc_head(channels * h * w, channels, batch_norm)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.features(x), 1)
        return self.classifier(self.fc(out))


class VGG1d(nn.Module):
    """:class:`VGG` for 1-D signals: (N, *shape) read as (N, 1, L); conv3 (+BN) + ReLU with 2-max-pools while
    the length is at least 2, then FC (+BN) + ReLU, then FC. Input (N, *shape) -> logits (N, num_classes)."""

    def __init__(self, config: Sequence[int | str], *, length: int, num_classes: int, batch_norm: bool = True
                 ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, n = 1, length
        for item in config:
            if item == "M":
                if n >= 2:
                    layers.append(nn.MaxPool1d(kernel_size=2, stride=2, ceil_mode=True))
                    n = math.ceil(n / 2)
                continue
            layers.append(nn.Conv1d(channels, int(item), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(item)))
            layers.append(nn.ReLU())
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.fc = _fc_head(channels * n, channels, batch_norm)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.features(x.reshape(x.shape[0], 1, -1)), 1)
        return self.classifier(self.fc(out))


def _scaled_config(width: int, model: str) -> tuple[int | str, ...]:
    require_positive(width, "width", model)
    return tuple(item if item == "M" else int(item) * width // 64 or 1 for item in VGG9_CONFIG)


def vgg9(*, input_shape: tuple[int, ...], output_dim: int, bn: bool = True, width: int = 64) -> nn.Module:
    """VGG-9 of Li et al. 2018 (7 conv + 2 FC layers); ``bn=False`` removes all BatchNorm layers; ``width``
    (default 64, the paper's) scales every layer's width: ``width=8`` is a VGG-9 for 2-core laptops."""
    in_channels = image_channels(input_shape, "vgg9")
    return VGG(
        _scaled_config(width, "vgg9"),
        in_channels=in_channels,
        height=int(input_shape[1]),
        width=int(input_shape[2]),
        num_classes=output_dim,
        batch_norm=bn,
    )


def vgg9_1d(*, input_shape: tuple[int, ...], output_dim: int, bn: bool = True, width: int = 64) -> nn.Module:
    """VGG-9's recipe on 1-D signals (the input flattened to one channel), for MNIST-1D: ``width`` as in
    :func:`vgg9`; ``width=16`` gives 16-16-M-32-32-M-64-64-64-M and a 64-unit FC layer."""
    return VGG1d(_scaled_config(width, "vgg9_1d"), length=math.prod(input_shape), num_classes=output_dim,
                 batch_norm=bn)
