"""The ways of scoring a folder of images into a Parquet table of predictions that the benchmark
compares. Every method reads the same files, uses the same weights (the broadcast payload of a
published version), the same batch size, and writes ``image_id`` (file name) + ``probabilities``.

Spark methods run one intra-op thread per task (``local[cores]``: one task per core), as a
skilled user would set it; the defaults would oversubscribe the cores and measure that instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # pandas UDF type hints are resolved at runtime

if TYPE_CHECKING:
    from pyspark.broadcast import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from spark_jobs.model_store import ModelVersion
    from spark_jobs.models import Predictor

log = logging.getLogger(__name__)

CEILING = "ceiling"
RESCORE = "rescore"
PREDICT_BATCH_UDF = "predict_batch_udf"
PREDICT_BATCH_UDF_BYTES = "predict_batch_udf_bytes"
MLFLOW_SPARK_UDF = "mlflow_spark_udf"
BLOG_PATTERN = "blog_pandas_udf"
ROW_UDF = "row_udf"
SPARK_FLOOR = "spark_io_floor"
SPARK_METHODS = (RESCORE, PREDICT_BATCH_UDF, PREDICT_BATCH_UDF_BYTES, MLFLOW_SPARK_UDF, BLOG_PATTERN, ROW_UDF)

DESCRIPTIONS = {
    CEILING: "plain Python, no Spark: best of one process with a DataLoader (0..cores workers) "
    "and one single-threaded process per core",
    RESCORE: "Rescore's scoring job (spark_jobs.score.score_images: iterator Arrow UDF; Spark lists the files "
    "and the UDF reads each one itself, spark_jobs.score.read_by_udf, so the bytes skip the JVM)",
    PREDICT_BATCH_UDF: "pyspark.ml.functions.predict_batch_udf as documented: decode into an array column, "
    "then predict",
    PREDICT_BATCH_UDF_BYTES: "predict_batch_udf fed the raw bytes, decoding inside predict_fn",
    MLFLOW_SPARK_UDF: 'mlflow.pyfunc.spark_udf(env_manager="local") on the decoded array column, model from a '
    "local sqlite registry",
    BLOG_PATTERN: "blog pattern: Series-to-Series pandas UDF, model rebuilt from a broadcast every batch, "
    "predictions collected into a list",
    ROW_UDF: "row-at-a-time Python UDF, model cached per worker",
    SPARK_FLOOR: "not a method: Rescore's Spark job without reading, decoding or a model (list the files, "
    "write a row per file), to show Spark's own share",
}


@dataclass
class BenchContext:
    """What every run shares: the Spark session, the cores, the batch size, per-model state."""

    spark: SparkSession
    cores: int
    batch_size: int
    payloads: dict[str, Broadcast[dict[str, Any]]] = field(default_factory=dict)
    mlflow_uris: dict[str, str] = field(default_factory=dict)
    pools: dict[str, ProcessPoolExecutor] = field(default_factory=dict)
    #: per model, Rescore's last run: where its Python workers' time went (spark_jobs.stages)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Shared helpers (module level, so Spark pickles them by reference and worker caches persist)


def version_of(payload: dict[str, Any]) -> ModelVersion:
    from spark_jobs.model_store import Manifest, ModelVersion

    return ModelVersion(Manifest.from_dict(payload["manifest"]), payload["weights"])


def decode(payload_manifest: dict[str, Any], data: bytes) -> np.ndarray:
    from spark_jobs.images import decode_for_model

    mean = payload_manifest["mean"]
    std = payload_manifest["std"]
    return decode_for_model(data, payload_manifest["input_size"], (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


_ROW_PREDICTORS: dict[str, Predictor] = {}


def cached_predictor(payload: dict[str, Any]) -> Predictor:
    """One predictor per Python worker and model (the row-at-a-time UDF's cache)."""
    key = payload["manifest"]["name"]
    predictor = _ROW_PREDICTORS.get(key)
    if predictor is None:
        from spark_jobs.models import build_predictor

        predictor = build_predictor(version_of(payload), num_threads=1)
        _ROW_PREDICTORS[key] = predictor
    return predictor


def write_predictions(out: Path, image_ids: list[str], probabilities: np.ndarray, part: str = "part-0") -> None:
    """The ceiling's stored predictions: one Parquet file per process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "probabilities": pa.array(list(probabilities.astype(np.float32)), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, out / f"{part}.parquet")


def read_predictions(out: Path) -> dict[str, np.ndarray]:
    """``image_id -> probabilities`` from any method's output folder."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(out), format="parquet", partitioning="hive").to_table(columns=["image_id", "probabilities"])
    ids = table.column("image_id").to_pylist()
    probs = table.column("probabilities").to_pylist()
    return {i: np.asarray(p, dtype=np.float32) for i, p in zip(ids, probs, strict=True) if p is not None}


# ----------------------------------------------------------------------------------------------
# The ceiling: plain Python, no Spark


class _FileDataset:
    def __init__(self, files: list[Path], manifest: dict[str, Any]) -> None:
        self.files = files
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.manifest, self.files[i].read_bytes())


