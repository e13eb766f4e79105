"""Ingest record tables: ``ingest --source parquet|csv|json|tfrecord`` into ``warehouse/records/<name>``.

Same guarantees as image ingest: the landing folder is a file stream with
``trigger(availableNow=True)`` and a checkpoint (``checkpoints/records-<name>``), each micro-batch
overwrites its own ``ingest_batch=<id>`` partition, and ``ingested_at`` is the batch's planned time,
so a retried run writes identical rows.

Every table gets, besides its own columns: ``source_path`` (the file the row came from),
``ingested_at``, ``ingest_run``. Column types are fixed by the first run (inferred from the files
then landed, CSV with a header row) and taken from the table itself afterwards.

TFRecord files of ``tf.train.Example`` are read without any JVM connector: the stream lists the
files, and ``mapInArrow`` parses each file in Python (record framing, CRC32C, the ``Example``
protobuf) into typed columns: one column per feature, ``long``/``float``/``string`` (``binary`` when
the bytes are not UTF-8), an array of them when any sampled record holds more or fewer than one
value, plus ``record_index`` (position in the file). A damaged file (bad length, CRC or protobuf)
is rejected whole into ``records/<name>_rejects`` (``ingest.REJECTS_SCHEMA``) and none of its
records are loaded, so landing a repaired copy never duplicates rows; so is a file with a record
that does not fit the columns (kind, value count, UTF-8 text).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from spark_jobs.compaction import MERGE_BATCHES, finish_interrupted
from spark_jobs.contract import RescorePaths
from spark_jobs.ingest import DEFAULT_MAX_FILES_PER_BATCH, RELAND, VANISHED, epoch_ms, local_path
from spark_jobs.session import LISTING_TASKS, JobError, listing_tasks, path_exists, read_table

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from spark_jobs.ingest import BatchPlan

log = logging.getLogger("rescore.ingest")

#: What ``--source`` accepts; ``images`` is the default image ingest.
SOURCES = ("images", "parquet", "csv", "json", "tfrecord")
#: Columns every record table gets on top of its own.
META_COLUMNS = ("source_path", "ingested_at", "ingest_run", "ingest_batch")
_SAMPLE_RECORDS = 200
_NUMERIC = ("byte", "short", "integer", "long", "float", "double", "decimal")

# ---------------------------------------------------------------------------- TFRecord framing

_CRC_TABLE: list[int] = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """A TFRecord file that is cut off or damaged."""


def iter_tfrecords(stream: IO[bytes], *, verify_crc: bool = True) -> Iterator[bytes]:
    """The records of a TFRecord file: ``uint64 length, uint32 crc(length), data, uint32 crc(data)``."""
    index = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordError(f"record {index}: file ends inside a record header (cut off)")
        length, length_crc = struct.unpack("<QI", header)
        if verify_crc and _masked_crc(header[:8]) != length_crc:
            raise TFRecordError(f"record {index}: length checksum mismatch (damaged file, or not TFRecord)")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordError(f"record {index}: file ends inside the record data (cut off)")
        if verify_crc and _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise TFRecordError(f"record {index}: data checksum mismatch (damaged file)")
        yield data
        index += 1


# ---------------------------------------------------------------------------- tf.train.Example protobuf


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("protobuf varint runs past the end of the message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise TFRecordError(f"protobuf wire type {wire} is not used by tf.train.Example")
        if pos > len(buf):
            raise TFRecordError("protobuf field runs past the end of the message")
        yield number, wire, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: bytes) -> tuple[str, list[Any]]:
    """Kind (``bytes``/``float``/``int64``) and values of one ``tf.train.Feature``."""
    for number, _, payload in _fields(feature):
        values: list[Any] = []
        if number == 1:  # BytesList: repeated bytes value = 1
            values = [v for n, _, v in _fields(payload) if n == 1]
            return "bytes", values
        if number == 2:  # FloatList: repeated float value = 1 (packed or not)
            for n, _, raw in _fields(payload):
                if n == 1:  # packed (length-delimited) or one fixed32: both are little-endian floats
                    values.extend(struct.unpack(f"<{len(raw) // 4}f", raw))
            return "float", values
        if number == 3:  # Int64List: repeated int64 value = 1 (packed or not)
            for n, wire, v in _fields(payload):
                if n != 1:
                    continue
                if wire == 0:
                    values.append(_int64(v))
                else:
                    pos = 0
                    while pos < len(v):
                        item, pos = _varint(v, pos)
                        values.append(_int64(item))
            return "int64", values
    return "empty", []


def parse_example(record: bytes) -> dict[str, tuple[str, list[Any]]]:
    """A serialized ``tf.train.Example`` as ``{feature name: (kind, values)}``."""
    features: dict[str, tuple[str, list[Any]]] = {}
    for number, _, payload in _fields(record):
        if number != 1:  # Example.features
            continue
        for entry_number, _, entry in _fields(payload):
            if entry_number != 1:  # Features.feature map entries
                continue
            key, value = "", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v.decode("utf-8")
                elif n == 2:
                    value = v
            features[key] = _feature_values(value)
    return features


@dataclass(frozen=True)
class FeatureColumn:
    """One typed column of a TFRecord table."""

    name: str
    kind: str  # long, float, string, binary
    is_list: bool

    @property
    def ddl(self) -> str:
        return f"`{self.name}` array<{self.kind}>" if self.is_list else f"`{self.name}` {self.kind}"


_KIND_OF = {"int64": "long", "float": "float", "bytes": "string"}


def infer_columns(examples: list[dict[str, tuple[str, list[Any]]]]) -> list[FeatureColumn]:
    """Column types from sampled examples (sorted by feature name)."""
    kinds: dict[str, str] = {}
    scalar: dict[str, bool] = {}
    for example in examples:
        for name, (kind, values) in example.items():
            if kind == "empty":
                continue
            column_kind = _KIND_OF[kind]
            if column_kind == "string" and not all(_is_utf8(v) for v in values):
                column_kind = "binary"
            previous = kinds.get(name)
            if previous is not None and previous != column_kind:
                if {previous, column_kind} == {"string", "binary"}:
                    column_kind = "binary"
                else:
                    raise JobError(
                        f"TFRecord feature {name!r} is {previous} in one record and {column_kind} in another"
                    )
            kinds[name] = column_kind
            scalar[name] = scalar.get(name, True) and len(values) == 1
    return [FeatureColumn(name, kinds[name], not scalar[name]) for name in sorted(kinds)]


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RecordMismatchError(ValueError):
    """A TFRecord record whose feature does not fit the table's column (fixed by the first run)."""


