"""Ingest: load the files that arrived in the landing folder into the ``images`` table, once.

The landing folder is read with Spark's ``binaryFile`` source as a stream with
``trigger(availableNow=True)`` and a checkpoint, so each run takes exactly the files that
arrived since the previous run. Every file is checked with Pillow at the door: readable images
go to ``images``, the rest to ``rejects`` with a reason a person can act on.

Each micro-batch is written into its own ``ingest_batch=<id>`` partition with overwrite, so a
micro-batch that Spark replays after a crash replaces what it wrote instead of duplicating it.

    spark-submit spark_jobs/ingest.py --home var --landing var/landing
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spark_jobs.contract import RescorePaths, default_home
from spark_jobs.session import JobError, get_spark, path_exists, read_table, run_main

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("rescore.ingest")

#: Schema of ``warehouse/images``: one row per accepted file, partitioned by ``ingest_batch``
#: (the stream's micro-batch id). ``content`` is null for files above ``max_file_bytes``:
#: scoring reads those from ``path``.
IMAGES_SCHEMA = (
    "image_id string, path string, size long, width int, height int, format string, mode string, "
    "content binary, ingested_at timestamp, ingest_run string"
)
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


@dataclass(frozen=True)
class ImageFacts:
    """What the door check learned about one file; ``reason`` is set when it is rejected."""

    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    reason: str | None = None


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFacts:
    """Open ``data`` with Pillow, reading the header (and checking completeness), not decoding it all.

    :param data: the file's bytes.
    :param max_pixels: more pixels than this is rejected as a decompression bomb.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return ImageFacts(reason="empty file (0 bytes): the upload was probably interrupted; land it again")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt, mode = img.format, img.mode
            if width * height > max_pixels:
                return ImageFacts(
                    width,
                    height,
                    fmt,
                    mode,
                    reason=f"decompression bomb: {width}x{height} = {width * height} pixels is more than "
                    f"max_pixels={max_pixels}; raise --max-pixels if this image is genuine",
                )
            if fmt == "JPEG":
                # The header is enough to accept a JPEG, but a cut-off upload lacks the end marker.
                if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    return ImageFacts(
                        width,
                        height,
                        fmt,
                        mode,
                        reason="truncated JPEG: the end-of-image marker is "
                        "missing; the file was cut off, land it again",
                    )
            else:
                img.verify()  # walks chunks/structures (CRC for PNG) without decoding pixels
    except UnidentifiedImageError:
        return ImageFacts(
            reason="not an image: Pillow does not recognise the format; remove it from the landing "
            "folder or convert it to JPEG/PNG"
        )
    except Image.DecompressionBombError as exc:
        return ImageFacts(reason=f"decompression bomb: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return ImageFacts(reason=f"truncated or corrupt image: {exc}; land the file again")
    return ImageFacts(width, height, fmt, mode)


def _inspect_batches(max_pixels: int, max_file_bytes: int):  # type: ignore[no-untyped-def]
    """A ``mapInPandas`` function that runs the door check on every file of a batch."""

    def inspect(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import hashlib

        import pandas as pd

        for batch in batches:
            rows = []
            for path, size, content in zip(batch["path"], batch["length"], batch["content"], strict=True):
                data = bytes(content) if content is not None else b""
                facts = inspect_image(data, max_pixels=max_pixels)
                keep_bytes = facts.reason is None and len(data) <= max_file_bytes
                rows.append(
                    {
                        "path": path,
                        "size": int(size),
                        "image_id": hashlib.sha256(data).hexdigest() if facts.reason is None else None,
                        "width": facts.width,
                        "height": facts.height,
                        "format": facts.format,
                        "mode": facts.mode,
                        "reason": facts.reason,
                        "content": data if keep_bytes else None,
                    }
                )
            yield pd.DataFrame(rows, columns=[c.split()[0] for c in INSPECTED_SCHEMA.split(", ")])

    return inspect


def inspect_files(
    files: DataFrame, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> DataFrame:
    """Door check of a ``binaryFile`` DataFrame (path, modificationTime, length, content).

    Returns :data:`INSPECTED_SCHEMA`: one row per file, ``reason`` null for accepted images.
    """
    return files.select("path", "length", "content").mapInPandas(
        _inspect_batches(max_pixels, max_file_bytes), INSPECTED_SCHEMA
    )


def split_inspected(inspected: DataFrame, *, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Split door-check results into rows for ``images`` and rows for ``rejects``."""
    from pyspark.sql import functions as F

    stamped = inspected.withColumn("ingested_at", F.current_timestamp()).withColumn("ingest_run", F.lit(run_id))
    images = stamped.where(F.col("reason").isNull()).select(*[c.split()[0] for c in IMAGES_SCHEMA.split(", ")])
    rejects = stamped.where(F.col("reason").isNotNull()).select(*[c.split()[0] for c in REJECTS_SCHEMA.split(", ")])
    return images, rejects


@dataclass
class IngestCounts:
    """Reconciliation of one run: ``seen == accepted + rejected + duplicates``."""

    seen: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0

    def add(self, other: IngestCounts) -> None:
        self.seen += other.seen
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.duplicates += other.duplicates

    @property
    def reconciles(self) -> bool:
        return self.seen == self.accepted + self.rejected + self.duplicates


def _read_existing_ids(spark: SparkSession, images_path: str, before_batch: int) -> DataFrame | None:
    from pyspark.sql import functions as F

    existing = read_table(spark, images_path)
    if existing is None:
        return None
    return existing.where(F.col("ingest_batch") < before_batch).select("image_id").distinct()


def write_batch(
    spark: SparkSession,
    files: DataFrame,
    batch_id: int,
    *,
    paths: RescorePaths,
    run_id: str,
    max_pixels: int,
    max_file_bytes: int,
) -> IngestCounts:
    """Check and store one micro-batch; idempotent for a given ``batch_id``."""
    from pyspark.sql import functions as F

    inspected = inspect_files(files, max_pixels=max_pixels, max_file_bytes=max_file_bytes).persist()
    try:
        images, rejects = split_inspected(inspected, run_id=run_id)
        images.write.mode("overwrite").parquet(f"{paths.images}/ingest_batch={batch_id}")
        rejects.write.mode("overwrite").parquet(f"{paths.rejects}/ingest_batch={batch_id}")
        seen = inspected.count()
        rejected = inspected.where(F.col("reason").isNotNull()).count()
        ids = inspected.where(F.col("reason").isNull()).select("image_id")
        existing = _read_existing_ids(spark, paths.images, batch_id)
        if existing is not None:
            ids = ids.join(existing, "image_id", "left_anti")
        accepted = ids.distinct().count()
        counts = IngestCounts(seen=seen, accepted=accepted, rejected=rejected, duplicates=seen - rejected - accepted)
    finally:
        inspected.unpersist()
    log.info(
        "batch %d: %d files seen = %d accepted + %d rejected + %d duplicates",
        batch_id,
        counts.seen,
        counts.accepted,
        counts.rejected,
        counts.duplicates,
    )
    return counts


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
    max_files_per_batch: int = 10_000,
) -> IngestCounts:
    """Take every file that arrived in ``landing`` since the last run (per ``checkpoint``)."""
    reader = (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILE_SCHEMA)
        .option("maxFilesPerTrigger", max_files_per_batch)
    )
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    if path_glob:
        reader = reader.option("pathGlobFilter", path_glob)
    stream = reader.load(landing)
    total = IngestCounts()

    def each_batch(files: DataFrame, batch_id: int) -> None:
        total.add(
            write_batch(
                spark, files, batch_id, paths=paths, run_id=run_id, max_pixels=max_pixels, max_file_bytes=max_file_bytes
            )
        )

    query = (
        stream.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingest", description="Load newly landed files into the images table.")
    parser.add_argument("--home", default=default_home(), help="RESCORE_HOME: root of tables and checkpoints")
    parser.add_argument("--landing", default=None, help="folder or Hadoop URI to read (default: <home>/landing)")
    parser.add_argument("--checkpoint", default=None, help="stream checkpoint (default: <home>/checkpoints/ingest)")
    parser.add_argument("--run-id", default="manual", help="Airflow run id recorded on every row")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    parser.add_argument("--path-glob", default=None, help="only files whose name matches, e.g. '*.jpg'")
    parser.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    return parser.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    paths = RescorePaths(args.home)
    landing = args.landing or paths.landing
    spark = get_spark("rescore-ingest")
    if not path_exists(spark, landing):
        raise JobError(f"landing folder {landing} does not exist: create it, or pass --landing with the right path")
    started = time.perf_counter()
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
    )
    elapsed = time.perf_counter() - started
    if counts.seen == 0:
        log.info("no new files in %s since the last run", landing)
    log.info(
        "ingest done in %.1f s: %d files seen = %d accepted + %d rejected + %d duplicates (%s)",
        elapsed,
        counts.seen,
        counts.accepted,
        counts.rejected,
        counts.duplicates,
        "reconciled" if counts.reconciles else "DOES NOT RECONCILE",
    )
    return 0 if counts.reconciles else 1


def main(argv: list[str] | None = None) -> int:
    return run_main("ingest", _main, argv)


if __name__ == "__main__":
    # Re-enter through the package so functions shipped to executors pickle by reference.
    from spark_jobs.ingest import main as package_main

    raise SystemExit(package_main())
