"""Score: predict every image that has no prediction yet from a model version.

The driver reads the version from the model store once and broadcasts manifest + weights; the
executors never touch the store. An iterator pandas UDF decodes and preprocesses the bytes and
runs the model batch by batch, yielding each batch's predictions as soon as they exist, so a
partition is never held in memory. The model is built once per Python worker process and reused
across tasks and batches (cache keyed by model name and version; this relies on
``spark.python.worker.reuse``, Spark's default).

    spark-submit spark_jobs/score.py --home var --model-name shapes [--model-version 2]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Tuple  # noqa: UP035 - pandas_udf reads typing.Tuple hints

import pandas as pd

from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.current import resolve_version
from spark_jobs.model_store import Manifest, ModelStore, ModelVersion
from spark_jobs.session import JobError, get_spark, read_table, run_main

if TYPE_CHECKING:
    from pyspark.broadcast import Broadcast
    from pyspark.sql import DataFrame

    from spark_jobs.models import Predictor

log = logging.getLogger("rescore.score")

#: Schema of ``warehouse/predictions``, partitioned by ``model_name`` and ``model_version``.
#: ``error`` is null unless the image could not be decoded at scoring time (then label is null).
PREDICTIONS_SCHEMA = (
    "image_id string, label string, score float, probabilities array<float>, error string, "
    "scored_at timestamp, run_id string"
)
PREDICTION_STRUCT = "label string, score float, probabilities array<float>, error string"
DEFAULT_BATCH_SIZE = 64

# One predictor per Python worker process, keyed by (model name, version).
_PREDICTORS: dict[tuple[str, str], Predictor] = {}


def _task_device() -> tuple[str, int | None]:
    """The GPU Spark assigned to this task, else CPU, and the task's cores."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    cpus = None
    if ctx is not None:
        cpus = ctx.cpus()
        gpus = ctx.resources().get("gpu")
        if gpus is not None and gpus.addresses:
            return f"cuda:{gpus.addresses[0]}", cpus
    return "cpu", cpus


def get_predictor(payload: dict[str, Any]) -> Predictor:
    """Build the predictor for a broadcast payload once per worker process, then reuse it."""
    manifest = Manifest.from_dict(payload["manifest"])
    key = (manifest.name, str(manifest.version))
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        from spark_jobs.models import build_predictor

        device, cpus = _task_device()
        predictor = build_predictor(ModelVersion(manifest, payload["weights"]), device=device, num_threads=cpus)
        _PREDICTORS[key] = predictor
    return predictor


def _read_bytes(content: Any, path: str) -> bytes:
    if content is not None:
        return bytes(content)
    # Files above the ingest size limit are stored without bytes: read them from where they landed.
    local = path[len("file:") :] if path.startswith("file:") else path
    return Path(local).read_bytes()


def predict_frame(predictor: Predictor, contents: pd.Series, paths: pd.Series) -> pd.DataFrame:
    """Decode, preprocess and predict one batch; undecodable images get an ``error`` and no label."""
    import numpy as np

    from spark_jobs.images import decode_for_model

    manifest = predictor.manifest
    size = manifest.input_size
    mean = (manifest.mean[0], manifest.mean[1], manifest.mean[2])
    std = (manifest.std[0], manifest.std[1], manifest.std[2])
    arrays: list[np.ndarray] = []
    ok_rows: list[int] = []
    errors: list[str | None] = [None] * len(contents)
    for i, (content, path) in enumerate(zip(contents, paths, strict=True)):
        try:
            arrays.append(decode_for_model(_read_bytes(content, path), size, mean, std))
            ok_rows.append(i)
        except Exception as exc:  # one bad image must not fail the partition
            errors[i] = f"cannot decode {path}: {exc}"
    labels: list[str | None] = [None] * len(contents)
    scores: list[float | None] = [None] * len(contents)
    probabilities: list[list[float] | None] = [None] * len(contents)
    if arrays:
        probs = predictor.forward(np.stack(arrays)).probabilities
        top = probs.argmax(axis=1)
        for row, p, t in zip(ok_rows, probs, top, strict=True):
            labels[row] = manifest.labels[int(t)]
            scores[row] = float(p[t])
            probabilities[row] = p.astype(np.float32).tolist()
    return pd.DataFrame({"label": labels, "score": scores, "probabilities": probabilities, "error": errors})


