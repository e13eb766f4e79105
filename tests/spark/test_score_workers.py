"""Model reuse and bounded memory: one build per Python worker, a bounded number of batches held.

A fake model (injected through ScoringOptions.builder) logs every build and every batch it
scores, with the worker's pid and what the UDF held at that moment (spark_jobs.score.HELD), to
files named in its manifest's ``extra``; the tests read those logs back on the driver.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from spark_jobs.model_store import Manifest, ModelVersion
from spark_jobs.models import BatchOutput
from spark_jobs.score import HeldBatches, ScoringOptions, score_images, score_partition

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark

LABELS = ["a", "b", "c"]


class CountingPredictor:
    """Scores by mean brightness and logs each batch: pid, size, batches the UDF holds now."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def forward(self, batch: np.ndarray) -> BatchOutput:
        from spark_jobs import score

        with open(self.manifest.extra["batch_log"], "a") as log:
            log.write(f"{os.getpid()} {len(batch)} {score.HELD.held}\n")
        brightness = batch.mean(axis=(1, 2, 3))
        probs = np.stack([np.full_like(brightness, 0.2), np.full_like(brightness, 0.3), np.full_like(brightness, 0.5)])
        return BatchOutput(probs.T.astype(np.float32), None)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch).probabilities


def counting_builder(
    version: ModelVersion, *, device: str = "cpu", num_threads: int | None = None, mixed_precision: bool = False
) -> CountingPredictor:
    with open(version.manifest.extra["build_log"], "a") as log:
        log.write(f"{os.getpid()}\n")
    return CountingPredictor(version.manifest)


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _images(spark: SparkSession, count: int, partitions: int) -> DataFrame:
    rows = [(f"img-{i:05d}", f"mem://{i}", bytearray(_png(i))) for i in range(count)]
    return spark.createDataFrame(rows, "image_id string, path string, content binary").repartition(partitions)


def _manifest(name: str, tmp_path: Path) -> Manifest:
    return Manifest(
        name=name,
        framework="pytorch",
        architecture="fake",
        input_size=8,
        labels=LABELS,
        version="1",
        extra={"build_log": str(tmp_path / "builds.log"), "batch_log": str(tmp_path / "batches.log")},
    )


def _run(spark: SparkSession, images: DataFrame, manifest: Manifest, options: ScoringOptions) -> list[Any]:
    payload = spark.sparkContext.broadcast({"manifest": manifest.to_dict(), "weights": b""})
    try:
        return score_images(images, payload, run_id="t", options=options).select("image_id", "label").collect()
    finally:
        payload.unpersist()


def _log(path: Path) -> list[list[int]]:
    return [[int(v) for v in line.split()] for line in path.read_text().splitlines()] if path.exists() else []


def test_the_model_is_built_once_per_worker_process_not_per_task_or_batch(spark: SparkSession, tmp_path: Path) -> None:
    # Given 8 partitions of 40 images and a batch size of 4 (80 model batches in all)
    manifest = _manifest("fake-builds", tmp_path)
    images = _images(spark, 320, partitions=8)

    # When they are scored on local[2]
    rows = _run(spark, images, manifest, ScoringOptions(batch_size=4, builder=counting_builder))

    # Then every image got a label, 80 batches ran, and each worker process built the model exactly once
    assert len(rows) == 320
    assert {r["label"] for r in rows} == {"c"}
    builds = Counter(pid for (pid,) in _log(tmp_path / "builds.log"))
    batches = _log(tmp_path / "batches.log")
    assert sum(size for _, size, _ in batches) == 320
    assert len(batches) == 80
    assert set(builds.values()) == {1}
    assert {pid for pid, _, _ in batches} <= set(builds)
    assert sum(builds.values()) < 8  # fewer builds than tasks: workers are reused across tasks


