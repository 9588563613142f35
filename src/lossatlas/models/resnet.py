"""Residual networks for small images: CIFAR ResNets with and without shortcuts, and Wide ResNets.

* ``resnet20/56/110``: the CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image
  Recognition", Sec. 4.2): a 3x3 stem, three stages of ``n = (depth - 2) / 6`` basic blocks with
  16/32/64 channels (strides 1, 2, 2), global average pooling and one linear layer. As in Li et al. 2018
  ("Visualizing the Loss Landscape of Neural Nets", code ``cifar10/models/resnet.py``) downsampling
  shortcuts are 1x1 conv + BN ("option B"), and ``shortcut=False`` gives the "ResNet-noshort" networks of
  their Sec. 5, whose blocks have no identity path at all. ``width`` multiplies every channel count, as in
  Li et al.'s wide variants (``WRN56_k``).
* ``wrn``: Wide ResNet WRN-depth-k of Zagoruyko & Komodakis 2016 ("Wide Residual Networks", Table 1 and
  Fig. 1d): pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3), ``(depth - 4) / 6``
  blocks per stage with 16k/32k/64k channels, a 1x1 conv shortcut on the pre-activated input where the
  shape changes.

All use global *adaptive* average pooling, so any (C, H, W) input with H, W >= 1 works, from 8x8 digits
to 32x32 CIFAR. Parameters keep PyTorch's default initialisation (as Li et al.'s code does); the caller
seeds it (see :func:`lossatlas.models.build_model`). Parameter names follow Li et al.'s code
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.shortcut.0``, ``linear``), so their checkpoints load.

This module also holds :func:`image_channels` and :func:`require_positive`, the input checks shared by the
image models in ``vgg.py`` and ``densenet.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lossatlas.errors import UserInputError


def image_channels(input_shape: Sequence[int], model: str) -> int:
    """Number of channels C of a per-sample image shape (C, H, W); UserInputError for any other shape."""
    if len(input_shape) != 3:
        raise UserInputError(
            f"zoo model '{model}' needs image inputs of shape (C, H, W), got input_shape="
            f"{tuple(input_shape)}; use an image dataset or a model that flattens its input (e.g. zoo:mlp)"
        )
    return int(input_shape[0])


def require_positive(value: float, key: str, model: str) -> None:
    """UserInputError unless ``value`` (the zoo key ``key`` of ``model``) is > 0."""
    if not value > 0:
        raise UserInputError(f"zoo model '{model}' needs {key} > 0, got {key}={value}; pass a positive value")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or 1x1 conv + BN) shortcut, then ReLU.

    He et al. 2016, Fig. 2 / Sec. 4.2. With ``shortcut=False`` the block is plain:
    ``relu(bn2(conv2(relu(bn1(conv1(x))))))`` and has no ``shortcut`` submodule (Li et al. 2018, Sec. 5).
    Input (N, in_planes, H, W) -> output (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.has_shortcut = shortcut
        if shortcut:
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.has_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """CIFAR ResNet-depth (He et al. 2016, Sec. 4.2; Li et al. 2018 for ``shortcut=False``).

    Input (N, in_channels, H, W) -> logits (N, num_classes). ``depth = 6 n + 2``.
    """

    def __init__(
        self, depth: int, *, in_channels: int, num_classes: int, shortcut: bool = True, width: int = 1
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise UserInputError(f"CIFAR ResNet depth must be 6n + 2 (20, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        planes = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        in_planes = planes[0]
        stages = []
        for stage_planes, stride in zip(planes, (1, 2, 2), strict=True):
            blocks = []
            for block_stride in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, stage_planes, block_stride, shortcut))
                in_planes = stage_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


def _cifar_resnet(
    depth: int, input_shape: Sequence[int], output_dim: int, shortcut: bool, width: int
) -> CifarResNet:
    name = f"resnet{depth}"
    in_channels = image_channels(input_shape, name)
    require_positive(width, "width", name)
    return CifarResNet(depth, in_channels=in_channels, num_classes=output_dim, shortcut=shortcut, width=width)


def resnet20(
    *, input_shape: tuple[int, ...], output_dim: int, shortcut: bool = True, width: int = 1
) -> nn.Module:
    """ResNet-20 (He et al. 2016); ``shortcut=False`` is ResNet-20-noshort (Li et al. 2018)."""
    return _cifar_resnet(20, input_shape, output_dim, shortcut, width)


def resnet56(
    *, input_shape: tuple[int, ...], output_dim: int, shortcut: bool = True, width: int = 1
) -> nn.Module:
    """ResNet-56 (He et al. 2016); ``shortcut=False`` is ResNet-56-noshort (Li et al. 2018, Fig. 5)."""
    return _cifar_resnet(56, input_shape, output_dim, shortcut, width)


def resnet110(
    *, input_shape: tuple[int, ...], output_dim: int, shortcut: bool = True, width: int = 1
) -> nn.Module:
    """ResNet-110 (He et al. 2016); ``shortcut=False`` is ResNet-110-noshort (Li et al. 2018, Fig. 5)."""
    return _cifar_resnet(110, input_shape, output_dim, shortcut, width)


class WideBasicBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016, Fig. 1d, "B(3,3)" with dropout).

    ``out = conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + s`` where ``s = x`` when the shape is kept and
    ``s = conv1x1(relu(bn1(x)))`` otherwise (as in the authors' reference implementation).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016, Table 1): input (N, C, H, W) -> logits (N, num_classes)."""

    def __init__(
        self, depth: int, k: int, *, in_channels: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        planes = [16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages = []
        for stage_planes, stride in zip(planes, (1, 2, 2), strict=True):
            blocks = []
            for block_stride in [stride] + [1] * (n - 1):
                blocks.append(WideBasicBlock(in_planes, stage_planes, block_stride, dropout))
                in_planes = stage_planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(planes[2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


def wrn(
    *, input_shape: tuple[int, ...], output_dim: int, depth: int = 16, k: int = 2, dropout: float = 0.0
) -> nn.Module:
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016); ``depth = 6 n + 4``, widening factor ``k``."""
    in_channels = image_channels(input_shape, "wrn")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserInputError(f"zoo model 'wrn' needs depth = 6n + 4 (10, 16, 22, 28, ...), got depth={depth}")
    require_positive(k, "k", "wrn")
    if not 0.0 <= dropout < 1.0:
        raise UserInputError(f"zoo model 'wrn' needs 0 <= dropout < 1, got dropout={dropout}")
    return WideResNet(depth, k, in_channels=in_channels, num_classes=output_dim, dropout=dropout)
