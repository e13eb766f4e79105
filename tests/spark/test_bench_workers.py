"""The benchmark gives each Spark method Python workers of its own, as separate applications
would have them (include/bench/methods.py: own_python_workers)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

from include.bench import methods as M

if TYPE_CHECKING:
    from pathlib import Path

    from pyspark.sql import DataFrame, SparkSession


def _worker_of_each_row(spark: SparkSession) -> set[tuple[int, str]]:
    """(pid, value of the method variable) of the Python workers that ran a fresh UDF."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")  # type: ignore[call-overload]
    def whoami(ids: pd.Series) -> pd.Series:
        import os

        return pd.Series([f"{os.getpid()} {os.environ.get(M.WORKER_ENV, '-')}"] * len(ids))

    rows = spark.range(0, 64, numPartitions=4).select(whoami("id").alias("w")).collect()
    return {(int(row.w.split()[0]), row.w.split()[1]) for row in rows}


def test_each_method_gets_python_workers_of_its_own(spark: SparkSession) -> None:
    saved = dict(spark.sparkContext.environment)
    try:
        M.own_python_workers(spark, "method-a")
        first = _worker_of_each_row(spark)
        M.own_python_workers(spark, "method-b")
        second = _worker_of_each_row(spark)
        M.own_python_workers(spark, "method-a")
        again = _worker_of_each_row(spark)
    finally:
        spark.sparkContext.environment.clear()
        spark.sparkContext.environment.update(saved)
    assert {name for _, name in first} == {"method-a"}
    assert {name for _, name in second} == {"method-b"}
    assert not {pid for pid, _ in first} & {pid for pid, _ in second}
    # a method's workers are reused by its next run, as in one application
    assert {pid for pid, _ in again} <= {pid for pid, _ in first}


def _keeps_freed_memory(spark: SparkSession) -> set[bool]:
    """What spark_jobs.allocator did in the Python workers of a fresh UDF (it takes the
    environment when it is created)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("boolean")  # type: ignore[call-overload]
    def keeps(ids: pd.Series) -> pd.Series:
        from spark_jobs.allocator import keep_freed_memory

        return pd.Series([keep_freed_memory()] * len(ids))

    return {row.k for row in spark.range(0, 8, numPartitions=2).select(keeps("id").alias("k")).collect()}


def test_the_memory_runs_switch_rescores_allocator_setting_off_in_the_workers(spark: SparkSession) -> None:
    """The bench's ``returned`` memory runs rely on this: a UDF created after the switch is set in
    ``sc.environment`` runs in workers where spark_jobs.allocator leaves malloc alone."""
    from spark_jobs.allocator import ENV_SWITCH

    saved = dict(spark.sparkContext.environment)
    try:
        spark.sparkContext.environment[ENV_SWITCH] = "0"
        switched_off = _keeps_freed_memory(spark)
        spark.sparkContext.environment[ENV_SWITCH] = "1"
        default = _keeps_freed_memory(spark)
    finally:
        spark.sparkContext.environment.clear()
        spark.sparkContext.environment.update(saved)
    assert switched_off == {False}
    assert default == {True}  # glibc (Linux): the settings apply


def test_the_stopwatch_splits_the_jvms_cpu_by_thread(spark: SparkSession) -> None:
    """The JVM's CPU of a Spark job, thread by thread: its task threads did the work, and the
    groups add up to no more than the JVM process's own CPU over the same block."""
    from pyspark.sql import functions as F

    from include.bench.measure import JVM_GROUPS, Stopwatch, jvm_threads_cpu

    before = jvm_threads_cpu()
    with Stopwatch() as watch:
        spark.range(0, 3_000_000, numPartitions=2).select(F.sha2(F.col("id").cast("string"), 256).alias("h")).agg(
            F.max("h")
        ).collect()
    after = jvm_threads_cpu()
    assert set(watch.jvm_by_thread) == set(JVM_GROUPS)
    assert watch.jvm_by_thread["tasks"] > 0.1
    # The kernel keeps each thread's CPU in whole clock ticks and the process's from nanoseconds,
    # so each thread that ran may add up to one tick to the sum (CI once saw 0.06 s over 6.7 s).
    ran = sum(1 for key, (_, seconds) in after.items() if seconds != before.get(key, ("", 0.0))[1])
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert sum(watch.jvm_by_thread.values()) <= watch.cpu_by_kind["jvm"] + ran * tick + 0.01


def test_the_files_are_read_in_exactly_the_partitions_asked(spark: SparkSession, tmp_path: Path) -> None:
    """Every Spark method reads its images through M.read_files: a partition more than asked (as
    the bytes divided by the partitions gave) leaves one core idle for the last task."""
    import random

    rng = random.Random(7)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i in range(37):
        (mixed / f"{i:03d}.jpg").write_bytes(b"x" * rng.randint(1_000, 30_000))
    # scoring costs about the same per image whatever its size: 10 large files and 30 small
    # ones make 4 partitions of 10 files (packed by bytes: 4, 4, 21 and 11)
    sized = tmp_path / "sized"
    sized.mkdir()
    for i in range(40):
        (sized / f"{i:03d}.jpg").write_bytes(b"x" * (40_000 if i % 4 == 0 else 4_000))
    keys = ("spark.sql.files.openCostInBytes", "spark.sql.files.maxPartitionBytes", "spark.sql.files.minPartitionNum")
    saved = {key: spark.conf.get(key, None) for key in keys}
    try:
        got = {n: M.read_files(spark, mixed, partitions=n).rdd.getNumPartitions() for n in (1, 2, 3, 4, 8)}
        rows = M.read_files(spark, mixed, partitions=4).count()
        counts = _files_per_partition(spark, M.read_files(spark, sized, partitions=4))
        planned = M.read_files(spark, sized, partitions=4, max_bytes=M.split_bytes(sized, 4)).rdd.getNumPartitions()
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
    assert got == {1: 1, 2: 2, 3: 3, 4: 4, 8: 8}
    assert rows == 37
    assert counts == [10, 10, 10, 10]
    assert planned == 4


def _files_per_partition(spark: SparkSession, frame: DataFrame) -> list[int]:
    from pyspark.sql import functions as F

    rows = frame.groupBy(F.spark_partition_id().alias("p")).count().orderBy("p").collect()
    return [row["count"] for row in rows]