def test_a_second_job_with_the_same_version_reuses_the_built_model(spark: SparkSession, tmp_path: Path) -> None:
    manifest = _manifest("fake-reuse", tmp_path)
    _run(spark, _images(spark, 40, partitions=2), manifest, ScoringOptions(batch_size=8, builder=counting_builder))
    first = Counter(pid for (pid,) in _log(tmp_path / "builds.log"))
    _run(spark, _images(spark, 40, partitions=2), manifest, ScoringOptions(batch_size=8, builder=counting_builder))
    again = Counter(pid for (pid,) in _log(tmp_path / "builds.log"))
    batch_pids = {pid for pid, _, _ in _log(tmp_path / "batches.log")}
    # a worker that already held the model never builds it again
    assert set(again.values()) == {1}
    assert batch_pids <= set(again)
    assert sum(first.values()) >= 1


def test_a_new_run_stamp_does_not_make_spark_generate_and_compile_the_query_again(
    spark: SparkSession, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    # Given images scored once, with a stamp, in this application
    manifest = _manifest("fake-stamp", tmp_path)
    images = _images(spark, 12, partitions=2)
    payload = spark.sparkContext.broadcast({"manifest": manifest.to_dict(), "weights": b""})
    codegen = spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics  # type: ignore[union-attr]
    options = ScoringOptions(batch_size=4, builder=counting_builder)

    def scored(stamp: datetime) -> tuple[set[Any], int]:
        before = codegen.METRIC_COMPILATION_TIME().getCount()
        frame = score_images(images, payload, run_id=f"run-{stamp:%H}", options=options, scored_at=stamp)
        rows = frame.select("scored_at", "run_id").collect()
        compiled = codegen.METRIC_COMPILATION_TIME().getCount() - before
        return {(r["scored_at"].astimezone(UTC), r["run_id"]) for r in rows}, compiled

    try:
        first, _ = scored(datetime(2026, 11, 1, 9, tzinfo=UTC))
        # When the same job runs again with another stamp and run id
        second, compiled = scored(datetime(2026, 11, 2, 10, tzinfo=UTC))
    finally:
        payload.unpersist()

    # Then every row carries its run's stamp, and Spark reused the code it generated the first
    # time (a timestamp literal in the projection is written into the generated code: 2 new
    # classes to compile on every run)
    assert first == {(datetime(2026, 11, 1, 9, tzinfo=UTC), "run-09")}
    assert second == {(datetime(2026, 11, 2, 10, tzinfo=UTC), "run-10")}
    assert compiled == 0


@pytest.mark.parametrize(
    ("decode", "arrow_batch", "pool"),
    [("inline", 600, ""), ("inline", 50, ""), ("prefetch", 600, ""), ("prefetch", 600, "process")],
)
def test_a_large_partition_is_scored_holding_a_bounded_number_of_batches(
    spark: SparkSession, tmp_path: Path, decode: str, arrow_batch: int, pool: str
) -> None:
    # Given one partition of 600 images, a batch size of 3 and Arrow batches of up to 600 rows
    # (and, for the pool, two decoding processes started inside Spark's Python worker)
    manifest = _manifest(f"fake-bounded-{decode}-{arrow_batch}-{pool}", tmp_path)
    images = _images(spark, 600, partitions=1)
    pooled = {"decode_workers": 2, "decode_pool": pool} if pool else {}
    options = ScoringOptions(batch_size=3, decode=decode, prefetch=2, builder=counting_builder, **pooled)  # type: ignore[arg-type]
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(arrow_batch))
    try:
        rows = _run(spark, images, manifest, options)
    finally:
        spark.conf.set(key, previous)

    # Then 200 batches of 3 ran, and while any of them ran the UDF held at most the bound
    assert len(rows) == 600
    batches = _log(tmp_path / "batches.log")
    assert [size for _, size, _ in batches] == [3] * 200
    held = [h for _, _, h in batches]
    assert max(held) <= options.max_held_batches("cpu")
    assert min(held) >= 1


def _arrow_batches(count: int, rows: int, consumed: list[int]):  # type: ignore[no-untyped-def]
    for i in range(count):
        consumed.append(i)
        contents = pd.Series([_png(i * rows + j) for j in range(rows)])
        yield contents, pd.Series([f"mem://{i}/{j}" for j in range(rows)])


@pytest.fixture
def no_decoding_processes() -> Iterator[None]:
    """Stops the decoding processes a test started (the pools live for the process otherwise)."""
    from spark_jobs import score

    yield
    for pool in score._PROCESS_POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    score._PROCESS_POOLS.clear()


