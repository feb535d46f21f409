"""Pre-activation ResNet-18 (He et al. 2016, "Identity mappings"), CIFAR variant.

The architecture used by Rice et al. 2020 ("Overfitting in adversarially robust deep learning")
and most PGD-AT / TRADES ablations: a 3x3 stem without max-pooling, four stages of two
pre-activation basic blocks (BN-ReLU-conv twice) at widths w, 2w, 4w, 8w (`width=64` is the
standard 11.2M-parameter model; tests and CPU runs use a smaller `width`), a final BN-ReLU,
global average pooling and a linear layer. Module names follow that reference code
(`conv1`, `layer1..4`, `bn`, `linear`; blocks `bn1/conv1/bn2/conv2/shortcut`) so its
checkpoints load here. Weights keep PyTorch's default initialisation, as in that code, so
reported baselines are reproduced with the same init.

Global average pooling (instead of a fixed 4x4 pool) makes 28x28 inputs (Fashion-MNIST) work;
for 32x32 inputs the last feature map is 4x4 and the two are the same operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.models._checks import positive_int
from advtrain.models.normalize import Normalize, StatsLike


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; the projection shortcut (if any) sees the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 with `width` base channels and built-in input normalisation."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width: int = 64,
        mean: StatsLike = None,
        std: StatsLike = None,
    ) -> None:
        super().__init__()
        positive_int(num_classes, "num_classes")
        positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=3, stride=1, padding=1, bias=False)
        planes = [w, 2 * w, 4 * w, 8 * w]
        strides = [1, 2, 2, 2]
        in_planes = w
        layers = []
        for p, s in zip(planes, strides):
            layers.append(nn.Sequential(PreActBlock(in_planes, p, s), PreActBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(8 * w)
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))
