"""Keras predictor: a ``.keras`` archive loaded with ``safe_mode=True`` from the broadcast bytes.

TensorFlow is configured before it first initialises in the worker process: it sees only the
GPU Spark assigned to the task (with memory growth, so several workers can share nothing by
accident), or no GPU at all on CPU executors, and its intra-op threads equal the task's cores.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spark_jobs.model_store import ModelLoadError, UnsafeModelError
from spark_jobs.models import BatchOutput

if TYPE_CHECKING:
    from spark_jobs.model_store import ModelVersion

log = logging.getLogger("rescore.models.keras")


def configure_tensorflow(device: str, num_threads: int | None) -> None:
    """Pin TensorFlow to ``device`` (``cpu`` or ``cuda:<n>``) and ``num_threads`` intra-op threads.

    Must run before TensorFlow's runtime starts in this process; later calls (a reused worker
    that already ran a Keras model) keep the first settings and log it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    try:
        gpus = tf.config.list_physical_devices("GPU")
        if device.startswith("cuda"):
            index = device.split(":", 1)[1] if ":" in device else "0"
            chosen = [gpu for gpu in gpus if gpu.name.rsplit(":", 1)[-1] == index]
            if not chosen:
                raise ModelLoadError(
                    f"Spark assigned GPU {index} but TensorFlow sees {[g.name for g in gpus] or 'no GPU'}: "
                    "install tensorflow with CUDA on the GPU executors, or score on the CPU profile"
                )
            tf.config.set_visible_devices(chosen, "GPU")
            for gpu in chosen:
                tf.config.experimental.set_memory_growth(gpu, True)
        elif gpus:
            tf.config.set_visible_devices([], "GPU")
        if num_threads:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as exc:  # TensorFlow already initialised in this reused worker
        log.info("TensorFlow already initialised in this worker, keeping its device and threads: %s", exc)


def load_keras_model(data: bytes, source: str) -> Any:
    """Load a ``.keras`` archive from bytes with ``safe_mode=True`` (no Python code is deserialised)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    with tempfile.TemporaryDirectory(prefix="rescore-keras-") as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)  # Keras opens archives by path; the copy lives only while loading
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
                raise UnsafeModelError(
                    f"{source} holds Python code (a Lambda layer) that only loads with safe_mode=False: "
                    "Rescore never deserialises code from model files; replace the Lambda with a built-in "
                    "or registered layer and save again"
                ) from exc
            raise ModelLoadError(f"{source} is not a loadable .keras model: {exc}") from exc


class KerasPredictor:
    """Builds the model once; :meth:`forward` runs a compiled ``tf.function`` per batch."""

    def __init__(
        self,
        version: ModelVersion,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        mixed_precision: bool = False,
    ) -> None:
        configure_tensorflow(device, num_threads)
        import tensorflow as tf

        self.manifest = version.manifest
        source = f"weights {self.manifest.weights!r} of {self.manifest.name} v{self.manifest.version}"
        model = load_keras_model(version.weights, source)
        outputs = [model.outputs[0]]
        if self.manifest.embedding:
            try:
                outputs.append(model.get_layer(self.manifest.embedding).output)
            except ValueError as exc:
                raise ModelLoadError(
                    f"embedding layer {self.manifest.embedding!r} of {self.manifest.name} is not in the model: "
                    f"use one of {[layer.name for layer in model.layers]}"
                ) from exc
        classes = int(model.outputs[0].shape[-1])
        if classes != len(self.manifest.labels):
            raise ModelLoadError(
                f"{source} has {classes} outputs but the manifest lists {len(self.manifest.labels)} labels"
            )
        import keras

        self.model = keras.Model(model.inputs, outputs) if len(outputs) > 1 else model
        self._device = "/GPU:0" if device.startswith("cuda") else "/CPU:0"
        # Mixed precision for Keras is a property of the saved model (its dtype policy); nothing to switch here.
        # One graph for every batch size: traced on the first batch with the batch dimension left
        # open, so a partition's last, shorter batch does not trace the model again (MobileNetV2 at
        # 160 px: 1.8 s for the first trace, 1.0 s more for a second shape, in every Python worker).
        image_shape = tuple(self.model.inputs[0].shape[1:])
        self._call = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)],
        )

    @property
    def traces(self) -> int:
        """How many times the model's graph has been traced in this process (1 once it has run)."""
        return int(self._call.experimental_get_tracing_count())

    def forward(self, batch: np.ndarray) -> BatchOutput:
        import tensorflow as tf

        nhwc = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))  # Keras convolutions are channels-last
        with tf.device(self._device):
            result = self._call(tf.constant(nhwc))
        outputs = result if isinstance(result, (list, tuple)) else [result]
        probabilities = np.asarray(outputs[0], dtype=np.float32)
        if self.manifest.output == "logits":
            shifted = probabilities - probabilities.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            probabilities = exp / exp.sum(axis=1, keepdims=True)
        embedding = None
        if len(outputs) > 1:
            embedding = np.asarray(outputs[1], dtype=np.float32).reshape(len(batch), -1)
        return BatchOutput(probabilities, embedding)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities only."""
        return self.forward(batch).probabilities