@pytest.mark.parametrize(
    ("decode", "workers", "pool"),
    [("inline", 0, "auto"), ("prefetch", 1, "auto"), ("prefetch", 3, "thread"), ("prefetch", 2, "process")],
)
def test_score_partition_yields_before_reading_ahead_more_than_the_bound(
    tmp_path: Path, decode: str, workers: int, pool: str, no_decoding_processes: None
) -> None:
    # Given 50 Arrow batches of 4 rows, a batch size of 2, frames of 6 rows back to Spark, and a
    # consumer that stops after each frame
    consumed: list[int] = []
    held = HeldBatches()
    options = ScoringOptions(
        batch_size=2, decode=decode, prefetch=3, decode_workers=workers, decode_pool=pool, output_rows=6
    )
    predictor = CountingPredictor(_manifest("direct", tmp_path))
    results = score_partition(_arrow_batches(50, 4, consumed), predictor, options, held=held)

    # When the consumer takes results one at a time
    seen = 0
    sizes = []
    for frame in results:
        seen += len(frame)
        sizes.append(len(frame))
        # Then the UDF never holds more than the bound of batches with images, nor reads further
        # ahead of what it has yielded than those batches, one frame and one Arrow batch
        assert 0 <= held.held <= options.max_held_batches("cpu")
        assert len(consumed) * 4 <= seen + options.max_held_batches("cpu") * 2 + options.output_rows + 4
    assert seen == 200
    assert sizes == [6] * 33 + [2]  # frames of output_rows rows; batches are not cut, the rest at the end
    assert held.batches == 100
    assert held.max_held <= options.max_held_batches("cpu")
    assert held.held == 0


def _frame(batches: Iterator[pa.RecordBatch]) -> pd.DataFrame:
    """What score_partition yielded, as rows of Python values (lists and dicts, as Spark's rows)."""
    return pd.DataFrame(pa.Table.from_batches(list(batches)).to_pylist())


def test_by_default_each_model_batch_goes_back_to_spark_before_the_next_is_scored(tmp_path: Path) -> None:
    # Given 5 Arrow batches of 4 rows, a batch size of 3 and the default output options
    consumed: list[int] = []
    options = ScoringOptions(batch_size=3, decode="inline")
    predictor = CountingPredictor(_manifest("per-batch", tmp_path))
    log = Path(predictor.manifest.extra["batch_log"])

    # When the consumer takes the results one at a time
    sizes = []
    for frame in score_partition(_arrow_batches(5, 4, consumed), predictor, options, held=HeldBatches()):
        sizes.append(frame.num_rows)
        # Then every frame is the model batch just scored: no scored rows wait for later batches
        # (kept, their arrays fragment the heap the next batch's activations are taken from)
        assert len(log.read_text().splitlines()) == len(sizes)
    assert sizes == [3, 3, 3, 3, 3, 3, 2]


def test_a_decode_thread_failure_reaches_the_task(tmp_path: Path) -> None:
    def failing():  # type: ignore[no-untyped-def]
        yield pd.Series([_png(1)]), pd.Series(["ok"])
        raise OSError("the executor lost its input stream")

    predictor = CountingPredictor(_manifest("direct-fail", tmp_path))
    results = score_partition(failing(), predictor, ScoringOptions(batch_size=1, decode="prefetch"))
    with pytest.raises(OSError, match="lost its input stream"):
        list(results)


