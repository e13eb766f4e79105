"""The Spark job's probabilities equal a direct forward pass in plain Python, for PyTorch and Keras."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from spark_jobs.model_store import Manifest
from spark_jobs.score import PREDICTIONS_SCHEMA, ScoringOptions, score_images
from tests.spark._scoring_helpers import images_frame, reference_pixels, write_samples

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark

LABELS = ["circle", "square", "triangle", "cross"]
MEAN = [0.5, 0.45, 0.4]
STD = [0.25, 0.3, 0.2]
SIZE = 32


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_samples(tmp_path_factory.mktemp("correctness-images"), count=30, seed=11)


def _score(spark: SparkSession, files: list[Path], manifest: Manifest, weights: bytes, options: ScoringOptions):  # type: ignore[no-untyped-def]
    payload = spark.sparkContext.broadcast({"manifest": manifest.to_dict(), "weights": weights})
    try:
        frame = score_images(images_frame(spark, files), payload, run_id="test", options=options)
        rows = {row["image_id"]: row.asDict(recursive=True) for row in frame.collect()}
        return frame.schema, rows
    finally:
        payload.unpersist()


def _check_top_k(row: dict, expected: np.ndarray, k: int) -> None:  # type: ignore[type-arg]
    order = np.argsort(-expected)[:k]
    assert [t["label"] for t in row["top_k"]] == [LABELS[i] for i in order]
    np.testing.assert_allclose([t["score"] for t in row["top_k"]], expected[order], atol=1e-4)
    assert row["label"] == LABELS[order[0]]
    assert row["score"] == pytest.approx(float(expected[order[0]]), abs=1e-4)


@pytest.mark.parametrize("decode", ["inline", "prefetch"])
def test_torch_probabilities_equal_a_direct_forward_pass(
    spark: SparkSession, sample_files: list[Path], tmp_path: Path, decode: str
) -> None:
    import torch
    from safetensors.torch import load, save

    from spark_jobs.models.torch_nets import SmallCNN

    # Given a randomly initialised small CNN saved as safetensors, with an embedding layer declared
    torch.manual_seed(3)
    weights = save({k: v.contiguous() for k, v in SmallCNN(len(LABELS)).state_dict().items()})
    manifest = Manifest(
        name=f"torch-correct-{decode}",
        framework="pytorch",
        architecture="small_cnn",
        input_size=SIZE,
        labels=LABELS,
        mean=MEAN,
        std=STD,
        embedding="pool",
        version="1",
    )

    # When the Spark job scores the files with a batch size that leaves a ragged last batch
    schema, rows = _score(spark, sample_files, manifest, weights, ScoringOptions(batch_size=7, top_k=3, decode=decode))

    # Then each image's probabilities equal the network run directly on independently decoded pixels
    net = SmallCNN(len(LABELS))
    net.load_state_dict(load(weights))
    net.eval()
    batch = np.stack([reference_pixels(f, SIZE, MEAN, STD).transpose(2, 0, 1) for f in sample_files])
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()
        pooled = torch.flatten(net.pool(net.features(torch.from_numpy(batch))), 1).numpy()
    assert set(rows) == {f.name for f in sample_files}
    for i, f in enumerate(sample_files):
        row = rows[f.name]
        assert row["error"] is None
        np.testing.assert_allclose(row["probabilities"], expected[i], atol=1e-4)
        np.testing.assert_allclose(row["embedding"], pooled[i], atol=1e-4)
        _check_top_k(row, expected[i], 3)
    from pyspark.sql.types import StructType

    assert [f.name for f in schema.fields] == [
        *StructType.fromDDL(PREDICTIONS_SCHEMA).fieldNames(),
        "model_name",
        "model_version",
    ]
    assert StructType.fromDDL(PREDICTIONS_SCHEMA).fieldNames() == [
        "image_id",
        "label",
        "score",
        "probabilities",
        "top_k",
        "embedding",
        "error",
        "scored_at",
        "run_id",
    ]


def test_keras_probabilities_equal_a_direct_forward_pass(
    spark: SparkSession, sample_files: list[Path], tmp_path: Path
) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    # Given a small randomly initialised Keras convnet saved as .keras (no embedding declared)
    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    manifest = Manifest(
        name="keras-correct",
        framework="keras",
        architecture="convnet",
        input_size=SIZE,
        labels=LABELS,
        mean=MEAN,
        std=STD,
        weights="model.keras",
        output="probabilities",
        version="1",
    )

    # When the Spark job scores the files
    _, rows = _score(spark, sample_files, manifest, path.read_bytes(), ScoringOptions(batch_size=8, top_k=2))

    # Then the probabilities equal the saved model called directly on independently decoded pixels
    model = keras.saving.load_model(path)
    batch = np.stack([reference_pixels(f, SIZE, MEAN, STD) for f in sample_files])
    expected = np.asarray(model(batch))
    for i, f in enumerate(sample_files):
        row = rows[f.name]
        assert row["error"] is None
        np.testing.assert_allclose(row["probabilities"], expected[i], atol=1e-4)
        assert row["embedding"] is None
        _check_top_k(row, expected[i], 2)


def test_an_undecodable_image_gets_an_error_and_the_rest_are_scored(
    spark: SparkSession, sample_files: list[Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save

    from spark_jobs.models.torch_nets import SmallCNN

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(sample_files[0].read_bytes()[:40])
    torch.manual_seed(0)
    weights = save({k: v.contiguous() for k, v in SmallCNN(len(LABELS)).state_dict().items()})
    manifest = Manifest(
        name="torch-broken", framework="pytorch", architecture="small_cnn", input_size=SIZE, labels=LABELS, version="1"
    )
    _, rows = _score(spark, [*sample_files[:5], broken], manifest, weights, ScoringOptions(batch_size=4))
    assert rows["broken.jpg"]["label"] is None
    assert rows["broken.jpg"]["top_k"] is None
    assert "cannot decode" in rows["broken.jpg"]["error"]
    assert all(rows[f.name]["label"] in LABELS for f in sample_files[:5])


def test_files_listed_by_spark_and_read_by_the_udf_score_as_their_bytes_do(
    spark: SparkSession, sample_files: list[Path], tmp_path: Path
) -> None:
    import torch
    from pyspark.sql import functions as F
    from safetensors.torch import save

    from spark_jobs.models.torch_nets import SmallCNN
    from spark_jobs.score import read_by_udf

    torch.manual_seed(5)
    weights = save({k: v.contiguous() for k, v in SmallCNN(len(LABELS)).state_dict().items()})
    manifest = Manifest(
        name="torch-read-by-udf", framework="pytorch", architecture="small_cnn", input_size=SIZE, labels=LABELS
    )
    payload = spark.sparkContext.broadcast({"manifest": manifest.to_dict(), "weights": weights})
    try:
        # Given files listed with binaryFile, scored once with their bytes and once through read_by_udf
        listed = (
            spark.read.format("binaryFile")
            .load([str(f) for f in sample_files[:12]])
            .select(F.element_at(F.split("path", "/"), -1).alias("image_id"), "path", "content")
        )
        by_udf = score_images(read_by_udf(listed), payload, run_id="t", options=ScoringOptions(batch_size=5))
        with_bytes = score_images(listed, payload, run_id="t", options=ScoringOptions(batch_size=5))

        # Then Spark's scan no longer reads the files' content (binaryFile reads a file's bytes only for it)
        def read_schema(frame: DataFrame) -> str:
            plan = frame._jdf.queryExecution().executedPlan().toString()
            return next(line for line in plan.splitlines() if "ReadSchema" in line).split("ReadSchema")[1]

        assert "content" not in read_schema(by_udf)
        assert "content" in read_schema(with_bytes)
        rows = {r["image_id"]: r.asDict(recursive=True) for r in by_udf.collect()}
        expected = {r["image_id"]: r.asDict(recursive=True) for r in with_bytes.collect()}

        # And a row whose file is gone when the UDF reads it gets an error naming it, not an exception
        missing = spark.createDataFrame(
            [("missing.jpg", f"file:{tmp_path / 'missing.jpg'}", None)], "image_id string, path string, content binary"
        )
        (gone,) = score_images(missing, payload, run_id="t").collect()
    finally:
        payload.unpersist()
    # Then each file read by the UDF has the probabilities its bytes give
    assert set(rows) == set(expected) == {f.name for f in sample_files[:12]}
    for name, row in rows.items():
        assert row["error"] is None
        np.testing.assert_allclose(row["probabilities"], expected[name]["probabilities"], atol=1e-6)
        assert row["label"] == expected[name]["label"]
    assert gone["label"] is None
    assert "missing.jpg" in gone["error"]
