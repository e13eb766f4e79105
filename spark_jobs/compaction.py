"""Compaction of a predictions partition: many small files rewritten into a few large ones.

Every scoring run appends its own files (one or two per task) to the version's partition, so an
hourly pipeline adds thousands of small files a year, and every later run pays for them: the
selection reads the partition's ``image_id`` column and validation reads a run's rows. Measured
on 2 cores, 300,000 predictions: the distinct ids 11.2-12.3 s from 2,000 files against 1.1-1.5 s
from 2; one run's rows 3.7-4.2 s against 0.3-0.5 s.

Once a partition holds more than ``above_files`` data files, :func:`compact_partition` rewrites
exactly the files it listed (merging Spark's read splits: no shuffle, rows stay in the order they were written)
into files of about ``target_bytes``, and swaps them in through a journal, so that nothing is lost
or doubled whatever moment the job is killed:

1. the compacted rows are written under a hidden ``_staging-<token>`` folder of the table
   (Spark's readers skip names starting with ``_``);
2. a journal ``_compaction-<token>.json`` names the partition, the staging folder, the new files
   and the old ones;
3. the new files are renamed into the partition, the old ones deleted, then the staging folder and
   the journal.

The score job's ``--force`` swaps a rebuilt partition in through the same journal
(:func:`stage_swap`, then :func:`roll_forward`), and ingest merges runs of its committed
``ingest_batch=<id>`` partitions with it (:func:`merge_batches`: the journal then also lists the
other batches' files, ``old_elsewhere``, whose folders go once empty).

A job killed before the journal exists leaves only its staging folder (the partition is as it
was); a journal left behind is finished by the next compaction of the table (:func:`finish_interrupted`,
run first by every score job), which moves whichever new files are still staged and deletes
whichever old ones remain. Files appended while a compaction runs are not in its list, so they are
neither rewritten nor deleted.

Readers that list the partition between the renames and the deletes (milliseconds on a local or
HDFS file system) see old and new rows together, and a reader that listed the old files before
they were deleted fails on the missing file and must be retried; without a table format
(Delta, Iceberg) a Parquet folder offers no snapshot to read from. The Airflow DAGs run compaction
inside the score task, so their own validation never overlaps it.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_jobs.session import JobError, hadoop_fs, list_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("rescore.compaction")

#: A partition is compacted once it holds more data files than this (``--compact-above-files``).
COMPACT_ABOVE_FILES = 64
#: The size of a compacted file (``--compact-file-mb``): Spark's ``maxPartitionBytes``, one task each.
TARGET_FILE_BYTES = 128 * 1024 * 1024
JOURNAL_PREFIX = "_compaction-"
STAGING_PREFIX = "_staging-"
#: A staging folder no journal names and in which nothing changed for this long is what a job
#: killed while writing left behind; the next score job removes it.
STAGING_RETENTION_HOURS = 7 * 24


@dataclass(frozen=True)
class Compaction:
    """What one compaction did."""

    partition: str
    files_before: int
    files_after: int
    bytes_before: int


def _is_data(name: str) -> bool:
    return not name.startswith(("_", "."))


def _is_journal(name: str) -> bool:
    return name.startswith(JOURNAL_PREFIX) and name.endswith(".json")


def data_files(spark: SparkSession, folder: str) -> list[tuple[str, int]]:
    """(name, bytes) of the data files directly in ``folder`` (none when it does not exist)."""
    return [(name, size) for name, size in list_files(spark, folder) if _is_data(name)]


def _write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole: to a hidden temporary name first, then renamed."""
    fs, target = hadoop_fs(spark, path)
    _, temporary = hadoop_fs(spark, f"{path}.{uuid.uuid4().hex[:8]}.tmp")
    out = fs.create(temporary, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    if not fs.rename(temporary, target):
        fs.delete(temporary, False)
        raise JobError(f"could not write {path}: check permissions on its folder")


def _read_text(spark: SparkSession, path: str) -> str:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    fs, hadoop_path = hadoop_fs(spark, path)
    stream = fs.open(hadoop_path)
    try:
        return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
    finally:
        stream.close()


def roll_forward(spark: SparkSession, table: str, journal_name: str) -> dict[str, Any] | None:
    """Finish the compaction a journal describes: new files in, old files out, leftovers gone.

    Safe to run twice at once (a job finishing a compaction that another is still running): each
    step checks what is already done. None when the journal is gone (finished by the other job)."""
    from py4j.protocol import Py4JJavaError

    jvm = spark.sparkContext._jvm
    assert jvm is not None
    journal_path = f"{table}/{journal_name}"
    fs, journal = hadoop_fs(spark, journal_path)
    try:
        entry = json.loads(_read_text(spark, journal_path))
    except Py4JJavaError:  # FileNotFoundException, unless the journal is still there
        if fs.exists(journal):
            raise
        return None  # another job finished this compaction after we listed it
    partition = f"{table}/{entry['partition']}"
    _, partition_path = hadoop_fs(spark, partition)
    _, staging_path = hadoop_fs(spark, f"{table}/{entry['staging']}")
    in_partition = jvm.org.apache.hadoop.fs.Path
    fs.mkdirs(partition_path)  # a replacement may create the partition
    for name in entry["new"]:
        source, target = in_partition(staging_path, name), in_partition(partition_path, name)
        if fs.exists(target):  # moved before the interruption
            continue
        try:
            moved = bool(fs.exists(source) and fs.rename(source, target))
        except Py4JJavaError:  # the source vanished between the two calls
            moved = False
        if not moved and not fs.exists(target):  # target there: another job moved it meanwhile
            raise JobError(
                f"compaction journal {journal_path} lists {name}, which is neither staged nor in {partition}: "
                "restore the file or remove the journal by hand after checking the partition's rows"
            )
    for name in entry["old"]:
        old = in_partition(partition_path, name)
        if not fs.delete(old, False) and fs.exists(old):  # False also when deleted before the interruption
            raise JobError(f"could not delete {partition}/{name} after compacting it: check permissions on {table}")
    # A merge of ingest batches: the other batches' files, then their folders once no data file is left
    elsewhere = [str(relative) for relative in entry.get("old_elsewhere", [])]
    for relative in elsewhere:
        _, old = hadoop_fs(spark, f"{table}/{relative}")
        if not fs.delete(old, False) and fs.exists(old):
            raise JobError(f"could not delete {table}/{relative} after merging it: check permissions on {table}")
    for folder in sorted({relative.rsplit("/", 1)[0] for relative in elsewhere}):
        if folder != entry["partition"] and not data_files(spark, f"{table}/{folder}"):
            fs.delete(hadoop_fs(spark, f"{table}/{folder}")[1], True)
    fs.delete(staging_path, True)
    fs.delete(journal, False)
    return entry


def finish_interrupted(spark: SparkSession, table: str) -> list[str]:
    """Finish every compaction of ``table`` that a killed job left half done; their partitions."""
    journals = [name for name, _ in list_files(spark, table) if _is_journal(name)]
    finished = []
    for name in journals:
        entry = roll_forward(spark, table, name)
        if entry is None:
            continue
        log.warning("finished an interrupted swap of %s/%s (%s)", table, entry["partition"], name)
        finished.append(str(entry["partition"]))
    return finished


def remove_abandoned_staging(
    spark: SparkSession, table: str, *, older_than_hours: float = STAGING_RETENTION_HOURS
) -> list[str]:
    """Remove the ``_staging-*`` folders of ``table`` that a killed job left: those no journal names
    and in which nothing (the folder or any file under it) changed for ``older_than_hours``.
    Returns their names.

    A job writing its rows touches its staging folder's files as its tasks commit, and a journal
    names the folder of a swap in progress, so neither is taken; a folder whose times are unknown
    (0: object stores keep none for folders) and that holds no file is left alone.
    """
    import time

    from py4j.protocol import Py4JJavaError

    if older_than_hours <= 0:
        return []
    fs, root = hadoop_fs(spark, table)
    if not fs.exists(root):
        return []
    entries = list(fs.listStatus(root))
    referenced = set()
    for status in entries:
        name = str(status.getPath().getName())
        if status.isFile() and _is_journal(name):
            try:
                referenced.add(json.loads(_read_text(spark, f"{table}/{name}"))["staging"])
            except Py4JJavaError:
                if fs.exists(status.getPath()):  # unreadable: never take the staging folder it may name
                    raise
                continue  # finished (and deleted) by another job since the listing
    cutoff = int((time.time() - older_than_hours * 3600) * 1000)
    removed = []
    for status in entries:
        name = str(status.getPath().getName())
        if not status.isDirectory() or not name.startswith(STAGING_PREFIX) or name in referenced:
            continue
        newest = int(status.getModificationTime())
        files = fs.listFiles(status.getPath(), True)
        while files.hasNext():
            newest = max(newest, int(files.next().getModificationTime()))
        if 0 < newest < cutoff:
            fs.delete(status.getPath(), True)
            log.warning(
                "removed %s/%s: a killed job's staging folder, unchanged for %g hours", table, name, older_than_hours
            )
            removed.append(name)
    return removed


def stage_compaction(
    spark: SparkSession,
    table: str,
    partition: str,
    old: list[tuple[str, int]],
    *,
    target_bytes: int,
    conform: Callable[[DataFrame], DataFrame] = lambda frame: frame,
) -> str:
    """Steps 1 and 2: write ``old``'s rows compacted under a staging folder and the journal that
    finishes the swap. Returns the journal's name (in ``table``)."""
    from pyspark.sql import functions as F

    total = sum(size for _, size in old)
    # The folder read whole and filtered by file name: with 2,000 files, listing each file as a
    # path of its own took 12.6-21.5 s to plan and the folder 1.7-2.8 s. Files that land after
    # the listing are filtered out.
    chosen = F.col("_metadata.file_name").isin([name for name, _ in old])
    # mergeSchema: without it Spark takes the columns of one file, and a partition whose older
    # files lack a column (top_k, embedding) would lose it from every row it rewrites.
    rows = conform(spark.read.option("mergeSchema", "true").parquet(f"{table}/{partition}").where(chosen))
    return stage_swap(spark, table, partition, [name for name, _ in old], _in_files(rows, total, target_bytes))


def _in_files(rows: DataFrame, total_bytes: int, target_bytes: int) -> DataFrame:
    """``rows`` in as many partitions (files written) as make files of about ``target_bytes``.

    Merging the read's splits keeps the rows in the order they were written, without a shuffle;
    a read in fewer splits than files wanted (a target below spark.sql.files.maxPartitionBytes)
    is spread round robin instead."""
    files = max(1, math.ceil(total_bytes / target_bytes))
    return rows.coalesce(files) if rows.rdd.getNumPartitions() >= files else rows.repartition(files)


def stage_swap(
    spark: SparkSession,
    table: str,
    partition: str,
    old: list[str],
    rows: DataFrame,
    *,
    old_elsewhere: list[str] | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Write ``rows`` under a staging folder of ``table`` and the journal that swaps them in for
    the files ``old`` of ``table/partition`` (steps 1 and 2; :func:`roll_forward` does step 3).
    ``old_elsewhere``: files of other partitions that the rows replace too (paths in ``table``;
    their folders go once empty); ``options``: the Parquet writer's. Returns the journal's name
    (in ``table``)."""
    token = uuid.uuid4().hex[:12]
    staging = f"{STAGING_PREFIX}{token}"
    rows.write.mode("overwrite").options(**(options or {})).parquet(f"{table}/{staging}")
    new = [name for name, _ in data_files(spark, f"{table}/{staging}")]
    clash = set(new) & {name for name, _ in data_files(spark, f"{table}/{partition}")}
    if clash:  # Spark names files with a random UUID per job; never overwrite a partition's file
        raise JobError(f"new file names {sorted(clash)} already exist in {table}/{partition}: run again")
    journal = f"{JOURNAL_PREFIX}{token}.json"
    entry: dict[str, Any] = {"partition": partition, "staging": staging, "new": new, "old": old}
    if old_elsewhere:
        entry["old_elsewhere"] = old_elsewhere
    _write_text(spark, f"{table}/{journal}", json.dumps(entry, indent=1))
    return journal


def compact_partition(
    spark: SparkSession,
    table: str,
    partition: str,
    *,
    above_files: int = COMPACT_ABOVE_FILES,
    target_bytes: int = TARGET_FILE_BYTES,
    conform: Callable[[DataFrame], DataFrame] = lambda frame: frame,
) -> Compaction | None:
    """Rewrite ``table/partition`` into files of about ``target_bytes`` once it holds more than
    ``above_files`` data files (``above_files`` 0: never). ``conform`` maps the rows read to the
    table's columns (older files may lack some). None when there was nothing to do."""
    if above_files <= 0:
        return None
    if target_bytes < 1:
        raise JobError(f"the compacted file size must be at least 1 byte, got {target_bytes}")
    finish_interrupted(spark, table)
    old = data_files(spark, f"{table}/{partition}")
    if len(old) <= above_files:
        return None
    journal = stage_compaction(spark, table, partition, old, target_bytes=target_bytes, conform=conform)
    entry = roll_forward(spark, table, journal)
    if entry is None:
        raise JobError(f"the journal {table}/{journal} of this compaction vanished: another job deleted it")
    done = Compaction(
        partition=partition, files_before=len(old), files_after=len(entry["new"]), bytes_before=sum(s for _, s in old)
    )
    log.info(
        "compacted %s/%s: %d files (%.1f MB) into %d",
        table,
        partition,
        done.files_before,
        done.bytes_before / 1e6,
        done.files_after,
    )
    return done


#: The partition folders that ingest writes, one per micro-batch of its stream.
BATCH_PREFIX = "ingest_batch="
#: Merge a run of small consecutive ingest batches once it holds this many (``--merge-batches``).
MERGE_BATCHES = 16


@dataclass(frozen=True)
class BatchMerge:
    """What one merge of consecutive ingest batches did."""

    into: str  # the partition that holds the rows now: the last batch's
    batches: int
    files_before: int
    files_after: int
    bytes_before: int


def batch_folders(spark: SparkSession, table: str) -> dict[int, list[tuple[str, int]]]:
    """Each ``ingest_batch=<id>`` folder of ``table``: its id -> (name, bytes) of its data files,
    from one recursive listing (one request per page of keys on an object store, not per folder)."""
    fs, root = hadoop_fs(spark, table)
    if not fs.exists(root):
        return {}
    prefix = str(fs.makeQualified(root).toUri().getPath()).rstrip("/") + "/"
    folders: dict[int, list[tuple[str, int]]] = {}
    listing = fs.listFiles(root, True)
    while listing.hasNext():
        status = listing.next()
        relative = str(status.getPath().toUri().getPath())[len(prefix) :]
        parts = relative.split("/")
        if len(parts) != 2 or not parts[0].startswith(BATCH_PREFIX) or not _is_data(parts[1]):
            continue
        batch = parts[0][len(BATCH_PREFIX) :]
        if batch.isdigit():
            folders.setdefault(int(batch), []).append((parts[1], int(status.getLen())))
    return {batch: sorted(files) for batch, files in sorted(folders.items())}


def plan_merges(
    folders: dict[int, list[tuple[str, int]]], *, up_to_batch: int, min_batches: int, target_bytes: int
) -> list[list[int]]:
    """Runs of consecutive batch folders to merge, each into one partition of at most
    ``target_bytes``: folders of batches up to ``up_to_batch`` smaller than ``target_bytes``,
    taken in order while their sum fits; a run is merged once it holds ``min_batches`` folders.
    A larger folder, a batch past ``up_to_batch`` (not committed yet) or a full run ends a run."""
    runs: list[list[int]] = []
    run: list[int] = []
    size = 0
    for batch, files in sorted(folders.items()):
        folder_bytes = sum(b for _, b in files)
        if batch > up_to_batch or folder_bytes >= target_bytes or size + folder_bytes > target_bytes:
            if len(run) >= min_batches:
                runs.append(run)
            run, size = [], 0
            if batch > up_to_batch or folder_bytes >= target_bytes:
                continue
        run.append(batch)
        size += folder_bytes
    if len(run) >= min_batches:
        runs.append(run)
    return runs


def merge_batches(
    spark: SparkSession,
    table: str,
    *,
    up_to_batch: int,
    min_batches: int = MERGE_BATCHES,
    target_bytes: int = TARGET_FILE_BYTES,
    options: dict[str, str] | None = None,
) -> list[BatchMerge]:
    """Merge runs of small consecutive ``ingest_batch=<id>`` partitions of ``table`` (batches up to
    ``up_to_batch``: those the stream's checkpoint has committed, which no replay rewrites) into
    the last batch's partition of each run, through the same journal as :func:`compact_partition`:
    nothing is lost or doubled whatever moment the job is killed (the next run finishes it).

    Every batch's own partition is what makes a replayed micro-batch overwrite instead of
    duplicate; once committed it is never written again, so its rows can move. They keep their
    columns (``ingested_at``, ``ingest_run``); ``ingest_batch`` then reads the run's last batch id,
    still below every later batch's (ingest's duplicate check reads the batches before its own).
    ``min_batches`` 0: never. ``options``: the table's Parquet writer options."""
    from pyspark.sql import functions as F

    if min_batches <= 0:
        return []
    if target_bytes < 1:
        raise JobError(f"the merged partition size must be at least 1 byte, got {target_bytes}")
    finish_interrupted(spark, table)
    folders = batch_folders(spark, table)
    merges = []
    for run in plan_merges(
        folders, up_to_batch=up_to_batch, min_batches=max(2, min_batches), target_bytes=target_bytes
    ):
        into = f"{BATCH_PREFIX}{run[-1]}"
        names = [name for batch in run for name, _ in folders[batch]]
        total = sum(size for batch in run for _, size in folders[batch])
        rows = (
            spark.read.option("basePath", table)
            .option("mergeSchema", "true")
            .parquet(*[f"{table}/{BATCH_PREFIX}{batch}" for batch in run])
            .where(F.col("_metadata.file_name").isin(names))
            .drop("ingest_batch")
        )
        journal = stage_swap(
            spark,
            table,
            into,
            [name for name, _ in folders[run[-1]]],
            _in_files(rows, total, target_bytes),
            old_elsewhere=[f"{BATCH_PREFIX}{batch}/{name}" for batch in run[:-1] for name, _ in folders[batch]],
            options=options,
        )
        entry = roll_forward(spark, table, journal)
        if entry is None:
            raise JobError(f"the journal {table}/{journal} of this merge vanished: another job deleted it")
        merges.append(
            BatchMerge(
                into=into, batches=len(run), files_before=len(names), files_after=len(entry["new"]), bytes_before=total
            )
        )
        log.info(
            "merged %d ingest batches of %s (%.1f MB, %d files) into %s", len(run), table, total / 1e6, len(names), into
        )
    return merges
