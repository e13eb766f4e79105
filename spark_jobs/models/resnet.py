"""ResNet-18 and ResNet-50 (He et al., 2015) written out in the project, so a manifest can name
them and their weights load from safetensors without any model code being unpickled or downloaded."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a shortcut; a 1x1 projection
    when the shape changes (the "v1.5" layout most ResNet-50 weights use)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class _ResNet(nn.Module):
    """The ImageNet ResNet layout: a 7x7 stride-2 stem with a 3x3 max-pool, four stages of
    ``depths`` blocks (widths 64-128-256-512, the first block of stages 2-4 halving the
    resolution), global average pooling and a linear classifier."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, int, int, int], num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        c_in = 64
        for width, blocks, stride in zip((64, 128, 256, 512), depths, (1, 2, 2, 2), strict=True):
            layers: list[nn.Module] = [block(c_in, width, stride)]
            c_in = width * block.expansion
            layers += [block(c_in, width, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class ResNet18(_ResNet):
    """ResNet-18: four stages of two basic blocks."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes)


class ResNet50(_ResNet):
    """ResNet-50: four stages of 3-4-6-3 bottleneck blocks (outputs four times the width); the GPU
    benchmark's model at 224 px."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), num_classes)
