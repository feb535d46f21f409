"""The two WideResNets of the robustness literature, state-dict compatible with RobustBench.

* `WideResNet` (name `wrn34_10`): the TRADES WRN (Zhang et al. 2019), as in
  `robustbench.model_zoo.architectures.wide_resnet.WideResNet`. Pre-activation blocks
  (BN-ReLU-conv twice); in the first block of a group the shortcut is a 1x1 conv applied to the
  *pre-activated* input. Module names (`conv1`, `block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2,
  convShortcut}`, `bn1`, `fc`, optional `sub_block1`) are RobustBench's, so a state dict moves
  between the two classes with `strict=True`.
* `DMWideResNet` (name `wrn28_10_swish`): the DeepMind WRN (Gowal et al. 2020; Rebuffi et al.
  2021; Wang et al. 2023), as in `robustbench.model_zoo.architectures.dm_wide_resnet.DMWideResNet`
  with `activation_fn=nn.SiLU`. Convolutions with stride 2 pad TensorFlow-"SAME"-style
  (right/bottom only), which changes the numbers, so we pad exactly as that code does. Module
  names: `init_conv`, `layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}`,
  `batchnorm`, `logits`.

Normalisation: both take [0, 1] inputs and normalise through `self.normalize` whose mean/std
are non-persistent buffers. RobustBench's `DMWideResNet` stores its own `mean`/`std` the same way
(`persistent=False`), and its `WideResNet` has none, so neither side's state dict contains
normalisation constants and strict loading works in both directions. To reproduce a model's
logits with RobustBench's `DMWideResNet`, pass it the same `mean`/`std`; with `WideResNet`, build
ours with `mean=None` (or feed RobustBench's model normalised inputs).

Both use the WRN initialisation (conv ~ N(0, 2 / (k*k*out_channels)), BN weight 1 / bias 0,
linear bias 0), which is what TRADES and the DeepMind-style training code use. Global average
pooling over the last feature map equals RobustBench's `avg_pool2d(out, 8)` for 32x32 inputs and
also supports other sizes (e.g. 28x28, 7x7 last map).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import ConfigError
from advtrain.models._checks import positive_int, wrn_blocks_per_group
from advtrain.models.normalize import Normalize, StatsLike


def _wrn_init(model: nn.Module) -> None:
    """He-normal convs (fan_out), unit/zero BN, zero linear bias: the WRN/TRADES/DeepMind init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _global_avg_pool(out: torch.Tensor) -> torch.Tensor:
    # avg_pool2d with the full map as kernel: the very op RobustBench runs (kernel 8 on 8x8 maps),
    # so logits match bit for bit on CIFAR, while other input sizes still work.
    return torch.flatten(F.avg_pool2d(out, kernel_size=tuple(out.shape[-2:])), 1)


def _check_common(num_classes: object, in_channels: object, bn_momentum: object) -> None:
    positive_int(num_classes, "num_classes")
    positive_int(in_channels, "in_channels")
    if not isinstance(bn_momentum, int | float) or not 0.0 < float(bn_momentum) <= 1.0:
        raise ConfigError(f"model bn_momentum must be in (0, 1], got {bn_momentum!r}")


# --------------------------------------------------------------------------------------------
# TRADES WideResNet (RobustBench `WideResNet`)
# --------------------------------------------------------------------------------------------