def ceiling_dataloader(
    payload: dict[str, Any], predictor: Predictor, files: list[Path], out: Path, *, workers: int, batch_size: int
) -> None:
    """One process: a DataLoader with ``workers`` decode processes feeding the model."""
    import multiprocessing

    from torch.utils.data import DataLoader

    # Workers fork from a clean, preloaded server, not from this process and its py4j sockets.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "include.bench.methods"])
    loader: DataLoader[np.ndarray] = DataLoader(
        _FileDataset(files, payload["manifest"]),  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=np.stack,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=context if workers else None,
    )
    parts = [predictor.predict(batch) for batch in loader]
    write_predictions(out, [f.name for f in files], np.concatenate(parts))


_POOL_PREDICTOR: list[Any] = []


def _pool_init(payload: dict[str, Any]) -> None:
    from spark_jobs.models import build_predictor

    _POOL_PREDICTOR[:] = [payload, build_predictor(version_of(payload), num_threads=1)]


def _predict_all(payload: dict[str, Any], predictor: Predictor, datas: list[bytes], batch_size: int) -> np.ndarray:
    """Decode and score image bytes in model batches of ``batch_size``: the ceiling's inner loop."""
    parts = []
    for start in range(0, len(datas), batch_size):
        chunk = datas[start : start + batch_size]
        parts.append(predictor.predict(np.stack([decode(payload["manifest"], data) for data in chunk])))
    return np.concatenate(parts)


def _pool_score(files: list[str], out: str, part: str, batch_size: int) -> int:
    payload, predictor = _POOL_PREDICTOR
    probabilities = _predict_all(payload, predictor, [Path(f).read_bytes() for f in files], batch_size)
    write_predictions(Path(out), [Path(f).name for f in files], probabilities, part=part)
    return len(files)


def _pool_cpu_per_image(files: list[str], batch_size: int) -> float:
    """CPU seconds per image of decode + preprocessing + inference in this single-threaded process."""
    import time

    payload, predictor = _POOL_PREDICTOR
    datas = [Path(f).read_bytes() for f in files]
    started = time.process_time()
    _predict_all(payload, predictor, datas, batch_size)
    return (time.process_time() - started) / len(datas)


def physical_limit(
    pool: Executor, files: list[Path], *, cores: int, batch_size: int, repeats: int = 3
) -> dict[str, Any]:
    """The physical limit of the issue: ``cores`` / (decode + inference CPU seconds per image).

    The CPU time is measured in single-threaded processes with the files in memory, ``cores`` of
    them at once (so the cores share caches and memory bandwidth as they do in a real run), and
    averaged over them; the best of ``repeats`` such rounds counts (:func:`limit_of`).
    """
    names = [str(f) for f in files]
    rounds = []
    for _ in range(repeats):
        futures = [pool.submit(_pool_cpu_per_image, names, batch_size) for _ in range(cores)]
        rounds.append(1000 * sum(f.result() for f in futures) / cores)
    return limit_of(rounds, cores=cores, images=len(files))