def test_the_decode_pool_decodes_batches_at_once_and_yields_them_in_input_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import score

    real_decode = score.decode_batch
    both_started = threading.Barrier(2, timeout=20)
    lock = threading.Lock()
    calls: list[str] = []

    def slow_decode(manifest: Manifest, contents: pd.Series, paths: pd.Series):  # type: ignore[no-untyped-def]
        with lock:
            n = len(calls)
            calls.append(threading.current_thread().name)
        if n < 2:
            both_started.wait()  # raises BrokenBarrierError unless two batches decode at the same time
        if n % 3 == 0:
            time.sleep(0.05)  # so that later batches finish first
        return real_decode(manifest, contents, paths)

    monkeypatch.setattr(score, "decode_batch", slow_decode)
    # Given 10 Arrow batches of 3 rows that do not decode (each row's error names its path)
    names = [[f"mem://{i}/{j}" for j in range(3)] for i in range(10)]
    batches = ((pd.Series([b"not an image"] * 3), pd.Series(row)) for row in names)
    options = ScoringOptions(batch_size=2, decode="prefetch", prefetch=2, decode_workers=3, decode_pool="thread")
    predictor = CountingPredictor(_manifest("pool", tmp_path))

    # When the partition is scored with three decoding threads
    frames = list(score_partition(batches, predictor, options, device="cuda:0", cpus=8))

    # Then several threads decoded, and the rows come out in the order they went in
    assert len({name for name in calls if name.startswith("rescore-decode")}) >= 2
    errors = [e for frame in frames for e in frame.column("error").to_pylist()]
    assert [re.search(r"mem://\d+/\d+", e).group(0) for e in errors] == [n for row in names for n in row]  # type: ignore[union-attr]
    assert len(calls) == 30  # 15 batches of 2 rows, each cut into slices of one row for three threads


def test_one_batch_is_decoded_by_every_thread_and_joined_in_row_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import score

    real_decode = score.decode_batch
    all_started = threading.Barrier(3, timeout=20)
    threads: set[str] = set()

    def gated_decode(manifest: Manifest, contents: pd.Series, paths: pd.Series):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        all_started.wait()  # raises BrokenBarrierError unless three slices decode at the same time
        return real_decode(manifest, contents, paths)

    # Given one batch of 8 images, the fourth and seventh of which do not decode
    contents = [_png(i) for i in range(8)]
    contents[3] = contents[6] = b"not an image"
    paths = [f"mem://0/{i}" for i in range(8)]
    manifest = _manifest("slices", tmp_path)
    serial = score.decode_batch(manifest, pd.Series(contents), pd.Series(paths))
    monkeypatch.setattr(score, "decode_batch", gated_decode)

    # When a pool of three threads decodes it
    batches = iter([(pd.Series(contents), pd.Series(paths))])
    with ThreadPoolExecutor(3) as pool:
        (joined,) = list(score._decoded_in_pool(batches, manifest, 3, 1, pool))

    # Then three threads worked on it and the joined batch equals the one-thread decoding
    assert len(threads) == 3
    assert joined.size == 8
    assert joined.ok_rows == serial.ok_rows == [0, 1, 2, 4, 5, 7]
    assert [i for i, e in enumerate(joined.errors) if e] == [i for i, e in enumerate(serial.errors) if e] == [3, 6]
    assert [e[: len("cannot decode mem://0/3")] for e in joined.errors if e] == [
        "cannot decode mem://0/3",
        "cannot decode mem://0/6",
    ]
    assert joined.pixels is not None and serial.pixels is not None
    np.testing.assert_array_equal(joined.pixels, serial.pixels)


def test_on_a_gpu_the_pool_decodes_in_other_processes_reused_by_every_task(
    tmp_path: Path, no_decoding_processes: None
) -> None:
    from spark_jobs import score

    # Given 3 Arrow batches of 5 images, the seventh of which does not decode
    contents = [_png(i) for i in range(15)]
    contents[6] = b"not an image"
    paths = [f"mem://{i}" for i in range(15)]

    def batches() -> Iterator[tuple[pd.Series, pd.Series]]:
        return ((pd.Series(contents[i : i + 5]), pd.Series(paths[i : i + 5])) for i in range(0, 15, 5))

    predictor = CountingPredictor(_manifest("processes", tmp_path))
    options = ScoringOptions(batch_size=4, decode="auto", output_rows=4)
    assert options.pool_kind("cuda:0", 4) == "process"
    assert options.pool_kind("cuda:0", 2) == "thread"
    assert options.pool_kind("cpu", 8) == "thread"
    options = ScoringOptions(batch_size=4, decode="auto", output_rows=4, decode_workers=4)

    # When two tasks on a GPU with 4 decoding workers score them, and the same rows are scored inline
    first = _frame(score_partition(batches(), predictor, options, device="cuda:0", cpus=2))
    pool = score._PROCESS_POOLS[4]
    workers = {pool.submit(os.getpid).result() for _ in range(8)}
    second = _frame(score_partition(batches(), predictor, options, device="cuda:0", cpus=2))
    inline = _frame(score_partition(batches(), predictor, ScoringOptions(batch_size=4), device="cpu"))

    # Then the decoding ran in processes other than this one, the second task reused them, and
    # the rows are those of inline decoding, in input order, the bad image's error included
    assert workers and os.getpid() not in workers
    assert score._PROCESS_POOLS[4] is pool
    for frame in (first, second):
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), inline.reset_index(drop=True))
    assert [i for i, e in enumerate(inline["error"]) if e] == [6]
    reason = "not an image format Pillow can read (cannot identify image file)"
    assert inline["error"][6] == f"cannot decode mem://6: {reason}"


