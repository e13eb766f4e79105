"""Ingest: load the files that arrived in the landing folder into the ``images`` table, once.

The landing folder (a local folder or any Hadoop URI) is read with Spark's ``binaryFile`` source
as a stream with ``trigger(availableNow=True)`` and a checkpoint, so each run takes exactly the
files that arrived since the previous run; files that land while a run is in progress are left
for the next one. Every file is checked with Pillow at the door (header and structure, not a full
decode): readable images go to ``images``, the rest to ``rejects`` with a reason a person can act on.

Exactly once: each micro-batch is written into its own ``ingest_batch=<id>`` partition with
overwrite, and every value written is a function of the batch's files and its planned batch time
(``ingested_at`` is Spark's batch timestamp, kept in the checkpoint). A micro-batch that Spark
replays after a crash (partition written, checkpoint not yet committed) therefore rewrites the
same rows instead of duplicating them.

Identity: ``image_id`` is the sha256 of the bytes. ``images`` holds one row per distinct image
(the first path seen: smallest path within the batch that first saw it); ``image_paths`` holds one
row per accepted file, so an image landed under two names is scored once and both paths are kept.

``--source parquet|csv|json|tfrecord`` loads record tables instead (see :mod:`spark_jobs.records`).

    spark-submit spark_jobs/ingest.py --home var --landing var/landing
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from spark_jobs.compaction import MERGE_BATCHES, BatchMerge, finish_interrupted, merge_batches
from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.session import (
    CACHED_PLAN_COALESCING,
    LISTING_TASKS,
    OPEN_COST,
    SMALL_FILE_OPEN_COST,
    JobError,
    get_spark,
    list_files,
    listing_tasks,
    path_exists,
    read_table,
    run_main,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("rescore.ingest")

#: Schema of ``warehouse/images``: one row per distinct image (``image_id`` unique over the table),
#: partitioned by ``ingest_batch`` (the stream's micro-batch id). ``path`` is the first path the
#: image was seen under (all of them are in ``image_paths``). ``width``/``height`` are as displayed
#: (EXIF orientation applied). ``content`` is null for files above ``max_file_bytes``: scoring reads
#: those from ``path``. ``ingested_at`` is the micro-batch's planned time, stable across retries.
IMAGES_SCHEMA = (
    "image_id string, path string, size long, width int, height int, format string, mode string, "
    "content binary, ingested_at timestamp, ingest_run string"
)
#: Schema of ``warehouse/image_paths``: one row per accepted file (duplicates included), partitioned
#: by ``ingest_batch``. Join on ``image_id`` to find every name an image was landed under.
IMAGE_PATHS_SCHEMA = "image_id string, path string, size long, ingested_at timestamp, ingest_run string"
#: Schema of ``warehouse/rejects``: one row per file that could not be read, partitioned like images.
REJECTS_SCHEMA = "path string, size long, reason string, ingested_at timestamp, ingest_run string"

#: What the door check computes for each file.
INSPECTED_SCHEMA = (
    "path string, size long, image_id string, width int, height int, format string, mode string, "
    "reason string, content binary"
)

#: The fixed schema of Spark's ``binaryFile`` source (streams need it spelled out).
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_FILES_PER_BATCH = 10_000
#: Parquet row group size of the images table. Spark splits a scan at row groups, and scoring reads
#: the table without a shuffle: a 64 MB file of one row group would be scored by one task, however
#: many GPUs wait. The writer checks the size from the 4th row on (Parquet's default is the 100th:
#: 300 MB of 3 MB photos before its first check).
IMAGES_ROW_GROUP_BYTES = 8 * 1024 * 1024
#: Spark's file source forgets files whose modification time is older than the newest seen minus this
#: age; a generous default keeps files copied with an old timestamp (``cp -p``) from being skipped.
DEFAULT_MAX_FILE_AGE = "3650d"
#: Formats the scoring side decodes; anything else Pillow recognises is rejected as unsupported.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "TIFF", "BMP"})
#: How every reject reason ends: the file stream never reads a path it has taken again, so a fixed
#: file landed under the same name is silently ignored.
RELAND = "land it again under a new name (a path already taken is never read again)"
#: The reason of a file the stream took that was gone when its batch read it.
VANISHED = f"vanished: the file was deleted or renamed after it landed; {RELAND}"
#: Formats whose pixels the door check decodes (their verify() does not catch a cut-off file).
_FULLY_LOADED = frozenset({"BMP", "GIF", "TIFF"})
_EXIF_ORIENTATION = 0x0112
_HASH_CHUNK = 1 << 20

_COLUMNS = {
    name: [c.split()[0] for c in schema.split(", ")]
    for name, schema in (("images", IMAGES_SCHEMA), ("image_paths", IMAGE_PATHS_SCHEMA), ("rejects", REJECTS_SCHEMA))
}


@dataclass(frozen=True)
class ImageFacts:
    """What the door check learned about one file; ``reason`` is set when it is rejected."""

    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    reason: str | None = None


#: In a JPEG's entropy-coded data 0xFF is followed by 0x00 (stuffing), RST0-7 or more 0xFF fill bytes;
#: any other byte after 0xFF is the next marker.
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _scan_end(stream: IO[bytes]) -> int | None:
    """The offset of the marker that ends the entropy-coded data starting here; None if the file ends first."""
    offset, carry = stream.tell(), b""
    while chunk := stream.read(_HASH_CHUNK):
        data = carry + chunk
        found = _JPEG_MARKER_IN_SCAN.search(data)
        if found is not None:
            return offset + found.start()
        carry = data[-1:] if data.endswith(b"\xff") else b""  # a marker may straddle two chunks
        offset += len(data) - len(carry)
    return None


def _ends_jpeg_image(stream: IO[bytes]) -> bool:
    """Whether the JPEG's marker segments and scans run to an end-of-image marker.

    The segments are walked by their lengths (an EXIF thumbnail's own end marker inside APP1 is
    skipped), so data after the end marker (motion photos, camera trailers) is allowed and a file
    cut off anywhere before it is not.
    """
    stream.seek(0)
    if stream.read(2) != b"\xff\xd8":
        return False
    while True:
        if stream.read(1) != b"\xff":
            return False
        marker = stream.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = stream.read(1)
        if not marker:
            return False
        code = marker[0]
        if code == 0xD9:  # EOI
            return True
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # markers without a length
            continue
        length = stream.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            return False
        stream.seek(int.from_bytes(length, "big") - 2, io.SEEK_CUR)
        if code == 0xDA:  # SOS: entropy-coded data up to the next marker
            end = _scan_end(stream)
            if end is None:
                return False
            stream.seek(end)


def inspect_image(source: bytes | IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFacts:
    """Open an image with Pillow, reading the header and checking completeness, not decoding it all.

    :param source: the file's bytes, or a seekable binary file (large files are never read whole).
    :param max_pixels: more pixels than this is rejected as a decompression bomb.
    """
    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    stream.seek(0, io.SEEK_END)
    if stream.tell() == 0:
        return ImageFacts(reason=f"empty file (0 bytes): the upload was probably interrupted; {RELAND}")
    stream.seek(0)
    default_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow itself refuses only above twice this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                width, height = img.size
                fmt, mode = img.format, img.mode
                if fmt not in SUPPORTED_FORMATS:
                    return ImageFacts(
                        width,
                        height,
                        fmt,
                        mode,
                        reason=f"unsupported format {fmt}: scoring reads {', '.join(sorted(SUPPORTED_FORMATS))}; "
                        f"convert the file to PNG or JPEG and {RELAND}",
                    )
                if width * height > max_pixels:
                    return ImageFacts(
                        width,
                        height,
                        fmt,
                        mode,
                        reason=f"decompression bomb: {width}x{height} = {width * height} pixels is more than "
                        f"max_pixels={max_pixels}; if this image is genuine, raise --max-pixels and {RELAND}",
                    )
                # The header is enough to accept a JPEG, but a cut-off upload lacks the end marker.
                if fmt in ("JPEG", "MPO") and not _ends_jpeg_image(stream):
                    return ImageFacts(
                        width,
                        height,
                        fmt,
                        mode,
                        reason=f"truncated JPEG: the end-of-image marker is missing; the file was cut off, {RELAND}",
                    )
                if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                    width, height = height, width  # stored sideways: record the size as displayed
            if fmt not in ("JPEG", "MPO"):
                stream.seek(0)  # verify() must come straight after open; reading EXIF above moved on
                with Image.open(stream) as fresh:
                    fresh.verify()  # walks chunks/structures (CRC for PNG) without decoding pixels
            if fmt in _FULLY_LOADED:
                # verify() does not read these formats' pixel data, so a cut-off file would pass and
                # only fail at scoring's decode; the pixel count is bounded by max_pixels above.
                stream.seek(0)
                with Image.open(stream) as whole:
                    whole.load()  # the first frame of an animated GIF, the one scoring reads
    except UnidentifiedImageError:
        return ImageFacts(
            reason="not an image: Pillow does not recognise the format; remove it from the landing "
            f"folder, or convert it to JPEG/PNG and {RELAND}"
        )
    except Image.DecompressionBombError as exc:
        return ImageFacts(
            reason=f"decompression bomb: {exc}; if this image is genuine, raise --max-pixels and {RELAND}"
        )
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return ImageFacts(reason=f"truncated or corrupt image: {exc}; {RELAND}")
    except Exception as exc:  # a hostile file must become a reject, never a failed ingest
        return ImageFacts(reason=f"corrupt image ({type(exc).__name__}: {exc}); {RELAND}")
    finally:
        Image.MAX_IMAGE_PIXELS = default_limit
    return ImageFacts(width, height, fmt, mode)


def local_path(path: str) -> str | None:
    """The local file behind a ``file:`` URI (or a plain path), None for other schemes."""
    if path.startswith("file://"):
        return path[len("file://") :]
    if path.startswith("file:"):
        return path[len("file:") :]
    if "://" in path or ":/" in path.split("/", 1)[0] + "/":
        return None
    return path


def _open_landed(path: str) -> IO[bytes]:
    return open(path, "rb")


def _sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    stream.seek(0)
    for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def inspect_file(
    path: str, size: int, content: bytes | None, *, max_pixels: int, max_file_bytes: int
) -> dict[str, Any]:
    """Door check of one landed file: a row of :data:`INSPECTED_SCHEMA`.

    :param path: the file's URI as the ``binaryFile`` source lists it.
    :param size: its length in bytes.
    :param content: its bytes when Spark read them (non-local landing); None to read a local file here,
        which turns a permission problem into a reject instead of a failed job and never loads a file
        above ``max_file_bytes`` whole.
    """
    row: dict[str, Any] = {"path": path, "size": int(size)}
    if content is not None:
        facts = inspect_image(content, max_pixels=max_pixels)
        image_id = hashlib.sha256(content).hexdigest() if facts.reason is None else None
        kept = content if size <= max_file_bytes else None
    else:
        local = local_path(path)
        try:
            if local is None:
                raise OSError(f"{path} is not a local file and its bytes were not read")
            with _open_landed(local) as fh:
                if size <= max_file_bytes:
                    data = fh.read()
                    facts = inspect_image(data, max_pixels=max_pixels)
                    image_id = hashlib.sha256(data).hexdigest() if facts.reason is None else None
                    kept = data
                else:
                    facts = inspect_image(fh, max_pixels=max_pixels)
                    image_id = _sha256(fh) if facts.reason is None else None
                    kept = None
        except PermissionError as exc:
            facts = ImageFacts(
                reason=f"unreadable: permission denied ({exc.strerror}); give the ingest user read access and {RELAND}"
            )
            image_id, kept = None, None
        except FileNotFoundError:
            facts = ImageFacts(reason=VANISHED)
            image_id, kept = None, None
    row.update(
        image_id=image_id,
        width=facts.width,
        height=facts.height,
        format=facts.format,
        mode=facts.mode,
        reason=facts.reason,
        content=kept if facts.reason is None else None,
    )
    return row


def _inspect_batches(
    max_pixels: int, max_file_bytes: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function that runs the door check on every file of a batch."""

    def inspect(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        columns = [c.split()[0] for c in INSPECTED_SCHEMA.split(", ")]
        for batch in batches:
            contents = batch["content"] if "content" in batch else [None] * len(batch)
            rows = [
                inspect_file(
                    path,
                    size,
                    bytes(content) if content is not None else None,
                    max_pixels=max_pixels,
                    max_file_bytes=max_file_bytes,
                )
                for path, size, content in zip(batch["path"], batch["length"], contents, strict=True)
            ]
            yield pd.DataFrame(rows, columns=columns)

    return inspect


def inspect_files(
    files: DataFrame,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    read_locally: bool = True,
) -> DataFrame:
    """Door check of a ``binaryFile`` DataFrame (path, length[, content]).

    :param read_locally: read each file in Python (local landing folders); else use Spark's ``content``.
    Returns :data:`INSPECTED_SCHEMA`: one row per file, ``reason`` null for accepted images.
    """
    columns = ["path", "length"] if read_locally else ["path", "length", "content"]
    return files.select(*columns).mapInPandas(_inspect_batches(max_pixels, max_file_bytes), INSPECTED_SCHEMA)


@dataclass
class IngestCounts:
    """Reconciliation of one run: ``seen == accepted + rejected + duplicates``.

    ``skipped`` counts files older than ``--modified-after``: consumed, deliberately not ingested.
    """

    seen: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: int = 0

    def add(self, other: IngestCounts) -> None:
        self.seen += other.seen
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.duplicates += other.duplicates
        self.skipped += other.skipped

    @property
    def reconciles(self) -> bool:
        return self.seen == self.accepted + self.rejected + self.duplicates

    def summary(self) -> str:
        return (
            f"{self.seen} files seen = {self.accepted} accepted + {self.rejected} rejected + "
            f"{self.duplicates} duplicates ({'reconciled' if self.reconciles else 'DOES NOT RECONCILE'})"
            + (f"; {self.skipped} older than --modified-after skipped" if self.skipped else "")
        )


def _existing_ids(spark: SparkSession, images_path: str, before_batch: int) -> DataFrame | None:
    from pyspark.sql import functions as F

    existing = read_table(spark, images_path)
    if existing is None:
        return None
    return existing.where(F.col("ingest_batch").cast("long") < before_batch).select("image_id")


def first_sightings(accepted: DataFrame, known_ids: DataFrame | None) -> DataFrame:
    """One row per image not in ``known_ids``: the one with the smallest path (deterministic on replay)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    new = accepted
    if known_ids is not None:
        # A batch holds at most --max-files-per-batch files; the table grows without bound. An anti
        # join of the batch against the table's ids builds its hash table on the table side, so past
        # Spark's broadcast threshold (~150,000 ids) every batch shuffled every id in the table.
        # Broadcast the batch's ids to a scan of the table instead: the table's ids are read, never
        # shuffled, and what is left to join is the batch's own size.
        batch_ids = F.broadcast(accepted.select("image_id").distinct())
        seen = known_ids.join(batch_ids, "image_id", "left_semi")
        new = accepted.join(F.broadcast(seen), "image_id", "left_anti")
    first = Window.partitionBy("image_id").orderBy("path")
    return new.withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1).drop("_n")


def _read_lines(spark: SparkSession, path: str) -> list[str] | None:
    """The lines of a small text file through Hadoop's FileSystem, None when it does not exist."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hadoop_path):
        return None
    stream = fs.open(hadoop_path)
    try:
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
        lines = []
        line = reader.readLine()
        while line is not None:
            lines.append(str(line))
            line = reader.readLine()
        return lines
    finally:
        stream.close()


def uri_to_listed(uri: str) -> str:
    """A source-log path (``file:///a%20b.jpg``) spelled as the ``binaryFile`` column has it (``file:/a b.jpg``)."""
    from urllib.parse import unquote

    text = unquote(uri)
    return "file:/" + text[len("file:///") :] if text.startswith("file:///") else text


@dataclass(frozen=True)
class BatchPlan:
    """What the checkpoint says a micro-batch holds: its planned time and every file it took."""

    batch_time: datetime
    files: dict[str, int]  # path as binaryFile lists it -> modification time (ms)

    def unread(self, read: set[str], modified_after_ms: int | None = None) -> tuple[list[str], int]:
        """The planned files missing from ``read`` (spelled as ``binaryFile`` lists them), sorted,
        and how many more were missing because they were modified at or before ``modified_after_ms``
        (skipped on purpose)."""
        unread, skipped = [], 0
        for path, modified_ms in sorted(self.files.items()):
            if path in read:
                continue
            if modified_after_ms is not None and modified_ms <= modified_after_ms:
                skipped += 1
            else:
                unread.append(path)
        return unread, skipped


def planned_batch(spark: SparkSession, checkpoint: str, batch_id: int) -> BatchPlan | None:
    """Read a micro-batch's offset and file-source log entries from the checkpoint."""
    import json
    from datetime import UTC

    offsets = _read_lines(spark, f"{checkpoint}/offsets/{batch_id}")
    if offsets is None or len(offsets) < 3:
        return None
    batch_time = datetime.fromtimestamp(json.loads(offsets[1])["batchTimestampMs"] / 1000, tz=UTC)
    log_offset = int(json.loads(offsets[2])["logOffset"])
    entries = _read_lines(spark, f"{checkpoint}/sources/0/{log_offset}")
    if entries is None:
        entries = _read_lines(spark, f"{checkpoint}/sources/0/{log_offset}.compact") or []
    files = {}
    for line in entries[1:]:
        entry = json.loads(line)
        if int(entry["batchId"]) == log_offset:
            files[uri_to_listed(entry["path"])] = int(entry["timestamp"])
    return BatchPlan(batch_time, files)


def _reason_not_read(path: str) -> str:
    local = local_path(path)
    if local is not None and not os.path.exists(local):
        return VANISHED
    return f"empty file (0 bytes): the upload was probably interrupted; {RELAND}"


def write_batch(
    spark: SparkSession,
    files: DataFrame,
    batch_id: int,
    *,
    paths: RescorePaths,
    run_id: str,
    max_pixels: int,
    max_file_bytes: int,
    read_locally: bool = True,
    modified_after: datetime | None = None,
    checkpoint: str | None = None,
) -> IngestCounts:
    """Check and store one micro-batch; idempotent for a given ``batch_id``.

    ``files`` is the stream's batch plus ``batch_time`` (the batch's planned timestamp). With the
    ``checkpoint``, files the stream took but Spark's reader left out (it skips zero-byte files) are
    found from the checkpoint's file log and rejected too, so every file taken is accounted for.
    """
    from pyspark.sql import functions as F

    skipped = 0
    not_read: list[tuple[str, int, str, datetime, str]] = []
    plan = planned_batch(spark, checkpoint, batch_id) if checkpoint else None
    if plan is not None or modified_after is not None:
        # Compared as epoch milliseconds: --modified-after may carry a UTC offset (Airflow's {{ ts }}).
        cutoff = epoch_ms(modified_after) if modified_after is not None else None
        modified_ms = F.unix_millis("modificationTime")
        listing = files.select("path", modified_ms.alias("modified_ms")).collect()  # one pass over the listing
        if cutoff is not None:
            skipped = sum(1 for r in listing if r.modified_ms <= cutoff)
            files = files.where(modified_ms > F.lit(cutoff))
        if plan is not None:
            unread, old = plan.unread({r.path for r in listing}, cutoff)
            skipped += old
            not_read = [(path, 0, _reason_not_read(path), plan.batch_time, run_id) for path in unread]
    checked = inspect_files(files, max_pixels=max_pixels, max_file_bytes=max_file_bytes, read_locally=read_locally)
    if plan is not None:
        # The checkpoint's batch time is the value current_timestamp() has in the stream: no join needed.
        checked = checked.withColumn("ingested_at", F.lit(plan.batch_time).cast("timestamp"))
    else:
        checked = checked.join(files.select("path", "batch_time"), "path").withColumn(
            "ingested_at", F.col("batch_time")
        )
    inspected = checked.withColumn("ingest_run", F.lit(run_id)).persist()
    try:
        accepted = inspected.where(F.col("reason").isNull())
        images = first_sightings(accepted, _existing_ids(spark, paths.images, batch_id)).select(*_COLUMNS["images"])
        # Materialised before this batch's partition is (re)written, as it reads the same table.
        images = images.persist()
        accepted_count = images.count()
        images.write.mode("overwrite").options(**images_writer_options()).parquet(
            f"{paths.images}/ingest_batch={batch_id}"
        )
        images.unpersist()
        accepted.select(*_COLUMNS["image_paths"]).write.mode("overwrite").parquet(
            f"{paths.image_paths}/ingest_batch={batch_id}"
        )
        rejects = inspected.where(F.col("reason").isNotNull()).select(*_COLUMNS["rejects"])
        if not_read:
            rejects = rejects.unionByName(spark.createDataFrame(not_read, REJECTS_SCHEMA))
        rejects.write.mode("overwrite").parquet(f"{paths.rejects}/ingest_batch={batch_id}")
        seen = inspected.count() + len(not_read)
        rejected = inspected.where(F.col("reason").isNotNull()).count() + len(not_read)
    finally:
        inspected.unpersist()
    counts = IngestCounts(
        seen=seen,
        accepted=accepted_count,
        rejected=rejected,
        duplicates=seen - rejected - accepted_count,
        skipped=skipped,
    )
    log.info("batch %d: %s", batch_id, counts.summary())
    return counts


def is_local(uri: str) -> bool:
    """Whether a landing folder is on this machine's file system (no scheme, or ``file:``)."""
    return local_path(uri) is not None


def check_checkpoint(spark: SparkSession, checkpoint: str, paths: RescorePaths, *, table: str | None = None) -> None:
    """Refuse a checkpoint that cannot be used, or a missing one when the table already holds data.

    :param table: the table the stream writes (default ``images``).

    Without its checkpoint the stream would take every landed file again and start at batch 0,
    overwriting the first partitions: that is data loss, never a silent restart.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = jvm.org.apache.hadoop.fs.Path(checkpoint)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if fs.exists(hadoop_path):
        if not fs.getFileStatus(hadoop_path).isDirectory():
            raise JobError(
                f"checkpoint {checkpoint} is a file, not a folder: pass --checkpoint with the folder ingest "
                "wrote before, or move the file away"
            )
        try:
            fs.listStatus(hadoop_path)
            metadata = jvm.org.apache.hadoop.fs.Path(f"{checkpoint}/metadata")
            if fs.exists(metadata):
                stream = fs.open(metadata)
                try:
                    first = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream)).readLine()
                finally:
                    stream.close()
                if not first or '"id"' not in str(first):
                    raise JobError(
                        f"checkpoint {checkpoint} is unreadable: its metadata file is damaged; restore the "
                        "checkpoint folder from a backup (it records which files were already taken)"
                    )
        except JobError:
            raise
        except Exception as exc:
            raise JobError(
                f"checkpoint {checkpoint} is unreadable ({str(exc).splitlines()[0]}): give the ingest user read "
                "and write access to it, or restore it from a backup"
            ) from exc
        offsets = jvm.org.apache.hadoop.fs.Path(f"{checkpoint}/offsets")
        if fs.exists(offsets) and len(fs.listStatus(offsets)) > 0:
            return
    target = table or paths.images
    written = read_table(spark, target)
    if written is not None and written.limit(1).count() > 0:
        tables = f"{target} (and its rejects)" if table else f"{paths.images}, {paths.image_paths} and {paths.rejects}"
        raise JobError(
            f"checkpoint {checkpoint} is missing (or empty) but the table {target} already holds "
            "data: a new checkpoint would take every landed file again and overwrite the first batches. "
            "Restore the checkpoint folder (or pass --checkpoint with where it is); to start over on purpose, "
            f"move {tables} away first"
        )


def ingest_landing(
    spark: SparkSession,
    *,
    paths: RescorePaths,
    landing: str,
    checkpoint: str,
    run_id: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    path_glob: str | None = None,
    recursive: bool = True,
    modified_after: datetime | None = None,
    max_files_per_batch: int = DEFAULT_MAX_FILES_PER_BATCH,
    max_file_age: str = DEFAULT_MAX_FILE_AGE,
    merge_min_batches: int = MERGE_BATCHES,
    after_batch_written: Callable[[int], None] | None = None,
) -> IngestCounts:
    """Take every file that arrived in ``landing`` since the last run (per ``checkpoint``).

    :param path_glob: only files whose name matches, e.g. ``*.jpg`` (Spark's ``pathGlobFilter``).
    :param recursive: descend into sub-folders.
    :param modified_after: files modified at or before this time are consumed but not ingested
        (counted as skipped); Spark's ``modifiedAfter`` option is not allowed on streams.
    :param merge_min_batches: once the stream has committed its batches, runs of this many small
        consecutive batch partitions are merged (:func:`merge_ingested_batches`; 0: never).
    :param after_batch_written: called with the batch id once its tables are written and before the
        checkpoint commits it (tests use it to land files mid-run or to simulate a crash).
    """
    from pyspark.errors import StreamingQueryException
    from pyspark.sql import functions as F

    check_checkpoint(spark, checkpoint, paths)
    for table in (paths.images, paths.image_paths, paths.rejects):
        finish_interrupted(spark, table)  # a merge killed half way must not leave rows twice
    # Each micro-batch lists its files as separate paths; Spark's default turns that into one
    # listing task per file (thousands of tasks). A few tasks do the same work.
    spark.conf.set(LISTING_TASKS, str(listing_tasks(spark)))
    # Images are small: Spark's 4 MB per-file open cost would split 2,000 files into ~60 tiny tasks.
    spark.conf.set(OPEN_COST, str(SMALL_FILE_OPEN_COST))
    # A batch's de-duplicated images are cached (they are counted, then written) and a cached plan
    # keeps spark.sql.shuffle.partitions (200) unless adaptive execution may coalesce it: 100
    # images then ran 200-task stages and landed as ~80 files of one or two images each (600 images
    # in batches of 100: 487 files, 5 s per batch on 2 cores; with this, 6 files and 1.5 s).
    spark.conf.set(CACHED_PLAN_COALESCING, "true")
    reader = (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILE_SCHEMA)
        .option("maxFilesPerTrigger", max_files_per_batch)
        .option("maxFileAge", max_file_age)
    )
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    if path_glob:
        reader = reader.option("pathGlobFilter", path_glob)
    # In a stream, current_timestamp() is the micro-batch's planned time, recorded in the checkpoint's
    # offset log: a replayed batch gets the same value, so its rows are identical.
    stream = reader.load(landing).withColumn("batch_time", F.current_timestamp())
    read_locally = is_local(landing)
    total = IngestCounts()

    def each_batch(files: DataFrame, batch_id: int) -> None:
        total.add(
            write_batch(
                spark,
                files,
                batch_id,
                paths=paths,
                run_id=run_id,
                max_pixels=max_pixels,
                max_file_bytes=max_file_bytes,
                read_locally=read_locally,
                modified_after=modified_after,
                checkpoint=checkpoint,
            )
        )
        if after_batch_written is not None:
            after_batch_written(batch_id)

    query = (
        stream.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        message = str(exc)
        head = message.split("=== Streaming Query ===", maxsplit=1)[0]
        if "FOREACH_BATCH_USER_FUNCTION_ERROR" not in head and (
            checkpoint in head or any(word in head.lower() for word in ("malformed", "log file", "checkpoint"))
        ):
            raise JobError(
                f"checkpoint {checkpoint} is unreadable ({message.splitlines()[0]}): restore it from a backup"
            ) from exc
        raise
    merge_ingested_batches(spark, paths, checkpoint, min_batches=merge_min_batches)
    return total


def images_writer_options() -> dict[str, str]:
    """The images table's Parquet writer options: row groups of :data:`IMAGES_ROW_GROUP_BYTES`."""
    return {"parquet.block.size": str(IMAGES_ROW_GROUP_BYTES), "parquet.page.size.row.check.min": "4"}


def last_committed_batch(spark: SparkSession, checkpoint: str) -> int | None:
    """The id of the last micro-batch the stream's checkpoint has committed (its ``commits`` log)."""
    ids = [int(name) for name, _ in list_files(spark, f"{checkpoint}/commits") if name.isdigit()]
    return max(ids, default=None)


def merge_committed_batches(
    spark: SparkSession,
    checkpoint: str,
    tables: dict[str, dict[str, str] | None],
    *,
    min_batches: int = MERGE_BATCHES,
) -> list[BatchMerge]:
    """Merge runs of ``min_batches`` small consecutive batch partitions of each table (its Parquet
    writer options beside it) among the batches ``checkpoint`` has committed
    (:func:`spark_jobs.compaction.merge_batches`; docs/ingest.md, "Many ingest batches")."""
    up_to = last_committed_batch(spark, checkpoint)
    if up_to is None or min_batches <= 0:
        return []
    merges: list[BatchMerge] = []
    for table, options in tables.items():
        merges += merge_batches(spark, table, up_to_batch=up_to, min_batches=min_batches, options=options)
    return merges


def merge_ingested_batches(
    spark: SparkSession, paths: RescorePaths, checkpoint: str, *, min_batches: int = MERGE_BATCHES
) -> list[BatchMerge]:
    """:func:`merge_committed_batches` of ``images``, ``image_paths`` and ``rejects``."""
    tables = {paths.images: images_writer_options(), paths.image_paths: None, paths.rejects: None}
    return merge_committed_batches(spark, checkpoint, tables, min_batches=min_batches)


def epoch_ms(value: datetime) -> int:
    """A time as milliseconds since the epoch; a value without a UTC offset is this machine's local time."""
    return round(value.timestamp() * 1000)


def parse_timestamp(value: str) -> datetime:
    """``--modified-after`` as a datetime (ISO 8601, with or without a UTC offset such as ``Z``)."""
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise JobError(
            f"--modified-after {value!r} is not a timestamp: use ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00"
        ) from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from spark_jobs.records import SOURCES

    parser = argparse.ArgumentParser(prog="ingest", description="Load newly landed files into the images table.")
    parser.add_argument("--home", default=default_home(), help="RESCORE_HOME: root of tables and checkpoints")
    parser.add_argument("--landing", default=None, help="folder or Hadoop URI to read (default: <home>/landing)")
    parser.add_argument("--checkpoint", default=None, help="stream checkpoint (default: <home>/checkpoints/ingest)")
    parser.add_argument("--run-id", default="manual", help="Airflow run id recorded on every row")
    parser.add_argument(
        "--source",
        default="images",
        help=f"what the landing folder holds: one of {', '.join(SOURCES)} (default images)",
    )
    parser.add_argument("--name", default=None, help="table name under warehouse/records for record sources")
    parser.add_argument("--path-column", default=None, help="record sources: column holding an image path")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    parser.add_argument("--path-glob", default=None, help="only files whose name matches, e.g. '*.jpg'")
    parser.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    parser.add_argument("--modified-after", default=None, help="ignore files modified at or before this time")
    parser.add_argument(
        "--max-files-per-batch",
        type=int,
        default=DEFAULT_MAX_FILES_PER_BATCH,
        help="files per micro-batch (Spark's maxFilesPerTrigger; default %(default)s): a run takes every new "
        "file in as many batches as it needs, and the driver holds one batch's file listing at a time",
    )
    parser.add_argument(
        "--merge-batches",
        type=int,
        default=MERGE_BATCHES,
        help="after the run, merge each run of this many small consecutive ingest-batch partitions of the tables "
        "it writes into one (default %(default)s; 0: never): every batch writes its own partition, and a table "
        "of thousands of them is slow to read",
    )
    return parser.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    from spark_jobs.records import SOURCES, ingest_records

    args = parse_args(argv)
    if args.source not in SOURCES:
        raise JobError(f"unknown --source {args.source!r}: use one of {', '.join(SOURCES)}")
    for option, value in (
        ("--max-pixels", args.max_pixels),
        ("--max-file-bytes", args.max_file_bytes),
        ("--max-files-per-batch", args.max_files_per_batch),
    ):
        if value <= 0:
            raise JobError(f"{option} {value} must be a positive number")
    if args.merge_batches < 0:
        raise JobError(f"--merge-batches {args.merge_batches} must be 0 (never merge) or more")
    paths = RescorePaths(args.home)
    landing = args.landing or paths.landing
    modified_after = parse_timestamp(args.modified_after) if args.modified_after else None
    spark = get_spark("rescore-ingest")
    if not path_exists(spark, landing):
        raise JobError(f"landing folder {landing} does not exist: create it, or pass --landing with the right path")
    started = time.perf_counter()
    if args.source != "images":
        return ingest_records(
            spark,
            paths=paths,
            source=args.source,
            landing=landing,
            name=args.name,
            checkpoint=args.checkpoint,
            run_id=args.run_id,
            path_glob=args.path_glob,
            recursive=not args.no_recursive,
            path_column=args.path_column,
            modified_after=modified_after,
            max_files_per_batch=args.max_files_per_batch,
            merge_min_batches=args.merge_batches,
        )
    counts = ingest_landing(
        spark,
        paths=paths,
        landing=landing,
        checkpoint=args.checkpoint or f"{paths.checkpoints}/ingest",
        run_id=args.run_id,
        max_pixels=args.max_pixels,
        max_file_bytes=args.max_file_bytes,
        path_glob=args.path_glob,
        recursive=not args.no_recursive,
        modified_after=modified_after,
        max_files_per_batch=args.max_files_per_batch,
        merge_min_batches=args.merge_batches,
    )
    elapsed = time.perf_counter() - started
    if counts.seen == 0:
        log.info("no new files in %s since the last run", landing)
    log.info("ingest done in %.1f s: %s", elapsed, counts.summary())
    return 0 if counts.reconciles else 1


def main(argv: list[str] | None = None) -> int:
    return run_main("ingest", _main, argv)


if __name__ == "__main__":
    # Re-enter through the package so functions shipped to executors pickle by reference.
    from spark_jobs.ingest import main as package_main

    raise SystemExit(package_main())
