"""PyTorch architectures a manifest can name. Weights are loaded into these from safetensors,
so no model code is ever unpickled."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spark_jobs.models.resnet import ResNet18, ResNet50


class SmallCNN(nn.Module):
    """A small convolutional classifier for the example images (64 px, a few hundred KB)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


#: Architecture names a PyTorch manifest may use, each a factory of ``num_classes``.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
}


def build_network(architecture: str, num_classes: int) -> nn.Module:
    """Instantiate a named architecture (random weights)."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown PyTorch architecture {architecture!r}: known ones are {sorted(ARCHITECTURES)}; "
            "add yours to spark_jobs/models/torch_nets.py"
        ) from None
    return factory(num_classes)