class WRNBlock(nn.Module):
    """Pre-activation basic block; names match RobustBench's `wide_resnet.BasicBlock`."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        drop_rate: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes  # noqa: N815 (RobustBench's attribute name)
        # Only a channel change gets a projection; RobustBench keeps the attribute as None
        # otherwise (no state-dict entry), and so do we.
        self.convShortcut: nn.Module | None = (  # noqa: N815
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        # Identity shortcut carries the raw input; the projection sees the pre-activated one.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.add(shortcut, self.conv2(out))


class WRNGroup(nn.Module):
    """`n` blocks at one width; the container is called `layer` as in RobustBench's NetworkBlock."""

    def __init__(
        self,
        num_blocks: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        drop_rate: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WRNBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                    bn_momentum,
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """TRADES WideResNet (WRN-34-10 by default) with built-in input normalisation.

    `sub_block1=True` adds an unused copy of the first group, exactly like RobustBench's class: a
    few released TRADES-style checkpoints contain those weights, and they must load strictly. It
    takes no part in the forward pass (so DDP needs `find_unused_parameters` with it).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        depth: int = 34,
        widen_factor: int = 10,
        sub_block1: bool = False,
        drop_rate: float = 0.0,
        bias_last: bool = True,
        bn_momentum: float = 0.1,
        mean: StatsLike = None,
        std: StatsLike = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_channels, bn_momentum)
        n = wrn_blocks_per_group(depth)
        k = positive_int(widen_factor, "widen_factor")
        if not isinstance(drop_rate, int | float) or not 0.0 <= float(drop_rate) < 1.0:
            raise ConfigError(f"model drop_rate must be in [0, 1), got {drop_rate!r}")
        channels = [16, 16 * k, 32 * k, 64 * k]
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        args = (float(drop_rate), float(bn_momentum))
        self.block1 = WRNGroup(n, channels[0], channels[1], 1, *args)
        if sub_block1:
            self.sub_block1 = WRNGroup(n, channels[0], channels[1], 1, *args)
        self.block2 = WRNGroup(n, channels[1], channels[2], 2, *args)
        self.block3 = WRNGroup(n, channels[2], channels[3], 2, *args)
        self.bn1 = nn.BatchNorm2d(channels[3], momentum=float(bn_momentum))
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        self.nChannels = channels[3]  # noqa: N815 (RobustBench's attribute name)
        _wrn_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(_global_avg_pool(out))


# --------------------------------------------------------------------------------------------
# DeepMind WideResNet (RobustBench `DMWideResNet`)
# --------------------------------------------------------------------------------------------


class DMBlock(nn.Module):
    """Pre-activation block with TF-"SAME" padding; names match RobustBench's `_Block`."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        activation_fn: type[nn.Module] = nn.SiLU,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DMBlock supports stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu_0 = activation_fn()
        # Padding is done by hand in forward (SAME semantics for stride 2), hence padding=0.
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu_1 = activation_fn()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut: nn.Module | None = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
            if self.has_shortcut
            else None
        )
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(act) if self.shortcut is not None else x
        out = self.conv_0(F.pad(act, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return torch.add(shortcut, out)


class DMBlockGroup(nn.Module):
    """`n` DM blocks at one width, in a Sequential called `block` (RobustBench's `_BlockGroup`)."""

    def __init__(
        self,
        num_blocks: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        activation_fn: type[nn.Module],
        bn_momentum: float,
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    activation_fn,
                    bn_momentum,
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind WideResNet (WRN-28-10 with SiLU/Swish by default) with built-in normalisation.

    `bn_momentum` defaults to 0.01 (TF decay 0.99), the value of the DeepMind recipe and of the
    training code of Rebuffi et al. / Wang et al. 2023; RobustBench's inference-only class keeps
    PyTorch's 0.1. Momentum is not part of the state dict, so this does not affect loading or
    eval-mode logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        depth: int = 28,
        width: int = 10,
        activation_fn: type[nn.Module] = nn.SiLU,
        bn_momentum: float = 0.01,
        mean: StatsLike = None,
        std: StatsLike = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_channels, bn_momentum)
        n = wrn_blocks_per_group(depth)
        k = positive_int(width, "width")
        momentum = float(bn_momentum)
        channels = [16, 16 * k, 32 * k, 64 * k]
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.init_conv = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, channels[0], channels[1], 1, activation_fn, momentum),
            DMBlockGroup(n, channels[1], channels[2], 2, activation_fn, momentum),
            DMBlockGroup(n, channels[2], channels[3], 2, activation_fn, momentum),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3], momentum=momentum)
        self.relu = activation_fn()
        self.logits = nn.Linear(channels[3], num_classes)
        self.num_channels = channels[3]
        _wrn_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(self.normalize(x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(_global_avg_pool(out))