_FEATURE_KINDS = {"long": ("int64",), "float": ("float",), "string": ("bytes",), "binary": ("bytes",)}


def _column_value(column: FeatureColumn, feature: tuple[str, list[Any]] | None) -> Any:
    """The value of ``column`` in one record; :class:`RecordMismatchError` when it does not fit the column."""
    if feature is None or feature[0] == "empty":
        return None  # an absent feature (or one with no value list) is a null
    kind, values = feature
    if kind not in _FEATURE_KINDS[column.kind]:
        raise RecordMismatchError(f"feature {column.name!r} is a {kind} list but the column is {column.kind}")
    if not column.is_list and len(values) != 1:
        raise RecordMismatchError(
            f"feature {column.name!r} holds {len(values)} values but the column is a single {column.kind}"
        )
    if column.kind == "string":
        try:
            values = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError as exc:
            raise RecordMismatchError(
                f"feature {column.name!r} is not UTF-8 text ({exc.reason}) but the column is string"
            ) from exc
    return list(values) if column.is_list else values[0]


def _record_rows(
    path: str, size: int, examples: list[dict[str, tuple[str, list[Any]]]], columns: list[FeatureColumn]
) -> list[dict[str, Any]]:
    """One output row per record of a file; :class:`RecordMismatchError` (naming the record) if any does not fit."""
    rows = []
    for index, example in enumerate(examples):
        row: dict[str, Any] = {"source_path": path, "record_index": index, "size": size}
        for column in columns:
            try:
                row[column.name] = _column_value(column, example.get(column.name))
            except RecordMismatchError as exc:
                raise RecordMismatchError(f"record {index}: {exc}") from exc
        rows.append(row)
    return rows


