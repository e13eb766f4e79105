"""ResNet-18 and ResNet-50 written in the project: registered by name, the published architectures' sizes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_resnet18_matches_the_published_parameter_count_and_output_shape() -> None:
    import torch

    from spark_jobs.models.torch_nets import build_network

    network = build_network("resnet18", 1000)
    # torchvision's resnet18 (the paper's ImageNet model) has 11,689,512 parameters.
    assert sum(p.numel() for p in network.parameters()) == 11_689_512
    with torch.inference_mode():
        out = build_network("resnet18", 7).eval()(torch.zeros(2, 3, 160, 160))
    assert tuple(out.shape) == (2, 7)


def test_resnet50_matches_the_published_parameter_count_and_output_shape() -> None:
    import torch

    from spark_jobs.models.torch_nets import build_network

    network = build_network("resnet50", 1000)
    # torchvision's resnet50 (the v1.5 layout, stride on the 3x3 convolution) has 25,557,032 parameters.
    assert sum(p.numel() for p in network.parameters()) == 25_557_032
    with torch.inference_mode():
        out = build_network("resnet50", 5).eval()(torch.zeros(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 5)
