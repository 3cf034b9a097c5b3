"""Small models for demos and tests (installed with dmcpfx); both trace with ``torch.fx.symbolic_trace``.

- :func:`small_resnet`: a CIFAR-style ResNet (the digits demo's default model).
- :func:`custom_net`: unusual but traceable wiring (channel concat of two branches,
  a depthwise conv, a squeeze-excitation multiply) to show that dmcpfx prunes any
  traceable model, not only torchvision ones.

Inputs are ``(N, 3, H, W)`` float tensors (any H, W >= 8, e.g. 32); outputs are
logits of shape ``(N, num_classes)``. A user points the CLI at a factory with a
``package.module:function`` spec, e.g. ``dmcpfx.demo_models:custom_net``. ``examples/models.py``
re-exports this module for the recipes in ``examples/``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "SmallResNet", "CustomNet", "small_resnet", "custom_net"]


def _conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """``[Conv2d (no bias, 'same' padding for odd kernels), BatchNorm2d]``."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, residual add, ReLU.

    Shapes: ``(N, c_in, H, W) -> (N, c_out, H / stride, W / stride)``. The shortcut is
    a 1x1 conv + BN (``downsample``) when the stride or channel count changes, the
    identity otherwise.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3, 1)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of :class:`BasicBlock`, global avg pool, linear.

    Stage ``i`` has ``width * 2**i`` channels; every stage after the first halves the
    resolution with its first block. ``blocks=(2, 2, 2)`` is ResNet-14 style
    (1 + 2*6 conv layers + fc).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        if width < 1 or not blocks or min(blocks) < 1:
            raise ValueError(f"small_resnet needs width >= 1 and blocks >= 1 per stage, got width={width}, blocks={tuple(blocks)}")
        self.conv1, self.bn1 = _conv_bn(3, width, 3, 1)
        self.relu = nn.ReLU()
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            layers = [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class CustomNet(nn.Module):
    """A deliberately irregular CNN (about 22k parameters).

    ``stem`` (3 -> 16) feeds two branches whose outputs are concatenated on the
    channel dim (16 + 24 = 40 channels):

    - ``branch_a``: 3x3 conv 16 -> 16;
    - ``branch_b``: depthwise 3x3 conv (16 groups) then pointwise 1x1 conv 16 -> 24.

    A squeeze-excitation gate (avg pool, 1x1 conv 40 -> 8, ReLU, 1x1 conv 8 -> 40,
    sigmoid) rescales the concat by broadcast multiplication. A stride-2 3x3 conv
    (40 -> 48), a depthwise 3x3 conv with a residual add around it, global average
    pooling and a linear head finish it. Shapes: ``(N, 3, H, W) -> (N, num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16), nn.ReLU())
        self.branch_a = nn.Sequential(*_conv_bn(16, 16), nn.ReLU())
        self.branch_b = nn.Sequential(*_conv_bn(16, 16, groups=16), nn.ReLU(), *_conv_bn(16, 24, kernel=1), nn.ReLU())
        self.se_reduce = nn.Conv2d(40, 8, 1)
        self.se_expand = nn.Conv2d(8, 40, 1)
        self.down = nn.Sequential(*_conv_bn(40, 48, stride=2), nn.ReLU())
        self.dw = nn.Sequential(*_conv_bn(48, 48, stride=1, groups=48), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(s))))
        x = self.down(x * s)
        x = x + self.dw(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def small_resnet(num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (2, 2, 2)) -> SmallResNet:
    """A CIFAR-style ResNet; see :class:`SmallResNet`. ~0.17M parameters at the defaults."""
    return SmallResNet(num_classes=num_classes, width=width, blocks=blocks)


def custom_net(num_classes: int = 10) -> CustomNet:
    """The irregular example CNN; see :class:`CustomNet`."""
    return CustomNet(num_classes=num_classes)