def test_a_decoding_process_that_died_is_replaced_at_the_next_task(tmp_path: Path, no_decoding_processes: None) -> None:
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from spark_jobs import score

    pool = score.decoding_processes(2)
    victim = pool.submit(os.getpid).result()
    os.kill(victim, signal.SIGKILL)
    # the pool notices its dead process: what is submitted now fails, as the task would
    with pytest.raises(BrokenProcessPool):
        for _ in range(50):
            pool.submit(os.getpid).result(timeout=30)
            time.sleep(0.1)
    # and the next task gets a fresh pool that decodes
    fresh = score.decoding_processes(2)
    assert fresh is not pool
    decoded = fresh.submit(score.decode_batch, _manifest("again", tmp_path), [_png(1)], ["mem://1"]).result()
    assert decoded.ok_rows == [0]


def test_decode_workers_default_to_the_task_cores_and_bound_what_is_held() -> None:
    options = ScoringOptions(decode="prefetch", prefetch=2)
    assert options.workers(4) == 4
    assert options.workers(None) == 1
    assert options.max_held_batches("cuda:0", cpus=4) == 3  # a pool decodes each batch in slices
    assert options.max_held_batches("cuda:0", cpus=1) == 4
    assert ScoringOptions(decode="prefetch", decode_workers=2).workers(8) == 2
    assert ScoringOptions().max_held_batches("cpu", cpus=4) == 1
    with pytest.raises(Exception, match="decode workers must be 0"):
        ScoringOptions(decode_workers=-1)
    with pytest.raises(Exception, match="decode pool 'fork' is unknown"):
        ScoringOptions(decode_pool="fork")


def test_a_device_option_overrides_what_spark_assigned_and_bad_names_are_refused() -> None:
    assert ScoringOptions().device_for("cuda:1") == "cuda:1"
    assert ScoringOptions().device_for("cpu") == "cpu"
    assert ScoringOptions(device="cuda").device_for("cpu") == "cuda:0"
    assert ScoringOptions(device="cuda:2").device_for("cpu") == "cuda:2"
    assert ScoringOptions(device="cpu").device_for("cuda:0") == "cpu"
    with pytest.raises(Exception, match="device 'gpu0' is unknown: use auto, cpu, cuda or cuda:<n>"):
        ScoringOptions(device="gpu0")


def test_building_a_predictor_freezes_what_is_alive_out_of_the_cyclic_collector(tmp_path: Path) -> None:
    import gc

    from spark_jobs import score

    manifest = _manifest("frozen", tmp_path)
    payload = {"manifest": manifest.to_dict(), "weights": b""}
    options = ScoringOptions(builder=counting_builder)
    gc.unfreeze()
    try:
        predictor = score.get_predictor(payload, options, "cpu", 1)
        # the model and everything built before it are frozen; a second call reuses it
        assert gc.get_freeze_count() > 0
        assert score.get_predictor(payload, options, "cpu", 1) is predictor
    finally:
        gc.unfreeze()
        score._PREDICTORS.clear()


