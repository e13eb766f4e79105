"""The requirements the benchmark states when it logs its models to MLflow (include/bench/models.py)."""

from __future__ import annotations

from importlib import metadata

import pytest

from include.bench.models import pinned_requirements

pytestmark = pytest.mark.unit


def test_a_pytorch_model_pins_the_installed_torch_and_safetensors() -> None:
    import safetensors
    import torch

    pins = pinned_requirements("pytorch")

    assert f"torch=={torch.__version__}" in pins
    assert f"safetensors=={safetensors.__version__}" in pins
    assert all(pin.count("==") == 1 for pin in pins)


def test_a_keras_model_pins_whichever_tensorflow_distribution_is_installed() -> None:
    installed = [name for name in ("tensorflow-cpu", "tensorflow") if _installed(name)]
    pins = pinned_requirements("keras")

    assert f"keras=={metadata.version('keras')}" in pins  # not imported: TensorFlow takes seconds to load
    assert f"{installed[0]}=={metadata.version(installed[0])}" in pins
    assert not any(pin.startswith(("torch==", "safetensors==")) for pin in pins)


def test_an_unknown_framework_is_refused_naming_where_to_add_it() -> None:
    with pytest.raises(ValueError, match=r"no MLflow requirements known for framework 'onnx'.*MLFLOW_REQUIREMENTS"):
        pinned_requirements("onnx")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True
