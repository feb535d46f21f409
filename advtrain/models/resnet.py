"""CIFAR-style ResNet-18 (He et al. 2016) with post-activation basic blocks.

Differences from the ImageNet model are the usual CIFAR ones: a 3x3 stride-1 stem and no
max-pooling, so 32x32 inputs reach the last stage at 4x4. Four stages of two basic blocks
(conv-BN-ReLU-conv-BN + shortcut, then ReLU) at widths w, 2w, 4w, 8w (`width=64` is the standard
11.2M-parameter model); projection shortcuts are 1x1 conv + BN. Module names follow the widely
used CIFAR reference (`conv1`, `bn1`, `layer1..4`, `linear`), and weights keep PyTorch's default
initialisation as in that code. Global average pooling makes 28x28 inputs work too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.models._checks import positive_int
from advtrain.models.normalize import Normalize, StatsLike


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus an identity or (1x1 conv + BN) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images with `width` base channels and built-in input normalisation."""

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
        self.bn1 = nn.BatchNorm2d(w)
        planes = [w, 2 * w, 4 * w, 8 * w]
        strides = [1, 2, 2, 2]
        in_planes = w
        layers = []
        for p, s in zip(planes, strides):
            layers.append(nn.Sequential(BasicBlock(in_planes, p, s), BasicBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))
