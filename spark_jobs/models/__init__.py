"""One small interface for models of any framework.

A published version (manifest + weights bytes) becomes a :class:`Predictor` through
:func:`build_predictor`. Predictors take a batch of preprocessed images (``N x 3 x H x W``
float32, as :func:`spark_jobs.images.decode_for_model` makes them) and return class
probabilities (``N x len(labels)``) and, for models whose manifest names an ``embedding``
layer, that layer's output flattened per image. Framework imports happen inside the builders,
so this module is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from spark_jobs.model_store import check_weights

if TYPE_CHECKING:
    import numpy as np

    from spark_jobs.model_store import Manifest, ModelVersion


class BatchOutput(NamedTuple):
    """What a predictor returns for one batch."""

    #: ``N x len(labels)`` float32, each row summing to 1.
    probabilities: np.ndarray
    #: ``N x D`` float32 when the manifest names an embedding layer, else None.
    embedding: np.ndarray | None


class Predictor(Protocol):
    """A model ready to score preprocessed batches."""

    manifest: Manifest

    def forward(self, batch: np.ndarray) -> BatchOutput:
        """Probabilities (and the embedding, when declared) for an ``N x 3 x H x W`` batch.

        A predictor with a true ``takes_uint8`` attribute also takes ``N x H x W x 3`` 8-bit
        pixels and normalises them itself; the scoring UDF sends those on GPU tasks."""
        ...

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities only: ``forward(batch).probabilities``."""
        ...


class PredictorBuilder(Protocol):
    """Anything that turns a broadcast version into a predictor (tests inject fakes)."""

    def __call__(
        self,
        version: ModelVersion,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        mixed_precision: bool = False,
    ) -> Predictor: ...


def build_predictor(
    version: ModelVersion, *, device: str = "cpu", num_threads: int | None = None, mixed_precision: bool = False
) -> Predictor:
    """Build the predictor for a published version.

    The weights bytes are checked first: anything that would need unpickling is refused with
    :class:`spark_jobs.model_store.UnsafeModelError`, before any framework sees it.

    :param version: manifest and weights bytes, as the driver broadcast them.
    :param device: ``cpu`` or ``cuda:<n>`` (the GPU Spark assigned to the task).
    :param num_threads: intra-op threads (the task's cores); set before the first inference.
    :param mixed_precision: run convolutional nets under float16 autocast on GPU (ignored on CPU).

    Like the thread count, one setting is for the whole process: freed memory stays in it for
    the next batch (:mod:`spark_jobs.allocator`; inference 20-30% cheaper on the CPU).
    """
    from spark_jobs.allocator import keep_freed_memory

    keep_freed_memory()
    manifest = version.manifest
    check_weights(manifest.framework, version.weights, f"weights {manifest.weights!r} of {manifest.name}")
    if manifest.framework == "pytorch":
        from spark_jobs.models.torch_predictor import TorchPredictor

        return TorchPredictor(version, device=device, num_threads=num_threads, mixed_precision=mixed_precision)
    if manifest.framework == "keras":
        from spark_jobs.models.keras_predictor import KerasPredictor

        return KerasPredictor(version, device=device, num_threads=num_threads, mixed_precision=mixed_precision)
    raise NotImplementedError(
        f"framework {manifest.framework!r} of {manifest.name} has no predictor: publish a PyTorch or Keras model"
    )
