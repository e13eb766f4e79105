"""Record sources: TFRecord written by TensorFlow itself, and Parquet/CSV/JSON tables."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark


def _write_tfrecord(path: Path, records: list[dict[str, Any]]) -> None:
    """Write tf.train.Example records with TensorFlow's own writer."""
    import tensorflow as tf

    def feature(value: Any) -> tf.train.Feature:
        if value == []:  # an empty list is written as an empty float list in these tests
            return tf.train.Feature(float_list=tf.train.FloatList(value=[]))
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bytes) for v in values):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if all(isinstance(v, int) for v in values):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            example = tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in record.items()}))
            writer.write(example.SerializeToString())


def _ingest_records(spark: SparkSession, home: Path, source: str, **options: Any) -> int:
    from spark_jobs.contract import RescorePaths
    from spark_jobs.records import ingest_records

    return ingest_records(
        spark,
        paths=RescorePaths(str(home)),
        source=source,
        landing=str(home / "landing"),
        name=options.pop("name", None),
        checkpoint=None,
        run_id="r",
        **options,
    )


def test_tfrecord_files_written_by_tensorflow_round_trip_into_typed_columns(
    spark: SparkSession, rescore_home: Path
) -> None:
    landing = rescore_home / "landing"
    # Given two TFRecord files written by TensorFlow, and one cut off half-way
    _write_tfrecord(
        landing / "part-0.tfrecord",
        [
            {"id": 1, "score": 0.5, "embedding": [1.0, 2.0, 3.0], "label": b"cat", "raw": b"\xff\x00", "big": -(2**40)},
            {"id": 2, "score": 1.25, "embedding": [4.0], "label": b"dog", "raw": b"\xfe"},
        ],
    )
    _write_tfrecord(
        landing / "sub" / "part-1.tfrecord", [{"id": 3, "score": -2.0, "embedding": [], "label": b"\xc3\xa9"}]
    )
    _write_tfrecord(landing / "broken.tfrecord", [{"id": 9, "label": b"lost"}] * 3)
    data = (landing / "broken.tfrecord").read_bytes()
    (landing / "broken.tfrecord").write_bytes(data[: len(data) - 7])

    # When ingest runs with --source tfrecord
    assert _ingest_records(spark, rescore_home, "tfrecord", name="features") == 0

    table = spark.read.parquet(str(rescore_home / "warehouse" / "records" / "features"))
    # Then every feature is a typed column (written down by hand from what was written above)
    types = dict(table.dtypes)
    assert {k: types[k] for k in ("id", "score", "embedding", "label", "raw", "big", "record_index")} == {
        "id": "bigint",
        "score": "float",
        "embedding": "array<float>",
        "label": "string",
        "raw": "binary",
        "big": "bigint",
        "record_index": "bigint",
    }
    rows = sorted(table.collect(), key=lambda r: r.id)
    assert [(r.id, r.score, r.embedding, r.label, r.record_index) for r in rows] == [
        (1, 0.5, [1.0, 2.0, 3.0], "cat", 0),
        (2, 1.25, [4.0], "dog", 1),
        (3, -2.0, [], "é", 0),
    ]
    assert [bytes(r.raw) if r.raw is not None else None for r in rows] == [b"\xff\x00", b"\xfe", None]
    assert [r.big for r in rows] == [-(2**40), None, None]
    assert Path(rows[2].source_path).name == "part-1.tfrecord"
    # And the cut-off file is rejected whole, with its reason
    (reject,) = spark.read.parquet(str(rescore_home / "warehouse" / "records" / "features_rejects")).collect()
    assert Path(reject.path).name == "broken.tfrecord"
    assert reject.reason.startswith("damaged TFRecord file: record 2: file ends inside the record data (cut off)")

    # When another file lands and ingest runs again
    _write_tfrecord(landing / "part-2.tfrecord", [{"id": 4, "score": 3.0, "embedding": [5.0, 6.0], "label": b"ox"}])
    _ingest_records(spark, rescore_home, "tfrecord", name="features")
    # Then only its record is added
    ids = sorted(r.id for r in spark.read.parquet(str(rescore_home / "warehouse" / "records" / "features")).collect())
    assert ids == [1, 2, 3, 4]