def _arrow_type(column: FeatureColumn) -> pa.DataType:
    import pyarrow as pa

    base = {"long": pa.int64(), "float": pa.float32(), "string": pa.string(), "binary": pa.binary()}[column.kind]
    return pa.list_(base) if column.is_list else base


def tfrecord_output_schema(columns: list[FeatureColumn]) -> str:
    """Spark DDL of what :func:`parse_tfrecord_batches` yields."""
    return ", ".join(
        ["source_path string", "record_index long", *[c.ddl for c in columns], "reject_reason string", "size long"]
    )


def parse_tfrecord_batches(
    columns: list[FeatureColumn], *, rows_per_batch: int = 4096
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function over ``(path, length[, content])`` rows: one output row per record.

    A damaged file yields one row with ``reject_reason`` set and no record.
    """

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import io

        import pyarrow as pa

        schema = pa.schema(
            [
                pa.field("source_path", pa.string()),
                pa.field("record_index", pa.int64()),
                *[pa.field(c.name, _arrow_type(c)) for c in columns],
                pa.field("reject_reason", pa.string()),
                pa.field("size", pa.int64()),
            ]
        )
        pending: list[dict[str, Any]] = []

        def flush() -> pa.RecordBatch:
            batch = pa.RecordBatch.from_pylist(pending, schema=schema)
            pending.clear()
            return batch

        for batch in batches:
            table = batch.to_pydict()
            contents = table.get("content") or [None] * batch.num_rows
            for path, size, content in zip(table["path"], table["length"], contents, strict=True):
                try:
                    if content is not None:
                        data = bytes(content)
                    else:
                        local = local_path(path)
                        if local is None:
                            raise OSError(f"{path} is not a local file and its bytes were not read")
                        with open(local, "rb") as fh:
                            data = fh.read()
                    # Validate the whole file first: a damaged file contributes no rows at all.
                    records = list(iter_tfrecords(io.BytesIO(data)))
                    examples = [parse_example(r) for r in records]
                    # Checked against the columns before any row is kept: a file is loaded whole or not at all.
                    rows = _record_rows(path, size, examples, columns)
                except RecordMismatchError as exc:
                    reason = (
                        f"TFRecord file does not fit the table's columns (fixed by its first run): {exc}; write "
                        f"the feature with the column's type and count, or load such files into a new table "
                        f"(--name), and {RELAND}"
                    )
                    pending.append({"source_path": path, "reject_reason": reason, "size": size})
                    continue
                except (TFRecordError, UnicodeDecodeError, struct.error) as exc:
                    reason = f"damaged TFRecord file: {exc}; {RELAND}"
                    pending.append({"source_path": path, "reject_reason": reason, "size": size})
                    continue
                except FileNotFoundError:
                    reason = VANISHED
                    pending.append({"source_path": path, "reject_reason": reason, "size": size})
                    continue
                except PermissionError as exc:
                    reason = (
                        f"unreadable: permission denied ({exc.strerror}); give the ingest user read access and {RELAND}"
                    )
                    pending.append({"source_path": path, "reject_reason": reason, "size": size})
                    continue
                for row in rows:
                    pending.append(row)
                    if len(pending) >= rows_per_batch:
                        yield flush()
        if pending:
            yield flush()

    return parse


def _read_local_or_spark(spark: SparkSession, path: str) -> bytes:
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as fh:
            return fh.read()
    row = spark.read.format("binaryFile").load(path).select("content").head()
    return bytes(row[0]) if row is not None else b""


def sample_tfrecord_columns(
    spark: SparkSession, landing: str, *, path_glob: str | None, recursive: bool
) -> list[FeatureColumn]:
    """Infer feature columns from the first records of the landed TFRecord files."""
    import io

    reader = spark.read.format("binaryFile")
    if recursive:
        reader = reader.option("recursiveFileLookup", "true")
    if path_glob:
        reader = reader.option("pathGlobFilter", path_glob)
    files = [r.path for r in reader.load(landing).select("path").orderBy("path").limit(20).collect()]
    examples: list[dict[str, tuple[str, list[Any]]]] = []
    for path in files:
        try:
            for record in iter_tfrecords(io.BytesIO(_read_local_or_spark(spark, path))):
                examples.append(parse_example(record))
                if len(examples) >= _SAMPLE_RECORDS:
                    break
        except TFRecordError:
            continue  # the stream rejects it with its reason
        if len(examples) >= _SAMPLE_RECORDS:
            break
    return infer_columns(examples)


def _columns_from_table(table: DataFrame) -> list[FeatureColumn]:
    from pyspark.sql.types import ArrayType

    columns = []
    for field in table.schema.fields:
        if field.name in (*META_COLUMNS, "record_index"):
            continue
        data_type = field.dataType
        is_list = isinstance(data_type, ArrayType)
        element = data_type.elementType if isinstance(data_type, ArrayType) else data_type
        kind = element.simpleString()
        columns.append(FeatureColumn(field.name, "long" if kind == "bigint" else kind, is_list))
    return columns


def vanished_files(
    spark: SparkSession, plan: BatchPlan | None, read: set[str], *, modified_after_ms: int | None = None
) -> list[str]:
    """The files the checkpoint planned for a batch that were not read because they no longer exist
    (deleted or renamed after the run listed them), sorted.

    :param read: the batch's files that were read, spelled as the ``binaryFile`` source lists them.
    A planned file that still exists but gave no row (an empty file) is not one of them, nor one
    modified at or before ``modified_after_ms`` (skipped on purpose).
    """
    if plan is None:
        return []
    return [path for path in plan.unread(read, modified_after_ms)[0] if not path_exists(spark, path)]


def unreadable_file_error(message: str, source: str, columns: list[str]) -> JobError | None:
    """A one-line error naming the landed file Spark could not read in a record batch, and the fix;
    None when ``message`` (a failed stream's) is not about one file.

    The batch is replayed on every run until it can be read, so the file has to be moved away (the
    replay then records it as a vanished reject) before a fixed copy is landed under a new name.
    """
    import re

    found = re.search(r"Encountered error while reading file (\S+?)\.?\s", message)
    if found is None:
        return None
    path = found.group(1)
    fix = (
        f"move {path} out of the landing folder (this batch is retried on every run until then, and "
        f"then records the file as vanished), fix it and {RELAND}"
    )
    if "CSV header does not conform to the schema" in message:
        return JobError(
            f"CSV file {path} has a header that is not the table's columns in their order ({', '.join(columns)}): {fix}"
        )
    return JobError(f"cannot read {source} file {path}: it is cut off or damaged; {fix}")


def _check_path_column(table_schema: Any, path_column: str | None, landing: str) -> None:
    if path_column is None:
        return
    names = {f.name: f.dataType.simpleString() for f in table_schema.fields}
    if path_column not in names:
        raise JobError(
            f"--path-column {path_column!r} is not a column of the tables in {landing} (columns: "
            f"{', '.join(sorted(names))}): pass the name of the column that holds image paths"
        )
    if names[path_column] != "string":
        raise JobError(f"--path-column {path_column!r} is {names[path_column]}, not a string of paths")


def ingest_records(
    spark: SparkSession,
    *,
    paths: RescorePaths,
    source: str,
    landing: str,
    name: str | None,
    checkpoint: str | None,
    run_id: str,
    path_glob: str | None = None,
    recursive: bool = True,
    path_column: str | None = None,
    modified_after: datetime | None = None,
    max_files_per_batch: int = DEFAULT_MAX_FILES_PER_BATCH,
    merge_min_batches: int = MERGE_BATCHES,
    after_batch_written: Callable[[int], None] | None = None,
) -> int:
    """Take every record file that arrived in ``landing`` since the last run into ``records/<name>``.

    :param name: the table's name under ``warehouse/records`` (default: the source type).
    :param modified_after: files modified at or before this time are consumed but not loaded, as
        image ingest does (a time without a UTC offset is this machine's local time).
    :param merge_min_batches: once the stream has committed its batches, runs of this many small
        consecutive batch partitions of the table and its rejects are merged (0: never), as
        ingest does for images (:func:`spark_jobs.compaction.merge_batches`).
    Returns the job's exit code (0).
    """
    from pyspark.errors import StreamingQueryException
    from pyspark.sql import functions as F

    from spark_jobs.ingest import (
        REJECTS_SCHEMA,
        check_checkpoint,
        merge_committed_batches,
        planned_batch,
        uri_to_listed,
    )

    if source not in SOURCES or source == "images":
        raise JobError(f"unknown record --source {source!r}: use one of {', '.join(SOURCES[1:])}")
    table_name = name or source
    if not table_name.replace("_", "").replace("-", "").isalnum():
        raise JobError(f"--name {table_name!r} is not usable as a table folder: use letters, digits, '_', '-'")
    target = f"{paths.records}/{table_name}"
    rejects_target = f"{paths.records}/{table_name}_rejects"
    checkpoint = checkpoint or f"{paths.checkpoints}/records-{table_name}"
    check_checkpoint(spark, checkpoint, RescorePaths(paths.home), table=target)
    for table in (target, rejects_target):
        finish_interrupted(spark, table)  # a merge killed half way must not leave rows twice
    spark.conf.set(LISTING_TASKS, str(listing_tasks(spark)))
    existing = read_table(spark, target)

    options: dict[str, str] = {"maxFilesPerTrigger": str(max_files_per_batch)}
    if recursive:
        options["recursiveFileLookup"] = "true"
    if path_glob:
        options["pathGlobFilter"] = path_glob
    if source == "csv":
        options["header"] = "true"
        # Spark's default (true) reads columns by position whatever the header says: a file with the
        # same columns in another order would be loaded into the wrong columns.
        options["enforceSchema"] = "false"

    columns: list[FeatureColumn] = []
    if source == "tfrecord":
        columns = _columns_from_table(existing) if existing is not None else []
        if existing is None:
            columns = sample_tfrecord_columns(spark, landing, path_glob=path_glob, recursive=recursive)
        if not columns:
            log.info("no TFRecord records in %s yet: nothing to ingest", landing)
            return 0
        stream = spark.readStream.format("binaryFile").schema(
            "path string, modificationTime timestamp, length long, content binary"
        )
    else:
        if existing is not None:
            schema = existing.drop(*META_COLUMNS).schema
        else:
            batch_reader = spark.read.format(source).options(
                **{k: v for k, v in options.items() if k != "maxFilesPerTrigger"}
            )
            if source == "csv":
                batch_reader = batch_reader.option("inferSchema", "true")
            try:
                schema = batch_reader.load(landing).schema
            except Exception as exc:
                if "UNABLE_TO_INFER_SCHEMA" in str(exc) or "Unable to infer schema" in str(exc):
                    log.info("no %s files in %s yet: nothing to ingest", source, landing)
                    return 0
                raise JobError(f"cannot read {source} files in {landing}: {str(exc).splitlines()[0]}") from exc
        _check_path_column(schema, path_column, landing)
        stream = spark.readStream.format(source).schema(schema)
    stream_df = stream.options(**options).load(landing).withColumn("batch_time", F.current_timestamp())
    if source != "tfrecord":
        stream_df = stream_df.withColumn("source_path", F.col("_metadata.file_path"))
    modified_after_ms = epoch_ms(modified_after) if modified_after is not None else None
    if modified_after_ms is not None:
        modified = F.col("modificationTime" if source == "tfrecord" else "_metadata.file_modification_time")
        stream_df = stream_df.where(F.unix_millis(modified) > F.lit(modified_after_ms))
    read_locally = local_path(landing) is not None
    totals = {"files": 0, "rows": 0, "rejected": 0}

    def vanished_rejects(vanished: list[str], plan: BatchPlan | None) -> DataFrame:
        """Reject rows of ``REJECTS_SCHEMA`` for files the batch planned but could not read."""
        reason = VANISHED
        batch_time = plan.batch_time if plan is not None else None
        return spark.createDataFrame([(p, 0, reason, batch_time, run_id) for p in vanished], REJECTS_SCHEMA)

    def each_batch(batch: DataFrame, batch_id: int) -> None:
        partition = f"ingest_batch={batch_id}"
        plan = planned_batch(spark, checkpoint, batch_id)
        if source == "tfrecord":
            listing = batch.select("path", "length", "batch_time")
            parsed = (
                batch.select("path", "length", *([] if read_locally else ["content"]))
                .mapInArrow(parse_tfrecord_batches(columns), tfrecord_output_schema(columns))
                .join(F.broadcast(listing.select(F.col("path").alias("source_path"), "batch_time")), "source_path")
                .withColumn("ingested_at", F.col("batch_time"))
                .withColumn("ingest_run", F.lit(run_id))
                .persist()
            )
            try:
                rows = parsed.where(F.col("reject_reason").isNull()).select(
                    "source_path", "record_index", *[c.name for c in columns], "ingested_at", "ingest_run"
                )
                rows.write.mode("overwrite").parquet(f"{target}/{partition}")
                rejects = parsed.where(F.col("reject_reason").isNotNull()).select(
                    F.col("source_path").alias("path"),
                    "size",
                    F.col("reject_reason").alias("reason"),
                    "ingested_at",
                    "ingest_run",
                )
                read = {r.path for r in listing.select("path").collect()}
                vanished = vanished_files(spark, plan, read, modified_after_ms=modified_after_ms)
                if vanished:
                    rejects = rejects.unionByName(vanished_rejects(vanished, plan))
                rejects.write.mode("overwrite").parquet(f"{rejects_target}/{partition}")
                files = len(read) + len(vanished)
                rejected = rejects.count()
                written = rows.count()
            finally:
                parsed.unpersist()
        else:
            rows = (
                batch.withColumn("ingested_at", F.col("batch_time"))
                .withColumn("ingest_run", F.lit(run_id))
                .drop("batch_time")
            )
            rows.write.mode("overwrite").parquet(f"{target}/{partition}")
            written = spark.read.parquet(f"{target}/{partition}").count()
            sources = spark.read.parquet(f"{target}/{partition}").select("source_path").distinct().collect()
            # _metadata.file_path is URL-encoded; the checkpoint's plan is spelled as binaryFile lists paths.
            read = {uri_to_listed(r.source_path) for r in sources}
            vanished = vanished_files(spark, plan, read, modified_after_ms=modified_after_ms)
            # Written even when empty: a replayed batch must overwrite the rejects of its first attempt.
            vanished_rejects(vanished, plan).write.mode("overwrite").parquet(f"{rejects_target}/{partition}")
            files = len(read) + len(vanished)
            rejected = len(vanished)
        totals["files"] += files
        totals["rows"] += written
        totals["rejected"] += rejected
        log.info("batch %d: %d files -> %d rows into %s, %d files rejected", batch_id, files, written, target, rejected)
        if after_batch_written is not None:
            after_batch_written(batch_id)

    query = (
        stream_df.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        columns_read = [f.name for f in schema.fields] if source != "tfrecord" else []
        error = unreadable_file_error(str(exc), source, columns_read)
        if error is None:
            raise
        raise error from exc
    merge_committed_batches(spark, checkpoint, {target: None, rejects_target: None}, min_batches=merge_min_batches)
    log.info(
        "ingest of %s done: %d files, %d rows into %s, %d files rejected (see %s)",
        source,
        totals["files"],
        totals["rows"],
        target,
        totals["rejected"],
        rejects_target,
    )
    return 0
