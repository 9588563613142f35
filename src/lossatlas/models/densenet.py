"""DenseNet-BC for small images (Huang et al. 2017, "Densely Connected Convolutional Networks").

DenseNet-BC-depth-growth (Huang et al. 2017, Sec. 3 "Bottleneck layers" and "Compression", Table 2):
a 3x3 stem with ``2 * growth`` channels, three dense blocks of ``n = (depth - 4) / 6`` bottleneck layers
(BN-ReLU-conv1x1 to ``4 * growth`` channels, BN-ReLU-conv3x3 to ``growth`` channels, concatenated onto the
input), joined by transitions (BN-ReLU-conv1x1 compressing channels by ``reduction``, then 2x2 average
pooling), and a final BN-ReLU, global average pooling and a linear classifier. Li et al. 2018 (Fig. 5)
use a DenseNet to show that dense connections keep the loss landscape convex-looking.

Departures for small inputs: a transition's 2x2 average-pool is skipped once the spatial size is below 2,
and the last pooling is adaptive, so (1, 8, 8) and (3, 32, 32) both work. The defaults (depth 40,
growth 12) are the size of Huang et al.'s smallest CIFAR network (Table 2, there without bottlenecks),
built here in BC form with 6 bottleneck layers per block.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lossatlas.errors import UserInputError
from lossatlas.models.resnet import image_channels, require_positive


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k); output is ``cat([x, new], dim=1)`` with ``in + k`` channels."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.bn1(x)))
        new = self.conv2(F.relu(self.bn2(new)))
        return torch.cat([x, new], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression), then a 2x2 average pool when ``pool`` is true."""

    def __init__(self, in_planes: int, out_planes: int, pool: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet-BC with three dense blocks: input (N, in_channels, H, W) -> logits (N, num_classes)."""

    def __init__(
        self,
        depth: int,
        growth: int,
        *,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int,
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        planes = 2 * growth
        h, w = height, width
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        transitions: list[nn.Module] = []
        for index in range(3):
            layers = []
            for _ in range(n):
                layers.append(Bottleneck(planes, growth))
                planes += growth
            blocks.append(nn.Sequential(*layers))
            if index < 2:
                out_planes = max(1, int(math.floor(planes * reduction)))
                pool = min(h, w) >= 2
                transitions.append(Transition(planes, out_planes, pool))
                planes = out_planes
                if pool:
                    h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.dense1, self.dense2, self.dense3 = blocks
        self.trans1, self.trans2 = transitions
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = F.relu(self.bn(self.dense3(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


def densenet(
    *,
    input_shape: tuple[int, ...],
    output_dim: int,
    depth: int = 40,
    growth: int = 12,
    reduction: float = 0.5,
) -> nn.Module:
    """DenseNet-BC-depth with growth rate ``growth`` (Huang et al. 2017); ``depth = 6 n + 4``."""
    in_channels = image_channels(input_shape, "densenet")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserInputError(
            f"zoo model 'densenet' needs depth = 6n + 4 (10, 16, 22, 40, 100, ...), got depth={depth}"
        )
    require_positive(growth, "growth", "densenet")
    if not 0.0 < reduction <= 1.0:
        raise UserInputError(f"zoo model 'densenet' needs 0 < reduction <= 1, got reduction={reduction}")
    return DenseNet(
        depth,
        growth,
        in_channels=in_channels,
        height=int(input_shape[1]),
        width=int(input_shape[2]),
        num_classes=output_dim,
        reduction=reduction,
    )
