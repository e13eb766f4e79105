"""The benchmark gives each Spark method Python workers of its own, as separate applications
would have them (include/bench/methods.py: own_python_workers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from include.bench import methods as M

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


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