def limit_of(rounds_ms: list[float], *, cores: int, images: int) -> dict[str, Any]:
    """The physical limit from rounds of :func:`physical_limit` (CPU ms per image each): the
    best round counts; every round is kept, in the order measured, to show their spread."""
    if not rounds_ms:
        raise ValueError("the physical limit needs at least one measured round")
    best = min(rounds_ms)
    return {
        "cpu_ms_per_image": best,
        "images_per_s": cores * 1000 / best,
        "images": images,
        "rounds_cpu_ms": [round(r, 4) for r in rounds_ms],
    }


def limit_again(earlier: dict[str, Any], again: dict[str, Any], *, cores: int) -> dict[str, Any]:
    """``earlier``'s limit with ``again``'s rounds (measured later, beside the sustained runs) added:
    the best of all of them counts, and ``rounds_beside_sustained`` says how many came later."""
    rounds = [*earlier["rounds_cpu_ms"], *again["rounds_cpu_ms"]]
    beside = int(earlier.get("rounds_beside_sustained", 0)) + len(again["rounds_cpu_ms"])
    return {**limit_of(rounds, cores=cores, images=earlier["images"]), "rounds_beside_sustained": beside}


def start_process_pool(payload: dict[str, Any], cores: int) -> ProcessPoolExecutor:
    """``cores`` single-threaded processes, each with the model built once (started before timing,
    as Spark's Python workers are reused across runs)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(cores, mp_context=context, initializer=_pool_init, initargs=(payload,))


def ceiling_process_per_core(
    pool: ProcessPoolExecutor, files: list[Path], out: Path, *, cores: int, batch_size: int
) -> None:
    """One single-threaded process per core, each scoring a contiguous share of the files."""
    share = (len(files) + cores - 1) // cores
    futures = [
        pool.submit(
            _pool_score, [str(f) for f in files[k * share : (k + 1) * share]], str(out), f"part-{k}", batch_size
        )
        for k in range(cores)
        if files[k * share : (k + 1) * share]
    ]
    done = sum(f.result() for f in futures)
    if done != len(files):
        raise RuntimeError(f"process-per-core ceiling scored {done} of {len(files)} files")


# ----------------------------------------------------------------------------------------------
# Spark methods


#: Environment variable whose value names the method a Python worker serves (see
#: :func:`own_python_workers`).
WORKER_ENV = "RESCORE_BENCH_METHOD"


def own_python_workers(spark: SparkSession, method: str) -> None:
    """Give the UDFs ``method`` creates from now on Python workers of their own.

    Spark keeps one pool of reusable Python workers per distinct environment of a UDF (its
    ``PythonWorkersKey``: interpreter, modules and environment variables), and a UDF takes its
    environment from ``sc.environment`` when it is created. A different value of
    :data:`WORKER_ENV` per method therefore gives each method the workers its own application
    would have: what one method imports, caches or freezes in a worker cannot speed up or slow
    down another (PySpark's daemon collects garbage after every task, so a method pays for
    whatever else lives in its worker). Set it before the method's runner builds its UDF.
    """
    spark.sparkContext.environment[WORKER_ENV] = method


#: What each file adds to a partition's size besides its bytes (``spark.sql.files.openCostInBytes``):
#: Spark's default, 4 MiB, what a user reading a folder of images gets. Against files of tens of
#: KiB it packs partitions by count, and scoring costs about the same per image whatever its size.
#: Packing by bytes (a cost of 1 byte) gave the last partitions the smallest files and the most
#: images (Spark packs largest first), so the longest tasks ran last and one core idled through the
#: last of them: ResNet-18, 896 images in 14 partitions, tasks of 0.64 s at the start to 2.35 s at
#: the end; 90.0-95.0 images/s against 92.7-99.6 packed by count (4 rounds each, interleaved).
OPEN_COST_BYTES = 4 * 2**20


def packed_partitions(sizes: list[int], max_bytes: int, open_cost: int = OPEN_COST_BYTES) -> int:
    """How many partitions Spark packs files of these sizes into (``FilePartition.getFilePartitions``:
    largest first, a partition closed when the next file would take it past ``max_bytes``)."""
    return _packed(sorted(sizes, reverse=True), max_bytes, open_cost)


def _packed(largest_first: list[int], max_bytes: int, open_cost: int) -> int:
    count, current = 0, 0
    for size in largest_first:
        if current and current + size > max_bytes:
            count, current = count + 1, 0
        current += size + open_cost
    return count + (1 if current else 0)


def partition_bytes_for(sizes: list[int], partitions: int, open_cost: int = OPEN_COST_BYTES) -> int:
    """The least ``maxPartitionBytes`` that packs the files into at most ``partitions`` partitions.

    The total divided by the partitions is not it: packing leaves each partition short of the
    limit, so it gave one partition more than asked (9 tasks for 8 on 2 cores: the last wave ran
    on one core while the other idled, a tenth of a small-CNN run).
    """
    if not sizes:
        raise ValueError("no files to pack into partitions: the folder holds no *.jpg images")
    largest_first = sorted(sizes, reverse=True)
    low = largest_first[0] + open_cost
    high = sum(sizes) + len(sizes) * open_cost
    # Largest-first packing needs fewer partitions as the limit grows (with rare exceptions of
    # one partition; the Spark test checks the counts that come out)
    while low < high:
        mid = (low + high) // 2
        if _packed(largest_first, mid, open_cost) <= partitions:
            high = mid
        else:
            low = mid + 1
    return low


def split_bytes(folder: Path, partitions: int) -> int:
    """:func:`partition_bytes_for` the folder's images: the harness's plan of a run, worked out
    before it is timed (a user sets such a limit once; on 18,752 files it takes a tenth of a
    second, a percent of a small-CNN run)."""
    return partition_bytes_for([p.stat().st_size for p in folder.glob("*.jpg")], partitions)


def read_files(spark: SparkSession, folder: Path, partitions: int, *, max_bytes: int | None = None) -> DataFrame:
    """The folder through ``binaryFile``, packed into ``partitions`` partitions of about equal
    image counts (:data:`OPEN_COST_BYTES`; fewer only when there are fewer files).

    :param max_bytes: :func:`split_bytes` of the folder and ``partitions``, when already known.
    """
    from pyspark.sql import functions as F

    limit = split_bytes(folder, partitions) if max_bytes is None else max_bytes
    spark.conf.set("spark.sql.files.openCostInBytes", str(OPEN_COST_BYTES))
    # otherwise Spark caps a partition at the total over the default parallelism (the cores)
    spark.conf.set("spark.sql.files.minPartitionNum", "1")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(limit))
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .load(str(folder))
        .select(F.element_at(F.split("path", "/"), -1).alias("image_id"), "path", "content")
    )


def run_rescore(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    """Rescore's job as spark_jobs.score writes it: every contract column into the version's
    partition folder, named by path (not ``partitionBy``, which would add a sort per task)."""
    from spark_jobs.score import ScoringOptions, conform_predictions, read_by_udf, score_images
    from spark_jobs.stages import StageReport, stage_accumulator

    manifest = ctx.payloads[model_key].value["manifest"]
    options = ScoringOptions(batch_size=ctx.batch_size)
    stages = stage_accumulator(ctx.spark)
    # the harness's files are local: Spark lists them and the UDF reads them, as Rescore's ingest does
    scored = score_images(read_by_udf(images), ctx.payloads[model_key], run_id="bench", options=options, stages=stages)
    conform_predictions(scored.drop("model_name", "model_version")).write.mode("overwrite").parquet(
        str(out / f"model_name={manifest['name']}" / f"model_version={manifest['version']}")
    )
    ctx.stages[model_key] = StageReport.of(stages.value).as_dict()


def _decode_column(bc: Broadcast[dict[str, Any]]) -> Callable[..., Any]:
    """Pandas UDF: bytes -> flattened CHW float array (the array column the docs start from)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<float>")  # type: ignore[call-overload]
    def decode_images(contents: pd.Series) -> pd.Series:
        manifest = bc.value["manifest"]
        return pd.Series([decode(manifest, bytes(c)).reshape(-1) for c in contents])

    return decode_images


