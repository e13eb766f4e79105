"""GPU scoring: the assigned device, channels-last and optional autocast. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from spark_jobs.model_store import Manifest, ModelVersion
from spark_jobs.score import ScoringOptions, score_images, task_device
from tests.spark._scoring_helpers import images_frame, reference_pixels, write_samples

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.spark, pytest.mark.gpu]


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")


def _version(seed: int = 0) -> ModelVersion:
    import torch
    from safetensors.torch import save

    from spark_jobs.models.torch_nets import SmallCNN

    torch.manual_seed(seed)
    weights = save({k: v.contiguous() for k, v in SmallCNN(4).state_dict().items()})
    manifest = Manifest(
        name="gpu", framework="pytorch", architecture="small_cnn", input_size=64, labels=list("abcd"), version="1"
    )
    return ModelVersion(manifest, weights)


def test_the_task_device_is_the_gpu_spark_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyspark

    class FakeContext:
        def __init__(self, resources: dict[str, Any]) -> None:
            self._resources = resources

        def cpus(self) -> int:
            return 4

        def resources(self) -> dict[str, Any]:
            return self._resources

    monkeypatch.setattr(
        pyspark.TaskContext, "get", staticmethod(lambda: FakeContext({"gpu": SimpleNamespace(addresses=["3"])}))
    )
    assert task_device() == ("cuda:3", 4)
    assert ScoringOptions().decode_mode("cuda:3") == "prefetch"
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: FakeContext({})))
    assert task_device() == ("cpu", 4)
    assert ScoringOptions().decode_mode("cpu") == "inline"


@needs_cuda
def test_gpu_probabilities_match_the_cpu_ones() -> None:
    from spark_jobs.models import build_predictor

    batch = np.random.default_rng(0).normal(size=(16, 3, 64, 64)).astype(np.float32)
    cpu = build_predictor(_version(), device="cpu").forward(batch).probabilities
    gpu_predictor = build_predictor(_version(), device="cuda:0")
    gpu = gpu_predictor.forward(batch).probabilities
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    amp = build_predictor(_version(), device="cuda:0", mixed_precision=True).forward(batch).probabilities
    np.testing.assert_allclose(amp, cpu, atol=2e-2)
    assert amp.dtype == np.float32


@needs_cuda
def test_8_bit_pixels_normalised_on_the_gpu_score_as_normalised_ones_on_the_cpu() -> None:
    from spark_jobs.models import build_predictor

    version = _version()
    mean, std = np.float32(version.manifest.mean), np.float32(version.manifest.std)
    pixels = np.random.default_rng(1).integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
    normalised = ((pixels.astype(np.float32) / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).copy()
    cpu = build_predictor(version, device="cpu").forward(normalised).probabilities
    gpu = build_predictor(version, device="cuda:0").forward(pixels).probabilities
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


@needs_cuda
def test_convolutions_run_channels_last_on_the_gpu() -> None:
    import torch

    from spark_jobs.models import build_predictor

    predictor = build_predictor(_version(), device="cuda:0")
    conv = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv2d))  # type: ignore[attr-defined]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.device.type == "cuda"


@needs_cuda
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_the_spark_job_on_the_gpu_matches_a_cpu_forward_pass(
    spark: SparkSession, tmp_path: Path, mixed_precision: bool
) -> None:
    import torch
    from safetensors.torch import load

    from spark_jobs.models.torch_nets import SmallCNN

    # Given sample images and a small CNN, scored by the Spark job on the GPU (prefetch decoding)
    files = write_samples(tmp_path / "images", count=24, seed=5)
    version = _version(seed=1)
    payload = spark.sparkContext.broadcast({"manifest": version.manifest.to_dict(), "weights": version.weights})
    options = ScoringOptions(batch_size=5, device="cuda", mixed_precision=mixed_precision)
    try:
        frame = score_images(images_frame(spark, files), payload, run_id="gpu", options=options)
        rows = {row["image_id"]: row.asDict(recursive=True) for row in frame.collect()}
    finally:
        payload.unpersist()

    # Then every image's probabilities equal the network run on the CPU on independently decoded pixels
    net = SmallCNN(4)
    net.load_state_dict(load(version.weights))
    net.eval()
    manifest = version.manifest
    batch = np.stack([reference_pixels(f, 64, manifest.mean, manifest.std).transpose(2, 0, 1) for f in files])
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
    assert set(rows) == {f.name for f in files}
    for i, f in enumerate(files):
        assert rows[f.name]["error"] is None
        np.testing.assert_allclose(rows[f.name]["probabilities"], expected[i], atol=2e-2 if mixed_precision else 1e-3)
