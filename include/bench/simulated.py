"""A simulated accelerator, to rehearse the GPU benchmark's pipelines on a machine without a GPU.

On a GPU, a 224 px ResNet-50 in float16 scores images faster than a few cores decode them, so
what the GPU benchmark measures is mostly how well each method keeps the device fed: decoding
processes or threads, hand-over of pixels, and (for Spark) the JVM's reading, Arrow and the gaps
between tasks. :class:`SimulatedAccelerator` stands in for the network: a batch takes a fixed
time per image during which the calling thread waits without using a core (it sleeps, with the
GIL released, as a thread does while it waits for a GPU to finish), and its probabilities come
from a cheap function of the pixels, the same whether the batch arrives as 8-bit pixels (what
Rescore hands a GPU predictor) or normalised float32 ones (what the PyTorch loop's workers
make), so every method's predictions can still be checked against the loop's.

It says nothing about the device's own speed, and on a machine of a few cores the decoding
competes with the JVM and the scoring thread for the same cores, which a GPU host of 16 cores
does less; the ratios between methods are what it is for.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spark_jobs.models import BatchOutput

if TYPE_CHECKING:
    from spark_jobs.model_store import Manifest, ModelVersion

#: every 8th row and column of an image feeds the probabilities (a 64th of the pixels)
_STRIDE = 8


class SimulatedAccelerator:
    """A predictor that takes ``ms_per_image`` of waiting per image and no computation to speak of.

    ``takes_uint8``: like Rescore's PyTorch predictor, it takes 8-bit ``N x H x W x 3`` pixels
    on a GPU task and normalises them "on the device"; float32 ``N x 3 x H x W`` batches too.

    ``device_lock``: a file that every accelerator built with it locks while it works, so that
    the processes of tasks sharing one GPU (``--tasks-per-gpu``) take turns on one simulated
    device, as their kernels would on the GPU, instead of each getting a device of its own.
    """

    takes_uint8 = True

    def __init__(
        self,
        manifest: Manifest,
        ms_per_image: float,
        sleep: Callable[[float], None] = time.sleep,
        device_lock: str | Path | None = None,
    ) -> None:
        if ms_per_image < 0:
            raise ValueError(f"a simulated accelerator's time per image must be 0 or more, got {ms_per_image} ms")
        self.manifest = manifest
        self.seconds_per_image = ms_per_image / 1000
        self._sleep = sleep
        self.device_lock = None if device_lock is None else Path(device_lock)
        self._mean = np.asarray(manifest.mean, dtype=np.float64)
        self._std = np.asarray(manifest.std, dtype=np.float64)
        # a fixed projection of the three channel means onto the labels
        rng = np.random.default_rng(len(manifest.labels))
        self._projection = 4.0 * rng.standard_normal((3, len(manifest.labels)))
        #: batches received, by the pixels' type (``uint8``: Rescore's GPU path; ``float32``: normalised)
        self.batches_by_dtype: Counter[str] = Counter()

    def channel_means(self, batch: np.ndarray) -> np.ndarray:
        """``N x 3``: each image's normalised channel means, over every 8th row and column."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"a batch is N x H x W x 3 (8-bit) or N x 3 x H x W (float32), got shape {batch.shape}")
        if batch.dtype == np.uint8:  # N x H x W x 3: normalise the means (normalising is linear)
            sample = batch[:, ::_STRIDE, ::_STRIDE, :].reshape(len(batch), -1, 3)
            return (sample.mean(axis=1, dtype=np.float64) / 255.0 - self._mean) / self._std
        sample = batch[:, :, ::_STRIDE, ::_STRIDE].reshape(len(batch), 3, -1)
        return sample.mean(axis=2, dtype=np.float64)

    def forward(self, batch: np.ndarray) -> BatchOutput:
        self.batches_by_dtype[np.asarray(batch).dtype.name] += 1
        logits = self.channel_means(batch) @ self._projection
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        with self._device():
            self._sleep(len(probabilities) * self.seconds_per_image)
        return BatchOutput(probabilities, None)

    @contextlib.contextmanager
    def _device(self) -> Iterator[None]:
        """Hold the shared device (an exclusive lock on :attr:`device_lock`), if there is one."""
        if self.device_lock is None:
            yield
            return
        with self.device_lock.open("a") as handle:  # a lock per open file: threads take turns too
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch).probabilities


class SimulatedBuilder:
    """A :class:`spark_jobs.models.PredictorBuilder` of :class:`SimulatedAccelerator` (pickled to
    Spark's Python workers with the scoring options)."""

    def __init__(self, ms_per_image: float, device_lock: str | None = None) -> None:
        self.ms_per_image = ms_per_image
        self.device_lock = device_lock

    def __call__(
        self,
        version: ModelVersion,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        mixed_precision: bool = False,
    ) -> SimulatedAccelerator:
        return SimulatedAccelerator(version.manifest, self.ms_per_image, device_lock=self.device_lock)
