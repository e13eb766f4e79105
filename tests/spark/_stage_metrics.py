"""What Spark's own stages recorded while an action ran (its status store), for tests that assert
on data movement (shuffle bytes, rows read) rather than on a plan's text or on timing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T = TypeVar("T")


@dataclass(frozen=True)
class Stages:
    shuffle_bytes: int  # written by the action's stages
    table_rows: int  # read from files by them, all columns alike


def measured(spark: SparkSession, group: str, action: Callable[[], T]) -> tuple[T, Stages]:
    """Run ``action`` in its own job group and sum what its stages recorded."""
    sc = spark.sparkContext
    sc.setJobGroup(group, "measured by a test")
    try:
        result = action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    jsc = sc._jsc.sc()  # type: ignore[union-attr]
    jsc.listenerBus().waitUntilEmpty()
    tracker = sc.statusTracker()
    stage_ids = {s for job in tracker.getJobIdsForGroup(group) for s in tracker.getJobInfo(job).stageIds}  # type: ignore[union-attr]
    data = [jsc.statusStore().lastStageAttempt(s) for s in stage_ids]
    return result, Stages(sum(d.shuffleWriteBytes() for d in data), sum(d.inputRecords() for d in data))
