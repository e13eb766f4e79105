"""Exactly once: files landing mid-run, crashed and retried runs, and the stream's file options."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_jobs.ingest import IngestCounts

pytestmark = pytest.mark.spark


def _png(shade: int, size: tuple[int, int] = (12, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 7)).save(buf, "PNG")
    return buf.getvalue()


def _land(landing: Path, name: str, data: bytes) -> Path:
    target = landing / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _ingest(spark: SparkSession, home: Path, **options: Any) -> IngestCounts:
    from spark_jobs.contract import RescorePaths
    from spark_jobs.ingest import ingest_landing

    paths = RescorePaths(str(home))
    return ingest_landing(
        spark,
        paths=paths,
        landing=str(home / "landing"),
        checkpoint=f"{paths.checkpoints}/ingest",
        run_id=options.pop("run_id", "run-1"),
        **options,
    )


def _table(spark: SparkSession, home: Path, name: str) -> list[dict[str, Any]]:
    """Every row of a table, as dicts, in a stable order."""
    path = home / "warehouse" / name
    if not path.exists():
        return []
    rows = [r.asDict() for r in spark.read.parquet(str(path)).collect()]
    return sorted(rows, key=lambda r: (r["path"], r["ingest_batch"]))


def _names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(Path(r["path"]).name for r in rows)


def test_a_file_landing_mid_run_is_taken_by_the_next_run_exactly_once(spark: SparkSession, rescore_home: Path) -> None:
    landing = rescore_home / "landing"
    _land(landing, "a.png", _png(1))
    _land(landing, "b.png", _png(2))

    # Given a run during which c.png lands (after the first batch is written, before it commits)
    def land_during_run(batch_id: int) -> None:
        if batch_id == 0:
            _land(landing, "c.png", _png(3))

    first = _ingest(spark, rescore_home, after_batch_written=land_during_run)
    # Then that run takes only what had landed when it started
    assert (first.seen, first.accepted) == (2, 2)
    assert _names(_table(spark, rescore_home, "images")) == ["a.png", "b.png"]
    # When the next run comes
    second = _ingest(spark, rescore_home, run_id="run-2")
    # Then it takes the late file, once
    assert (second.seen, second.accepted, second.duplicates) == (1, 1, 0)
    third = _ingest(spark, rescore_home, run_id="run-3")
    assert third.seen == 0
    assert _names(_table(spark, rescore_home, "image_paths")) == ["a.png", "b.png", "c.png"]
    assert _names(_table(spark, rescore_home, "images")) == ["a.png", "b.png", "c.png"]


def test_a_run_that_crashes_before_its_checkpoint_commits_is_replayed_to_identical_tables(
    spark: SparkSession, rescore_home: Path
) -> None:
    import time

    landing = rescore_home / "landing"
    landed = [_land(landing, name, _png(10 * i)) for i, name in enumerate(["a.png", "b.png", "c.png", "d.png"])]
    landed.append(_land(landing, "e-copy-of-a.png", _png(0)))  # same bytes as a.png, in the second batch
    landed.append(_land(landing, "f.txt", b"not an image"))
    # The stream takes files oldest first: distinct times make the two batches a-c and d-f.
    for i, path in enumerate(landed):
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))

    # Given a run that dies after writing its second batch's partitions, before Spark commits it
    def crash(batch_id: int) -> None:
        if batch_id == 1:
            raise RuntimeError("simulated crash between partition write and checkpoint commit")

    with pytest.raises(Exception, match="simulated crash"):
        _ingest(spark, rescore_home, max_files_per_batch=3, after_batch_written=crash)
    after_crash = {t: _table(spark, rescore_home, t) for t in ("images", "image_paths", "rejects")}
    assert {r["ingest_batch"] for r in after_crash["image_paths"]} == {"0", "1"}

    # When the same task is retried
    retried = _ingest(spark, rescore_home, max_files_per_batch=3)
    # Then Spark replays the uncommitted batch into exactly the rows it wrote before the crash
    after_retry = {t: _table(spark, rescore_home, t) for t in ("images", "image_paths", "rejects")}
    assert after_retry == after_crash
    assert (retried.seen, retried.accepted, retried.rejected, retried.duplicates) == (3, 1, 1, 1)
    assert _names(after_retry["images"]) == ["a.png", "b.png", "c.png", "d.png"]
    assert _names(after_retry["rejects"]) == ["f.txt"]
    assert len(after_retry["image_paths"]) == 5
    # And a plain re-run changes nothing
    again = _ingest(spark, rescore_home, max_files_per_batch=3)
    assert again.seen == 0
    assert {t: _table(spark, rescore_home, t) for t in ("images", "image_paths", "rejects")} == after_retry


def test_recursive_and_glob_options_choose_the_files(spark: SparkSession, rescore_home: Path) -> None:
    landing = rescore_home / "landing"
    _land(landing, "top.png", _png(1))
    _land(landing, "top.jpg.txt", b"a note beside the images")
    _land(landing, "sub/deep.png", _png(2))

    counts = _ingest(spark, rescore_home, recursive=False, path_glob="*.png")

    assert (counts.seen, counts.accepted) == (1, 1)
    assert _names(_table(spark, rescore_home, "images")) == ["top.png"]
    assert _table(spark, rescore_home, "rejects") == []


def test_modified_after_skips_older_files_and_old_timestamps_are_not_lost_otherwise(
    spark: SparkSession, rescore_home: Path
) -> None:
    from datetime import datetime

    landing = rescore_home / "landing"
    old = _land(landing, "old.png", _png(1))
    os.utime(old, (1_600_000_000, 1_600_000_000))  # September 2020
    _land(landing, "new.png", _png(2))

    # Given --modified-after 2024-01-01
    counts = _ingest(spark, rescore_home, modified_after=datetime(2024, 1, 1))
    # Then the old file is consumed as skipped and the new one ingested
    assert (counts.seen, counts.accepted, counts.skipped) == (1, 1, 1)
    assert _names(_table(spark, rescore_home, "images")) == ["new.png"]

    # When a file copied with an old timestamp lands later (cp -p), without --modified-after
    copied = _land(landing, "copied.png", _png(3))
    os.utime(copied, (1_600_000_000, 1_600_000_000))
    later = _ingest(spark, rescore_home, run_id="run-2")
    # Then it is still taken (Spark's default maxFileAge of 7 days would drop it silently)
    assert (later.seen, later.accepted) == (1, 1)
    assert _names(_table(spark, rescore_home, "images")) == ["copied.png", "new.png"]


def test_a_missing_checkpoint_with_a_filled_table_is_refused(spark: SparkSession, rescore_home: Path) -> None:
    import shutil

    from spark_jobs.session import JobError

    _land(rescore_home / "landing", "a.png", _png(1))
    _ingest(spark, rescore_home)
    # Given the checkpoint was lost while the images table holds data
    shutil.rmtree(rescore_home / "checkpoints" / "ingest")
    # Then ingest refuses instead of taking everything again into batch 0
    with pytest.raises(JobError, match=r"checkpoint .*checkpoints/ingest is missing .* Restore the checkpoint"):
        _ingest(spark, rescore_home)
    assert _names(_table(spark, rescore_home, "images")) == ["a.png"]


@pytest.fixture
def default_shuffle_partitions(spark: SparkSession) -> Iterator[None]:
    """Spark's own 200 shuffle partitions (what a spark-submit job gets), not the suite's 2."""
    keys = ("spark.sql.shuffle.partitions", "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning")
    before = {key: spark.conf.get(key) for key in keys}
    spark.conf.set("spark.sql.shuffle.partitions", "200")
    spark.conf.unset("spark.sql.optimizer.canChangeCachedPlanOutputPartitioning")
    try:
        yield
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)


@pytest.mark.usefixtures("default_shuffle_partitions")
def test_a_small_batch_lands_as_one_file_not_one_per_image(spark: SparkSession, rescore_home: Path) -> None:
    # Given 40 small images landing together, under Spark's default 200 shuffle partitions
    landing = rescore_home / "landing"
    for shade in range(40):
        _land(landing, f"img-{shade:02d}.png", _png(shade * 6))

    # When they are ingested in one batch
    counts = _ingest(spark, rescore_home)

    # Then every image is in the table once, written as one file (it was ~35 of one or two images
    # each: the batch's de-duplication kept its 200 partitions into the write)
    assert counts.accepted == 40
    assert len(_table(spark, rescore_home, "images")) == 40
    written = sorted((rescore_home / "warehouse" / "images" / "ingest_batch=0").glob("*.parquet"))
    assert len(written) == 1, f"{len(written)} files for 40 images: {[p.name for p in written][:5]}"


@pytest.mark.usefixtures("default_shuffle_partitions")
def test_a_batch_file_is_cut_into_row_groups_that_scoring_tasks_can_share(
    spark: SparkSession, rescore_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from spark_jobs import ingest

    # Given row groups of 64 KiB and 40 noise images of ~12 KiB landing together (one file)
    monkeypatch.setattr(ingest, "IMAGES_ROW_GROUP_BYTES", 64 * 1024)
    rng = np.random.default_rng(5)
    landing = rescore_home / "landing"
    for n in range(40):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        _land(landing, f"noise-{n:02d}.png", buf.getvalue())

    # When they are ingested
    assert _ingest(spark, rescore_home).accepted == 40

    # Then the batch's one file holds several row groups
    (written,) = (rescore_home / "warehouse" / "images" / "ingest_batch=0").glob("*.parquet")
    assert pq.ParquetFile(written).num_row_groups >= 4
    # and a scan cut into 128 KiB splits (as Spark cuts a large table for many cores) spreads its
    # rows over several tasks, where a single row group would give them all to one
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(128 * 1024))
    try:
        rows = spark.read.parquet(str(written)).select("image_id").rdd.glom().map(len).collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert sum(rows) == 40
    assert sum(1 for n in rows if n > 0) >= 2


def test_a_batch_is_checked_against_the_table_without_shuffling_the_tables_ids(
    spark: SparkSession, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    from spark_jobs.ingest import first_sightings
    from tests.spark._stage_metrics import measured

    # Given a table of 50,000 image ids and a batch of 3 files, one of them already in the table
    known = tmp_path / "known"
    spark.range(50_000).select(F.sha2(F.col("id").cast("string"), 256).alias("image_id")).write.parquet(str(known))
    old_id = spark.read.parquet(str(known)).orderBy("image_id").first()["image_id"]  # type: ignore[index]
    batch = spark.createDataFrame(
        [
            (old_id, "file:/l/a.png", bytearray(b"a")),
            ("new-1", "file:/l/b.png", bytearray(b"b")),
            ("new-1", "file:/l/c.png", bytearray(b"b")),
        ],
        "image_id string, path string, content binary",
    )

    # When the batch's first sightings are found, with the table's ids over the broadcast threshold
    # (1 MB here; Spark's 10 MB default is ~150,000 ids)
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", str(1 << 20))
    try:
        rows, stages = measured(
            spark, "first-sightings", lambda: first_sightings(batch, spark.read.parquet(str(known))).collect()
        )
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")

    # Then only the new image is kept, once (its smallest path), and the table's 50,000 ids
    # (64 characters each) were read but not shuffled: what moved is about the batch
    assert [(r["image_id"], r["path"]) for r in rows] == [("new-1", "file:/l/b.png")]
    assert stages.table_rows == 50_000
    assert stages.shuffle_bytes < 100_000


def _land_one_batch_each(landing: Path, names_and_data: list[tuple[str, bytes]]) -> None:
    """Land files with distinct times, oldest first, so that one file per batch keeps their order."""
    import time

    for i, (name, data) in enumerate(names_and_data):
        path = _land(landing, name, data)
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))


def _batch_folders(home: Path, table: str) -> list[str]:
    return sorted(p.name for p in (home / "warehouse" / table).iterdir() if p.name.startswith("ingest_batch="))


def _without_batch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in r.items() if k != "ingest_batch"} for r in rows), key=lambda r: r["path"])


_TABLES = ("images", "image_paths", "rejects")


def test_merged_batches_keep_every_row_once_and_later_batches_still_see_their_images(
    spark: SparkSession, rescore_home: Path
) -> None:
    from spark_jobs.contract import RescorePaths
    from spark_jobs.ingest import merge_ingested_batches

    # Given five batches of one file each: four images (one a copy of another) and a reject
    files = [("a.png", _png(1)), ("b.png", _png(2)), ("c.png", _png(3)), ("d-copy-of-a.png", _png(1))]
    _land_one_batch_each(rescore_home / "landing", [*files, ("e.txt", b"not an image")])
    _ingest(spark, rescore_home, max_files_per_batch=1, merge_min_batches=0)
    before = {t: _table(spark, rescore_home, t) for t in _TABLES}
    assert _batch_folders(rescore_home, "images") == [f"ingest_batch={b}" for b in range(5)]

    # When the committed batches are merged in runs of at least 3
    paths = RescorePaths(str(rescore_home))
    merges = merge_ingested_batches(spark, paths, f"{paths.checkpoints}/ingest", min_batches=3)

    # Then each table keeps its rows, once, in one partition: the last batch's
    assert [(m.into, m.batches) for m in merges] == [("ingest_batch=4", 5)] * 3
    after = {t: _table(spark, rescore_home, t) for t in _TABLES}
    for table in _TABLES:
        assert _batch_folders(rescore_home, table) == ["ingest_batch=4"]
        assert _without_batch(after[table]) == _without_batch(before[table])
        assert {r["ingest_batch"] for r in after[table]} == {"4"}
        leftovers = [p.name for p in (rescore_home / "warehouse" / table).iterdir() if p.name.startswith("_")]
        assert leftovers == [], f"{table}: {leftovers}"
    assert _names(after["images"]) == ["a.png", "b.png", "c.png"]
    assert _names(after["rejects"]) == ["e.txt"]

    # And a later run still finds the merged images: a copy of b.png is a duplicate, f.png is new
    _land_one_batch_each(rescore_home / "landing", [("f.png", _png(6)), ("g-copy-of-b.png", _png(2))])
    later = _ingest(spark, rescore_home, run_id="run-2", merge_min_batches=3)
    assert (later.seen, later.accepted, later.duplicates) == (2, 1, 1)
    assert _names(_table(spark, rescore_home, "images")) == ["a.png", "b.png", "c.png", "f.png"]
    assert _batch_folders(rescore_home, "images") == ["ingest_batch=4", "ingest_batch=5"]


def test_a_merge_killed_after_staging_its_rows_is_finished_by_the_next_run(
    spark: SparkSession, rescore_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import compaction
    from spark_jobs.contract import RescorePaths
    from spark_jobs.ingest import merge_ingested_batches

    # Given four batches, and a merge whose job dies once its rows and journal are written
    files = [(f"{name}.png", _png(shade)) for name, shade in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    _land_one_batch_each(rescore_home / "landing", files)
    _ingest(spark, rescore_home, max_files_per_batch=1, merge_min_batches=0)
    before = {t: _table(spark, rescore_home, t) for t in _TABLES}

    def killed(*_: object) -> None:
        raise RuntimeError("simulated kill before the swap")

    monkeypatch.setattr(compaction, "roll_forward", killed)
    paths = RescorePaths(str(rescore_home))
    with pytest.raises(RuntimeError, match="simulated kill"):
        merge_ingested_batches(spark, paths, f"{paths.checkpoints}/ingest", min_batches=2)
    monkeypatch.undo()
    journals = sorted((rescore_home / "warehouse" / "images").glob("_compaction-*.json"))
    assert len(journals) == 1
    # readers meanwhile see the table as it was: the merged rows are only staged
    assert _table(spark, rescore_home, "images") == before["images"]

    # When the next ingest run starts (nothing new has landed)
    again = _ingest(spark, rescore_home, run_id="run-2")

    # Then it finished the merge: every image once, in the last batch's partition, no journal left
    assert again.seen == 0
    assert _without_batch(_table(spark, rescore_home, "images")) == _without_batch(before["images"])
    assert _batch_folders(rescore_home, "images") == ["ingest_batch=3"]
    assert not list((rescore_home / "warehouse" / "images").glob("_compaction-*"))
    assert not list((rescore_home / "warehouse" / "images").glob("_staging-*"))
