"""A small, fast CNN for smoke tests, CPU runs and Fashion-MNIST.

Three stages of two 3x3 conv + BN + ReLU layers (widths w, 2w, 4w), max-pooling between stages and
global average pooling before a linear classifier. Global pooling makes it size-agnostic, so the
same network serves 28x28 (Fashion-MNIST) and 32x32 (CIFAR) inputs. With the default `width=32`
it has about 0.29M parameters; parameters grow roughly with `width**2`.
"""

from __future__ import annotations

import torch
from torch import nn

from advtrain.models._checks import positive_int
from advtrain.models.normalize import Normalize, StatsLike


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    # No conv bias: the BN shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv-BN-ReLU x2 -> pool -> x2 -> pool -> x2 -> global average pool -> linear."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width: int = 32,
        mean: StatsLike = None,
        std: StatsLike = None,
    ) -> None:
        super().__init__()
        positive_int(num_classes, "num_classes")
        positive_int(in_channels, "in_channels")
        w = positive_int(width, "width")
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            _conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
            _conv_bn_relu(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(out), 1))
