"""ResNet-18 written in the project: registered by name, the published architecture's size."""

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
