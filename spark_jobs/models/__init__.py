"""One small interface for models of any framework.

A published version (manifest + weights bytes) becomes a :class:`Predictor` through
:func:`build_predictor`. Predictors take a batch of preprocessed images (``N x 3 x H x W``
float32, as :func:`spark_jobs.images.decode_for_model` makes them) and return class
probabilities (``N x len(labels)``). Framework imports happen inside the builders, so this
module is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from spark_jobs.model_store import Manifest, ModelVersion


class Predictor(Protocol):
    """A model ready to score preprocessed batches."""

    manifest: Manifest

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Return class probabilities, one row per image, each row summing to 1."""
        ...


def build_predictor(version: ModelVersion, *, device: str = "cpu", num_threads: int | None = None) -> Predictor:
    """Build the predictor for a published version.

    :param version: manifest and weights bytes, as the driver broadcast them.
    :param device: ``cpu`` or ``cuda:<n>``.
    :param num_threads: intra-op threads; set before the first inference.
    """
    framework = version.manifest.framework
    if framework == "pytorch":
        from spark_jobs.models.torch_predictor import TorchPredictor

        return TorchPredictor(version, device=device, num_threads=num_threads)
    raise NotImplementedError(
        f"framework {framework!r} of {version.manifest.name} has no predictor yet: publish a PyTorch model"
    )
