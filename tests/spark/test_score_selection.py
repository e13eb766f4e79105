"""Choosing what a scoring run scores: from the image ids, without shuffling the image bytes.

Each test reads what Spark itself recorded while the chosen rows were read (shuffle bytes written,
rows read from the table), not the plan's text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.spark._stage_metrics import measured

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

pytestmark = pytest.mark.spark

IMAGE_BYTES = 20_000  # about a small photo: a shuffle of the bytes is 40 images x 20 KB


@dataclass(frozen=True)
class Read:
    ids: list[str]
    shuffle_bytes: int
    table_rows: int  # rows the stages read from files, all columns alike


def _write_images(spark: SparkSession, home: Path, batches: dict[str, list[str]]) -> DataFrame:
    """An images table as ingest writes it: one ``ingest_batch=<n>`` partition per batch."""
    table = home / "images"
    for batch, ids in batches.items():
        rows = [(i, f"file:/landing/{i}.jpg", bytearray(os.urandom(IMAGE_BYTES)), datetime(2026, 3, 1)) for i in ids]
        schema = "image_id string, path string, content binary, ingested_at timestamp"
        spark.createDataFrame(rows, schema).write.parquet(str(table / f"ingest_batch={batch}"))
    return spark.read.parquet(str(table))


def _predictions(spark: SparkSession, ids: list[str], version: str = "1") -> DataFrame:
    return spark.createDataFrame(
        [(i, "m", version) for i in ids], "image_id string, model_name string, model_version string"
    )


def _read(spark: SparkSession, frame: DataFrame, group: str) -> Read:
    """The ids ``frame`` yields with its bytes, and what Spark's stages recorded while reading it."""
    from pyspark.sql import functions as F

    rows, stages = measured(spark, group, frame.select("image_id", F.length("content").alias("n")).collect)
    return Read(sorted(r["image_id"] for r in rows), stages.shuffle_bytes, stages.table_rows)


def test_a_new_version_reads_the_table_as_it_is(spark: SparkSession, tmp_path: Path) -> None:
    from spark_jobs.score import plan_selection

    # Given 40 images in two ingest batches and predictions from another version only
    ids = [f"img-{n:02d}" for n in range(40)]
    images = _write_images(spark, tmp_path, {"0": ids[:20], "1": ids[20:]})

    # When version 2 selects what to score
    selection = plan_selection(images, _predictions(spark, ids), model_name="m", model_version="2")

    # Then it scores every image, read once with no shuffle at all
    read = _read(spark, selection.images, "new-version")
    assert (selection.count, selection.how) == (40, "every image in scope")
    assert read.ids == ids
    assert read.shuffle_bytes == 0
    assert read.table_rows == 40


def test_an_hourly_run_reads_only_the_batch_with_new_images_and_shuffles_no_bytes(
    spark: SparkSession, tmp_path: Path
) -> None:
    from spark_jobs.score import plan_selection, select_images

    # Given 40 images scored by version 1 and 5 new ones in the last ingest batch
    old = [f"old-{n:02d}" for n in range(40)]
    new = [f"new-{n}" for n in range(5)]
    images = _write_images(spark, tmp_path, {"0": old[:20], "1": old[20:], "2": new})
    scored = _predictions(spark, old)

    # When version 1 selects what to score
    selection = plan_selection(images, scored, model_name="m", model_version="1")

    # Then only the 5 new images are read, from their batch, and no image bytes cross a shuffle
    read = _read(spark, selection.images, "hourly")
    assert selection.count == 5
    assert selection.how == "their ids broadcast to the scan of the 1 ingest batches holding them"
    assert read.ids == new
    # (the ids of all 45 to broadcast, then the rows of batch 2 alone: 90 if every batch were read)
    assert read.table_rows == 45 + 5
    assert read.shuffle_bytes < IMAGE_BYTES
    # where the plan that de-duplicates the rows with their bytes shuffled every image in the table
    before = _read(spark, select_images(images, scored, model_name="m", model_version="1"), "hourly-before")
    assert before.ids == new
    assert before.shuffle_bytes > 45 * IMAGE_BYTES


def test_more_new_images_than_the_broadcast_limit_are_joined_by_id(spark: SparkSession, tmp_path: Path) -> None:
    from spark_jobs.score import plan_selection

    # Given 10 scored images and 6 new ones, with a broadcast limit of 5 ids
    old = [f"old-{n}" for n in range(10)]
    new = [f"new-{n}" for n in range(6)]
    images = _write_images(spark, tmp_path, {"0": old, "1": new})

    # When version 1 selects what to score
    selection = plan_selection(images, _predictions(spark, old), model_name="m", model_version="1", broadcast_ids=5)

    # Then the 6 new images are found by a join on their ids
    assert (selection.count, selection.how) == (6, "their ids joined by a shuffle")
    assert _read(spark, selection.images, "over-limit").ids == new


def test_an_image_on_two_rows_is_scored_once(spark: SparkSession, tmp_path: Path) -> None:
    from spark_jobs.score import plan_selection

    # Given a table not written by ingest, holding the same image_id on two rows
    images = _write_images(spark, tmp_path, {"0": ["a", "b", "c"], "1": ["c", "d"]})

    # When a first version selects what to score
    selection = plan_selection(images, None, model_name="m", model_version="1")

    # Then each image is scored once
    assert selection.count == 4
    assert selection.how.startswith("one row per image_id kept from several")
    assert _read(spark, selection.images, "duplicates").ids == ["a", "b", "c", "d"]


def test_nothing_left_to_score_reads_nothing(spark: SparkSession, tmp_path: Path) -> None:
    from spark_jobs.score import plan_selection

    ids = ["a", "b"]
    images = _write_images(spark, tmp_path, {"0": ids})
    selection = plan_selection(images, _predictions(spark, ids), model_name="m", model_version="1")
    assert (selection.count, selection.how) == (0, "nothing to score")
    assert _read(spark, selection.images, "nothing").ids == []