def make_score_udf(model: Broadcast[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """The iterator pandas UDF ``(content, path) -> struct<label, score, probabilities, error>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(PREDICTION_STRUCT)  # type: ignore[call-overload]
    def score_batches(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:  # noqa: UP006
        predictor = get_predictor(model.value)
        for contents, paths in batches:
            yield predict_frame(predictor, contents, paths)

    return score_batches


def select_unscored(
    images: DataFrame, predictions: DataFrame | None, *, model_name: str, model_version: str
) -> DataFrame:
    """Distinct images (by ``image_id``) that have no prediction from this model version yet."""
    from pyspark.sql import functions as F

    distinct = images.select("image_id", "path", "content").dropDuplicates(["image_id"])
    if predictions is None:
        return distinct
    done = predictions.where((F.col("model_name") == model_name) & (F.col("model_version") == model_version)).select(
        "image_id"
    )
    return distinct.join(done, "image_id", "left_anti")


def score_images(
    images: DataFrame, model: Broadcast[dict[str, Any]], *, run_id: str, scored_at: datetime | None = None
) -> DataFrame:
    """Predictions for ``images`` (image_id, path, content) in :data:`PREDICTIONS_SCHEMA` order,
    plus ``model_name`` and ``model_version``."""
    from pyspark.sql import functions as F

    manifest = model.value["manifest"]
    udf = make_score_udf(model)
    stamp = scored_at or datetime.now(UTC)
    return images.select("image_id", udf("content", "path").alias("p")).select(
        "image_id",
        F.col("p.label").alias("label"),
        F.col("p.score").alias("score"),
        F.col("p.probabilities").alias("probabilities"),
        F.col("p.error").alias("error"),
        F.lit(stamp).cast("timestamp").alias("scored_at"),
        F.lit(run_id).alias("run_id"),
        F.lit(manifest["name"]).alias("model_name"),
        F.lit(str(manifest["version"])).alias("model_version"),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="score", description="Score unscored images with a model version.")
    parser.add_argument("--home", default=default_home(), help="RESCORE_HOME: root of tables and models")
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--model-version", default=None, help="version to score with (default: the promoted version, else the champion)"
    )
    parser.add_argument("--models", default=None, help="model store folder (default: <home>/models)")
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per model batch, also the Arrow batch size"
    )
    parser.add_argument("--run-id", default="manual", help="Airflow run id recorded on every row")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    paths = RescorePaths(args.home)
    store = ModelStore(args.models or paths.models)
    version = resolve_version(paths, store, args.model_name, args.model_version)
    model = store.read(args.model_name, version)
    spark = get_spark("rescore-score", {"spark.sql.execution.arrow.maxRecordsPerBatch": str(args.batch_size)})
    images = read_table(spark, paths.images)
    if images is None:
        raise JobError(f"the images table {paths.images} is empty: run ingest first")
    todo = select_unscored(
        images, read_table(spark, paths.predictions), model_name=args.model_name, model_version=version
    )
    pending = todo.count()
    if pending == 0:
        log.info("nothing new to score: every image already has a prediction from %s v%s", args.model_name, version)
        return 0
    log.info(
        "scoring %d images with %s v%s (%d weight bytes broadcast)",
        pending,
        args.model_name,
        version,
        len(model.weights),
    )
    payload = spark.sparkContext.broadcast({"manifest": model.manifest.to_dict(), "weights": model.weights})
    started = time.perf_counter()
    score_images(todo, payload, run_id=args.run_id).write.mode("append").partitionBy(
        "model_name", "model_version"
    ).parquet(paths.predictions)
    elapsed = time.perf_counter() - started
    log.info(
        "scored %d images in %.1f s (%.1f images/s) into %s",
        pending,
        elapsed,
        pending / max(elapsed, 1e-9),
        paths.predictions,
    )
    payload.unpersist()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("score", _main, argv)


if __name__ == "__main__":
    # Re-enter through the package so the UDF pickles by reference and the per-worker cache is shared.
    from spark_jobs.score import main as package_main

    raise SystemExit(package_main())