class _DtypeRecorder:
    """A real predictor that notes the dtype of every batch it is given."""

    def __init__(self, predictor: Any) -> None:
        self.inner = predictor
        self.manifest = predictor.manifest
        self.takes_uint8 = predictor.takes_uint8
        self.dtypes: set[str] = set()

    def forward(self, batch: np.ndarray) -> BatchOutput:
        self.dtypes.add(str(batch.dtype))
        return self.inner.forward(batch)  # type: ignore[no-any-return]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch).probabilities


@pytest.mark.parametrize(("workers", "pool"), [(1, "auto"), (2, "thread"), (4, "process")])
def test_on_a_gpu_a_torch_model_gets_8_bit_pixels_and_scores_as_on_the_cpu(
    workers: int, pool: str, no_decoding_processes: None
) -> None:
    import torch
    from safetensors.torch import save

    from spark_jobs.models import build_predictor
    from spark_jobs.models.torch_nets import SmallCNN

    torch.manual_seed(0)
    weights = save({k: v.contiguous() for k, v in SmallCNN(3).state_dict().items()})
    manifest = Manifest(
        name="raw", framework="pytorch", architecture="small_cnn", input_size=16, labels=LABELS, version="1",
        mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
    )  # fmt: skip
    version = ModelVersion(manifest, weights)
    # Given 3 Arrow batches of 5 images of varied colours, the ninth of which does not decode
    contents = [_png(37 * i) for i in range(15)]
    contents[8] = b"not an image"
    paths = [f"mem://{i}" for i in range(15)]

    def batches() -> Iterator[tuple[pd.Series, pd.Series]]:
        return ((pd.Series(contents[i : i + 5]), pd.Series(paths[i : i + 5])) for i in range(0, 15, 5))

    # When a task "on a GPU" scores them (the predictor itself runs on this machine's CPU), and a
    # CPU task scores them inline
    on_gpu = _DtypeRecorder(build_predictor(version, num_threads=1))
    options = ScoringOptions(batch_size=4, decode="prefetch", decode_workers=workers, decode_pool=pool)
    gpu_rows = _frame(score_partition(batches(), on_gpu, options, device="cuda:0", cpus=workers))
    on_cpu = _DtypeRecorder(build_predictor(version, num_threads=1))
    cpu_rows = _frame(score_partition(batches(), on_cpu, ScoringOptions(batch_size=4), device="cpu"))

    # Then the GPU task sent 8-bit pixels and the CPU task normalised ones, with the same results
    assert on_gpu.dtypes == {"uint8"}
    assert on_cpu.dtypes == {"float32"}
    assert list(gpu_rows["label"]) == list(cpu_rows["label"])
    assert list(gpu_rows["error"]) == list(cpu_rows["error"])
    assert [i for i, e in enumerate(cpu_rows["error"]) if e] == [8]
    ok = [i for i in range(15) if i != 8]
    np.testing.assert_allclose(
        np.stack(gpu_rows["probabilities"].iloc[ok]), np.stack(cpu_rows["probabilities"].iloc[ok]), atol=1e-6
    )


def test_every_task_adds_its_stage_clock_to_the_jobs_accumulator(spark: SparkSession, tmp_path: Path) -> None:
    from spark_jobs.stages import TASK_THREAD_STAGES, StageReport, stage_accumulator

    # Given 60 images in 3 partitions and an accumulator for the scoring UDF's clocks
    manifest = _manifest("fake-stages", tmp_path)
    images = _images(spark, 60, partitions=3)
    stages = stage_accumulator(spark)
    payload = spark.sparkContext.broadcast({"manifest": manifest.to_dict(), "weights": b""})
    try:
        # When they are scored
        options = ScoringOptions(batch_size=8, builder=counting_builder)
        rows = score_images(images, payload, run_id="t", options=options, stages=stages).collect()
    finally:
        payload.unpersist()

    # Then the driver holds the three tasks' clocks added up: every image, time in the model,
    # and no more time in the task thread's stages than the tasks lasted
    report = StageReport.of(stages.value)
    assert len(rows) == 60
    assert (report.tasks, report.images) == (3, 60)
    assert report.seconds["model"] > 0
    assert report.seconds["decode"] > 0
    assert sum(report.seconds[s] for s in TASK_THREAD_STAGES) <= report.task_seconds
    assert report.cpu_seconds > 0
