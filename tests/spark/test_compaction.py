"""Compaction of a predictions partition: past the threshold the files become few, the rows stay
exactly the same, and a compaction killed at any step is finished by the next one without losing
or doubling a row. Files appended while a compaction runs are kept."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spark_jobs.compaction import (
    JOURNAL_PREFIX,
    compact_partition,
    data_files,
    finish_interrupted,
    stage_compaction,
)
from spark_jobs.score import conform_predictions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

PARTITION = "model_name=m/model_version=1"


def _write_files(spark: SparkSession, folder: Path, files: int, rows_per_file: int, start: int = 0) -> None:
    """``files`` Parquet files of ``rows_per_file`` prediction rows appended to ``folder``."""
    rows = [
        (f"img-{n:05d}", "cat", 0.5 + n % 7 / 20, [0.1 * (n % 5), 0.3], f"run-{i // rows_per_file}")
        for i, n in enumerate(range(start, start + files * rows_per_file))
    ]
    schema = "image_id string, label string, score float, probabilities array<float>, run_id string"
    frame = spark.createDataFrame(rows, schema).repartition(files)  # round robin: every file gets its share
    conform_predictions(frame).write.mode("append").parquet(str(folder))


def _rows(spark: SparkSession, folder: Path) -> Counter[tuple[object, ...]]:
    frame = spark.read.parquet(str(folder))
    return Counter(
        (r["image_id"], r["label"], r["score"], tuple(r["probabilities"]), r["run_id"])
        for r in frame.select("image_id", "label", "score", "probabilities", "run_id").collect()
    )


def _leftovers(table: Path) -> list[str]:
    return sorted(p.name for p in table.iterdir() if p.name.startswith(("_staging", JOURNAL_PREFIX)))


@pytest.fixture
def table(spark: SparkSession, tmp_path: Path) -> Path:
    """A predictions table whose partition holds 12 files of 5 rows."""
    root = tmp_path / "predictions"
    _write_files(spark, root / PARTITION, files=12, rows_per_file=5)
    assert len(data_files(spark, str(root / PARTITION))) == 12
    return root


def test_a_partition_past_the_threshold_becomes_one_file_with_the_same_rows(spark: SparkSession, table: Path) -> None:
    before = _rows(spark, table / PARTITION)

    done = compact_partition(spark, str(table), PARTITION, above_files=10, conform=conform_predictions)

    assert done is not None
    assert (done.files_before, done.files_after) == (12, 1)
    assert len(data_files(spark, str(table / PARTITION))) == 1
    assert _rows(spark, table / PARTITION) == before
    assert sum(before.values()) == 60
    assert _leftovers(table) == []


def test_a_partition_at_the_threshold_or_with_compaction_off_is_left_alone(spark: SparkSession, table: Path) -> None:
    names = data_files(spark, str(table / PARTITION))

    assert compact_partition(spark, str(table), PARTITION, above_files=12) is None
    assert compact_partition(spark, str(table), PARTITION, above_files=0) is None

    assert data_files(spark, str(table / PARTITION)) == names


def test_the_target_size_sets_how_many_files_are_written(spark: SparkSession, table: Path) -> None:
    total = sum(size for _, size in data_files(spark, str(table / PARTITION)))
    before = _rows(spark, table / PARTITION)

    done = compact_partition(spark, str(table), PARTITION, above_files=1, target_bytes=total // 3 + 1)

    assert done is not None and done.files_after == 3
    assert len(data_files(spark, str(table / PARTITION))) == 3
    assert _rows(spark, table / PARTITION) == before


@pytest.mark.parametrize("moved_new, deleted_old", [(0, 0), (1, 0), (2, 0), (2, 5)])
def test_a_killed_compaction_is_finished_without_losing_or_doubling_a_row(
    spark: SparkSession, table: Path, moved_new: int, deleted_old: int
) -> None:
    before = _rows(spark, table / PARTITION)
    old = data_files(spark, str(table / PARTITION))
    total = sum(size for _, size in old)
    # Given a compaction into two files killed after its journal: some new files moved in, some old deleted
    journal = stage_compaction(spark, str(table), PARTITION, old, target_bytes=total // 2 + 1)
    staging = next(p for p in table.iterdir() if p.name.startswith("_staging"))
    staged = sorted(p for p in staging.iterdir() if not p.name.startswith(("_", ".")))
    assert len(staged) == 2
    for path in staged[:moved_new]:
        shutil.move(path, table / PARTITION / path.name)
    for name, _ in old[:deleted_old]:
        (table / PARTITION / name).unlink()

    # When the next job starts
    finished = finish_interrupted(spark, str(table))

    # Then the partition holds the compacted files and exactly the rows it had
    assert finished == [PARTITION]
    assert sorted(name for name, _ in data_files(spark, str(table / PARTITION))) == sorted(p.name for p in staged)
    assert _rows(spark, table / PARTITION) == before
    assert _leftovers(table) == []
    assert journal.startswith(JOURNAL_PREFIX)


def test_files_appended_while_compacting_are_neither_rewritten_nor_deleted(spark: SparkSession, table: Path) -> None:
    before = _rows(spark, table / PARTITION)
    old = data_files(spark, str(table / PARTITION))
    stage_compaction(spark, str(table), PARTITION, old, target_bytes=1 << 30)
    # Given a scoring run that appends a file after the compaction listed the partition
    _write_files(spark, table / PARTITION, files=1, rows_per_file=4, start=1000)
    appended = set(data_files(spark, str(table / PARTITION))) - set(old)
    assert len(appended) == 1

    finish_interrupted(spark, str(table))

    files = set(data_files(spark, str(table / PARTITION)))
    assert appended <= files and len(files) == 2
    after = _rows(spark, table / PARTITION)
    appended_rows = Counter({row: n for row, n in after.items() if str(row[0]) >= "img-01000"})
    assert sum(appended_rows.values()) == 4
    assert after - appended_rows == before


def test_a_compaction_finished_by_another_job_meanwhile_is_skipped(spark: SparkSession, table: Path) -> None:
    from spark_jobs.compaction import roll_forward

    before = _rows(spark, table / PARTITION)
    old = data_files(spark, str(table / PARTITION))
    journal = stage_compaction(spark, str(table), PARTITION, old, target_bytes=1 << 30)
    # Given two jobs that both listed the journal, and the first finished it
    assert roll_forward(spark, str(table), journal) is not None
    # When the second gets to it, it finds it gone and changes nothing
    assert roll_forward(spark, str(table), journal) is None
    assert len(data_files(spark, str(table / PARTITION))) == 1
    assert _rows(spark, table / PARTITION) == before
    assert _leftovers(table) == []


def test_columns_that_older_files_lack_are_kept_for_the_rows_that_have_them(
    spark: SparkSession, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    from spark_jobs.contract import RescorePaths
    from spark_jobs.current import set_current
    from spark_jobs.read import current_predictions

    # Given a partition whose first files predate the top_k column and whose last ones carry it
    paths = RescorePaths(str(tmp_path / "home"))
    table = Path(paths.predictions)
    folder = table / PARTITION
    old_rows = spark.createDataFrame(
        [(f"old-{i}", "cat", 0.9, "r1") for i in range(4)], "image_id string, label string, score float, run_id string"
    )
    old_rows.repartition(2).write.parquet(str(folder / "_write-old"))
    for path in (folder / "_write-old").glob("part-*"):
        path.rename(folder / f"a-{path.name}")  # listed first
    new_rows = conform_predictions(
        spark.createDataFrame(
            [(f"new-{i}", "dog", 0.8, "r2") for i in range(4)],
            "image_id string, label string, score float, run_id string",
        ).withColumn("top_k", F.array(F.struct(F.lit("dog").alias("label"), F.lit(0.8).cast("float").alias("score"))))
    )
    new_rows.repartition(2).write.mode("append").parquet(str(folder))
    shutil.rmtree(folder / "_write-old")
    # (users reading the promoted version see the new rows' top_k before the compaction too)
    set_current(paths, "m", "1")
    read = {r["image_id"]: r["top_k"] for r in current_predictions(spark, paths.home, "m").collect()}
    assert read["new-0"] == [("dog", pytest.approx(0.8))] and read["old-0"] is None

    compact_partition(spark, str(table), PARTITION, above_files=1, conform=conform_predictions)

    rows = {r["image_id"]: r["top_k"] for r in spark.read.parquet(str(folder)).collect()}
    assert len(data_files(spark, str(folder))) == 1
    assert all(rows[f"new-{i}"] == [("dog", pytest.approx(0.8))] for i in range(4))
    assert all(rows[f"old-{i}"] is None for i in range(4))


def test_a_killed_jobs_staging_folder_is_removed_after_a_week_and_no_other(spark: SparkSession, table: Path) -> None:
    import json
    import os
    import time

    from spark_jobs.compaction import STAGING_RETENTION_HOURS, remove_abandoned_staging

    def staging(name: str, age_hours: float) -> Path:
        folder = table / name
        _write_files(spark, folder, files=1, rows_per_file=2, start=5000)
        stamp = time.time() - age_hours * 3600
        for path in [*folder.rglob("*"), folder]:  # files first, then the folder itself
            os.utime(path, (stamp, stamp))
        return folder

    # Given a killed job's staging folder untouched for 8 days, an 8-day-old one in which a running
    # job wrote a file an hour ago, one 8 days old that a pending journal names, and one 6 days old
    staging("_staging-killed", 8 * 24)
    running = staging("_staging-running", 8 * 24)
    written = next(p for p in running.rglob("part-*"))
    os.utime(written, (time.time() - 3600, time.time() - 3600))  # a task committed a file an hour ago
    staging("_staging-journaled", 8 * 24)
    staging("_staging-recent", 6 * 24)
    (table / f"{JOURNAL_PREFIX}abc.json").write_text(
        json.dumps({"partition": PARTITION, "staging": "_staging-journaled", "new": [], "old": []})
    )
    before = _rows(spark, table / PARTITION)

    # When the next score job looks
    removed = remove_abandoned_staging(spark, str(table))

    # Then only the killed job's folder is gone, and the table's rows are untouched
    assert STAGING_RETENTION_HOURS == 7 * 24
    assert removed == ["_staging-killed"]
    assert sorted(p.name for p in table.iterdir() if p.name.startswith("_staging")) == [
        "_staging-journaled",
        "_staging-recent",
        "_staging-running",
    ]
    assert _rows(spark, table / PARTITION) == before
    assert remove_abandoned_staging(spark, str(table), older_than_hours=0) == []