def run_predict_batch_udf(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    bc = ctx.payloads[model_key]
    size = bc.value["manifest"]["input_size"]

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        from spark_jobs.models import build_predictor

        predictor = build_predictor(version_of(bc.value), num_threads=1)

        def predict(inputs: np.ndarray) -> np.ndarray:
            return predictor.predict(inputs.astype(np.float32, copy=False))

        return predict

    classify = predict_batch_udf(
        make_predict_fn,
        return_type=ArrayType(FloatType()),
        batch_size=ctx.batch_size,
        input_tensor_shapes=[[3, size, size]],
    )
    decoded = images.select("image_id", _decode_column(bc)("content").alias("image"))
    decoded.select("image_id", classify("image").alias("probabilities")).write.mode("overwrite").parquet(str(out))


def run_predict_batch_udf_bytes(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    bc = ctx.payloads[model_key]

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        from spark_jobs.models import build_predictor

        payload = bc.value
        predictor = build_predictor(version_of(payload), num_threads=1)

        def predict(contents: np.ndarray) -> np.ndarray:
            return predictor.predict(np.stack([decode(payload["manifest"], bytes(c)) for c in contents]))

        return predict

    classify = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=ctx.batch_size)
    images.select("image_id", classify("content").alias("probabilities")).write.mode("overwrite").parquet(str(out))


def run_mlflow_spark_udf(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    import mlflow
    from pyspark.sql.types import ArrayType, FloatType

    bc = ctx.payloads[model_key]
    classify = mlflow.pyfunc.spark_udf(
        ctx.spark, ctx.mlflow_uris[model_key], result_type=ArrayType(FloatType()), env_manager="local"
    )
    decoded = images.select("image_id", _decode_column(bc)("content").alias("image"))
    decoded.select("image_id", classify("image").alias("probabilities")).write.mode("overwrite").parquet(str(out))


def run_blog_pattern(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    from pyspark.sql.functions import pandas_udf

    bc = ctx.payloads[model_key]

    @pandas_udf("array<float>")  # type: ignore[call-overload]
    def predict_series(contents: pd.Series) -> pd.Series:
        from spark_jobs.models import build_predictor

        payload = bc.value
        predictor = build_predictor(version_of(payload), num_threads=1)  # rebuilt for every batch
        batch = np.stack([decode(payload["manifest"], bytes(c)) for c in contents])
        predictions = []
        for row in predictor.predict(batch):
            predictions.append(row.tolist())
        return pd.Series(predictions)

    images.select("image_id", predict_series("content").alias("probabilities")).write.mode("overwrite").parquet(
        str(out)
    )


def run_row_udf(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    from pyspark.sql.functions import udf

    bc = ctx.payloads[model_key]

    @udf("array<float>", useArrow=False)
    def predict_one(content: bytes) -> list[float]:
        payload = bc.value
        predictor = cached_predictor(payload)
        return predictor.predict(decode(payload["manifest"], bytes(content))[None])[0].tolist()

    images.select("image_id", predict_one("content").alias("probabilities")).write.mode("overwrite").parquet(str(out))


def run_spark_floor(ctx: BenchContext, model_key: str, images: DataFrame, out: Path) -> None:
    # Rescore's job without the UDF: its files are listed, not read (read_by_udf), so neither is this
    images.select("image_id", "path").write.mode("overwrite").parquet(str(out))


SPARK_RUNNERS: dict[str, Callable[[BenchContext, str, DataFrame, Path], None]] = {
    RESCORE: run_rescore,
    PREDICT_BATCH_UDF: run_predict_batch_udf,
    PREDICT_BATCH_UDF_BYTES: run_predict_batch_udf_bytes,
    MLFLOW_SPARK_UDF: run_mlflow_spark_udf,
    BLOG_PATTERN: run_blog_pattern,
    ROW_UDF: run_row_udf,
    SPARK_FLOOR: run_spark_floor,
}


def iter_ceiling_configs(cores: int) -> Iterator[str]:
    """Names of the ceiling's configurations: ``dataloader_w0..w<cores>`` and ``process_per_core``."""
    for workers in range(cores + 1):
        yield f"dataloader_w{workers}"
    yield "process_per_core"