def test_csv_json_and_parquet_tables_keep_their_columns(spark: SparkSession, rescore_home: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    landing = rescore_home / "landing"
    (landing / "csv").mkdir(parents=True)
    (landing / "csv" / "manifest.csv").write_text("path,label,weight\n/lake/a.jpg,cat,0.5\n/lake/b.jpg,dog,2\n")
    (landing / "json").mkdir()
    (landing / "json" / "f.json").write_text('{"x": 1, "y": 2.5}\n{"x": 3, "y": -1.0}\n')
    (landing / "parquet").mkdir()
    pq.write_table(pa.table({"image_path": ["/lake/c.png"], "f0": [0.25]}), landing / "parquet" / "p.parquet")

    from spark_jobs.contract import RescorePaths
    from spark_jobs.records import ingest_records

    def run(source: str, **options: Any) -> list[Any]:
        ingest_records(
            spark,
            paths=RescorePaths(str(rescore_home)),
            source=source,
            landing=str(landing / source),
            name=None,
            checkpoint=None,
            run_id="r",
            **options,
        )
        table = spark.read.parquet(str(rescore_home / "warehouse" / "records" / source))
        return [table.dtypes, sorted(tuple(r)[:-4] for r in table.select(*table.columns).collect())]

    csv_types, csv_rows = run("csv", path_column="path")
    assert csv_types[:3] == [("path", "string"), ("label", "string"), ("weight", "double")]
    assert csv_rows == [("/lake/a.jpg", "cat", 0.5), ("/lake/b.jpg", "dog", 2.0)]
    json_types, json_rows = run("json")
    assert json_types[:2] == [("x", "bigint"), ("y", "double")]
    assert json_rows == [(1, 2.5), (3, -1.0)]
    parquet_types, parquet_rows = run("parquet", path_column="image_path")
    assert parquet_types[:2] == [("image_path", "string"), ("f0", "double")]
    assert parquet_rows == [("/lake/c.png", 0.25)]
    source = spark.read.parquet(str(rescore_home / "warehouse" / "records" / "csv")).select("source_path").first()
    assert source is not None and source[0].endswith("manifest.csv")


def test_a_missing_path_column_names_the_columns(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from spark_jobs.ingest import main

    (rescore_home / "landing").mkdir()
    (rescore_home / "landing" / "m.csv").write_text("file,label\n/a.jpg,cat\n")
    with caplog.at_level(logging.ERROR, logger="rescore.ingest"):
        rc = main(["--home", str(rescore_home), "--source", "csv", "--path-column", "path"])
    assert rc == 2
    assert "--path-column 'path' is not a column of the tables in" in caplog.text
    assert "(columns: file, label)" in caplog.text


def test_record_batches_follow_the_job_options_and_committed_ones_are_merged(
    spark: SparkSession, rescore_home: Path
) -> None:
    import os
    import time

    from spark_jobs.ingest import main

    # Given three JSON files landing one after another
    landing = rescore_home / "landing"
    landing.mkdir()
    for n in range(3):
        path = landing / f"part-{n}.json"
        path.write_text(f'{{"n": {n}, "tag": "t{n}"}}\n{{"n": {10 + n}, "tag": "u{n}"}}\n')
        os.utime(path, (time.time() - 100 + n, time.time() - 100 + n))
    table = rescore_home / "warehouse" / "records" / "json"

    def state() -> tuple[list[str], list[tuple[Any, ...]]]:
        folders = sorted(p.name for p in table.iterdir() if p.name.startswith("ingest_batch="))
        rows = spark.read.parquet(str(table)).select("n", "tag", "source_path", "ingested_at", "ingest_run")
        return folders, sorted(tuple(r) for r in rows.collect())

    # When the job takes them one file per batch, without merging
    home = ["--home", str(rescore_home), "--source", "json"]
    assert main([*home, "--max-files-per-batch", "1", "--merge-batches", "0"]) == 0

    # Then each file is a batch of its own (the option reaches record sources too)
    folders, rows = state()
    assert folders == ["ingest_batch=0", "ingest_batch=1", "ingest_batch=2"]
    assert [(n, tag) for n, tag, *_ in rows] == [(0, "t0"), (1, "t1"), (2, "t2"), (10, "u0"), (11, "u1"), (12, "u2")]

    # And a later run merges the three committed batches into the last one's partition, rows unchanged
    assert main([*home, "--merge-batches", "3"]) == 0
    assert state() == (["ingest_batch=2"], rows)


def test_record_sources_honour_modified_after(spark: SparkSession, rescore_home: Path) -> None:
    import os

    from spark_jobs.ingest import main

    # Given a JSON file modified in 2020 and one modified now
    landing = rescore_home / "landing"
    landing.mkdir()
    (landing / "old.json").write_text('{"n": 1}\n')
    os.utime(landing / "old.json", (1_600_000_000, 1_600_000_000))  # September 2020
    (landing / "new.json").write_text('{"n": 2}\n')
    # When the job runs with --modified-after, as Airflow's {{ ts }} renders it
    rc = main(["--home", str(rescore_home), "--source", "json", "--modified-after", "2024-01-01T00:00:00+00:00"])
    # Then only the newer file's rows are loaded
    assert rc == 0
    table = spark.read.parquet(str(rescore_home / "warehouse" / "records" / "json"))
    assert [(r.n, Path(r.source_path).name) for r in table.collect()] == [(2, "new.json")]


@pytest.mark.parametrize("source", ["tfrecord", "json"])
def test_a_record_file_deleted_after_the_run_listed_it_is_rejected_as_vanished(
    spark: SparkSession, rescore_home: Path, source: str
) -> None:
    import os
    import time

    # Given two record files, taken one per batch
    landing = rescore_home / "landing"
    for n in range(2):
        path = landing / f"part-{n}.{source}"
        if source == "tfrecord":
            _write_tfrecord(path, [{"n": n}])
        else:
            landing.mkdir(exist_ok=True)
            path.write_text(f'{{"n": {n}}}\n')
        os.utime(path, (time.time() - 100 + n, time.time() - 100 + n))

    # When the second one is deleted after the run planned its batches (once the first is written)
    def delete_second(batch_id: int) -> None:
        if batch_id == 0:
            (landing / f"part-1.{source}").unlink()

    assert _ingest_records(spark, rescore_home, source, max_files_per_batch=1, after_batch_written=delete_second) == 0

    # Then the first file's row is loaded and the second is a reject saying it vanished
    records = rescore_home / "warehouse" / "records"
    assert [r.n for r in spark.read.parquet(str(records / source)).collect()] == [0]
    (reject,) = spark.read.parquet(str(records / f"{source}_rejects")).collect()
    assert Path(reject.path).name == f"part-1.{source}"
    assert reject.reason == (
        "vanished: the file was deleted or renamed after it landed; "
        "land it again under a new name (a path already taken is never read again)"
    )
    assert reject.ingest_batch == "1"  # partition values are read as strings in these tests


def test_tfrecord_files_that_do_not_fit_the_first_runs_columns_are_rejected_whole(
    spark: SparkSession, rescore_home: Path
) -> None:
    landing = rescore_home / "landing"
    records = rescore_home / "warehouse" / "records"
    # Given a first run that fixed the columns: x a single int64, s UTF-8 text
    _write_tfrecord(landing / "p0.tfrecord", [{"x": 1, "s": b"a"}, {"x": 2, "s": b"b"}])
    assert _ingest_records(spark, rescore_home, "tfrecord") == 0

    # When files land whose records do not fit them (each after a record that does), beside a good one
    _write_tfrecord(landing / "three-x.tfrecord", [{"x": 4, "s": b"d"}, {"x": [7, 8, 9], "s": b"c"}])
    _write_tfrecord(landing / "raw-s.tfrecord", [{"x": 5, "s": b"e"}, {"x": 6, "s": b"\xff\xfe raw"}])
    _write_tfrecord(landing / "float-x.tfrecord", [{"x": 2.5, "s": b"f"}])
    _write_tfrecord(landing / "p1.tfrecord", [{"x": 3, "s": b"ok"}])
    assert _ingest_records(spark, rescore_home, "tfrecord") == 0

    # Then none of their records is loaded (nothing nulled or cut), only the good file's
    rows = spark.read.parquet(str(records / "tfrecord")).collect()
    assert sorted((Path(r.source_path).name, r.record_index, r.x, r.s) for r in rows) == [
        ("p0.tfrecord", 0, 1, "a"),
        ("p0.tfrecord", 1, 2, "b"),
        ("p1.tfrecord", 0, 3, "ok"),
    ]
    # And each is rejected whole with a reason naming the record, the feature and the fix
    rejects = {Path(r.path).name: r.reason for r in spark.read.parquet(str(records / "tfrecord_rejects")).collect()}
    fix = (
        "; write the feature with the column's type and count, or load such files into a new table (--name), "
        "and land it again under a new name (a path already taken is never read again)"
    )
    head = "TFRecord file does not fit the table's columns (fixed by its first run): "
    assert rejects == {
        "three-x.tfrecord": f"{head}record 1: feature 'x' holds 3 values but the column is a single long{fix}",
        "raw-s.tfrecord": f"{head}record 1: feature 's' is not UTF-8 text (invalid start byte) "
        f"but the column is string{fix}",
        "float-x.tfrecord": f"{head}record 0: feature 'x' is a float list but the column is long{fix}",
    }

    # And a later run goes on (a bad file never fails every run after it)
    _write_tfrecord(landing / "p2.tfrecord", [{"x": 4, "s": b"later"}])
    assert _ingest_records(spark, rescore_home, "tfrecord") == 0
    assert spark.read.parquet(str(records / "tfrecord")).count() == 4


def test_a_csv_file_with_its_columns_in_another_order_stops_the_run_naming_the_file(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import os
    import time

    from spark_jobs.ingest import main

    landing = rescore_home / "landing"
    landing.mkdir()
    table = rescore_home / "warehouse" / "records" / "csv"
    (landing / "a.csv").write_text("path,label,score\n/img/1.jpg,cat,0.9\n")
    os.utime(landing / "a.csv", (time.time() - 100, time.time() - 100))
    home = ["--home", str(rescore_home), "--source", "csv", "--path-column", "path"]
    assert main(home) == 0
    # Given a later file with the same columns in another order
    (landing / "b.csv").write_text("label,path,score\nbird,/img/3.jpg,0.5\n")

    # When the job runs
    with caplog.at_level(logging.ERROR, logger="rescore.ingest"):
        rc = main(home)

    # Then it stops with a clear error naming the file and the fix, and nothing lands in the wrong columns
    assert rc == 2
    assert (
        f"CSV file file://{landing}/b.csv has a header that is not the table's columns in their order " in caplog.text
    )
    assert "(path, label, score): move" in caplog.text
    assert [(r.path, r.label) for r in spark.read.parquet(str(table)).collect()] == [("/img/1.jpg", "cat")]

    # And once the file is moved away and a fixed copy landed under a new name, the next run goes on
    (landing / "b.csv").rename(rescore_home / "b.csv")
    (landing / "b2.csv").write_text("path,label,score\n/img/3.jpg,bird,0.5\n")
    assert main(home) == 0
    rows = spark.read.parquet(str(table)).collect()
    assert sorted((r.path, r.label, r.score) for r in rows) == [("/img/1.jpg", "cat", 0.9), ("/img/3.jpg", "bird", 0.5)]
    (reject,) = spark.read.parquet(f"{table}_rejects").collect()
    assert Path(reject.path).name == "b.csv" and reject.reason.startswith("vanished")


def test_a_cut_off_parquet_file_stops_the_run_with_one_line_naming_it(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_jobs.ingest import main

    # Given a table loaded by a first run, and then a Parquet file landed cut off half way
    landing = rescore_home / "landing"
    landing.mkdir()
    pq.write_table(pa.table({"n": [3], "tag": ["c"]}), landing / "good.parquet")
    assert main(["--home", str(rescore_home), "--source", "parquet"]) == 0
    pq.write_table(pa.table({"n": [1, 2], "tag": ["a", "b"]}), rescore_home / "whole.parquet")
    data = (rescore_home / "whole.parquet").read_bytes()
    (landing / "cut.parquet").write_bytes(data[: len(data) // 2])

    # When the job runs again
    with caplog.at_level(logging.ERROR, logger="rescore.ingest"):
        rc = main(["--home", str(rescore_home), "--source", "parquet"])

    # Then it exits 2 with one line naming the file and the fix, not Spark's stack trace
    assert rc == 2
    (line,) = [m for m in caplog.messages if "cut.parquet" in m]
    assert f"cannot read parquet file file://{landing}/cut.parquet: it is cut off or damaged; move " in line
    assert "\n" not in line
