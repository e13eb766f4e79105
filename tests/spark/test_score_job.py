"""The score job end to end in-process: date scope on ingested_at, --force replacing a version's
partition (and only the re-scored rows of it), nothing re-scored without --force."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spark_jobs.contract import RescorePaths
from spark_jobs.model_store import Manifest, ModelStore
from spark_jobs.score import main, parse_args

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark

DAYS = {"2026-03-01": 4, "2026-03-02": 5, "2026-03-03": 3}


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (value * 20 % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def home(spark: SparkSession, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> RescorePaths:
    import torch
    from safetensors.torch import save_file

    from spark_jobs.models.torch_nets import SmallCNN

    paths = RescorePaths(str(tmp_path / "home"))
    rows = []
    n = 0
    for day, count in DAYS.items():
        for _ in range(count):
            stamp = datetime.fromisoformat(f"{day}T12:30:00")
            rows.append((f"img-{day}-{n}", f"file:/nowhere/{n}.png", bytearray(_png(n)), stamp))
            n += 1
    spark.createDataFrame(rows, "image_id string, path string, content binary, ingested_at timestamp").write.parquet(
        paths.images
    )
    torch.manual_seed(0)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in SmallCNN(2).state_dict().items()}, str(weights))
    manifest = Manifest(name="m", framework="pytorch", architecture="small_cnn", input_size=16, labels=["x", "y"])
    ModelStore(paths.models).publish(manifest, weights)
    return paths


def _rows(spark: SparkSession, paths: RescorePaths) -> list[dict]:  # type: ignore[type-arg]
    frame = spark.read.parquet(paths.predictions).where("model_name = 'm' AND model_version = '1'")
    return [r.asDict() for r in frame.select("image_id", "run_id", "top_k").collect()]


def _score(paths: RescorePaths, *extra: str) -> int:
    return main(["--home", paths.home, "--model-name", "m", "--batch-size", "2", "--top-k", "1", *extra])


def test_a_date_range_scores_only_images_ingested_in_it(spark: SparkSession, home: RescorePaths) -> None:
    assert _score(home, "--from-date", "2026-03-02", "--to-date", "2026-03-03", "--run-id", "r1") == 0
    ids = sorted(r["image_id"] for r in _rows(spark, home))
    assert len(ids) == 8
    assert all(i.startswith(("img-2026-03-02", "img-2026-03-03")) for i in ids)
    assert all(len(r["top_k"]) == 1 for r in _rows(spark, home))


def test_force_rescores_the_range_in_place_and_keeps_the_rest(spark: SparkSession, home: RescorePaths) -> None:
    # Given every image scored once by run r1
    assert _score(home, "--run-id", "r1") == 0
    assert len(_rows(spark, home)) == 12
    # When run again without --force nothing is added
    assert _score(home, "--run-id", "r2") == 0
    assert {r["run_id"] for r in _rows(spark, home)} == {"r1"}

    # When one day is re-scored with --force
    assert _score(home, "--from-date", "2026-03-02", "--to-date", "2026-03-02", "--force", "--run-id", "r3") == 0

    # Then each image still has exactly one row: that day's from r3, the others still from r1
    rows = _rows(spark, home)
    assert sorted(r["image_id"] for r in rows) == sorted({r["image_id"] for r in rows})
    assert len(rows) == 12
    by_run = {r["image_id"]: r["run_id"] for r in rows}
    assert {i for i, run in by_run.items() if run == "r3"} == {i for i in by_run if i.startswith("img-2026-03-02")}
    # and no staging or replaced folder is left where a reader could see it
    leftovers = [p.name for p in Path(home.predictions).iterdir() if p.name.startswith(("_staging", "_replaced"))]
    assert leftovers == []


def test_a_force_run_killed_while_swapping_its_rows_in_is_finished_by_the_next_run(
    spark: SparkSession, home: RescorePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import score

    assert _score(home, "--run-id", "r1") == 0

    # Given a --force run of day 2 killed once its new rows are staged and its journal written,
    # before any file moved (the old partition moved aside and not yet replaced lost days 1 and 3)
    def killed(*_: object) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(score, "roll_forward", killed)
    with pytest.raises(KeyboardInterrupt):
        _score(home, "--from-date", "2026-03-02", "--to-date", "2026-03-02", "--force", "--run-id", "r3")
    monkeypatch.undo()
    journals = [p.name for p in Path(home.predictions).iterdir() if p.name.startswith("_compaction-")]
    assert len(journals) == 1
    assert len(_rows(spark, home)) == 12  # readers still see the old rows, once each

    # When the next run starts (nothing new to score)
    assert _score(home, "--run-id", "r4") == 0

    # Then the swap is finished: each image once, day 2 from r3, the others still from r1
    rows = _rows(spark, home)
    assert len(rows) == 12
    assert sorted(r["image_id"] for r in rows) == sorted({r["image_id"] for r in rows})
    by_run = {r["image_id"]: r["run_id"] for r in rows}
    assert {i for i, run in by_run.items() if run == "r3"} == {i for i in by_run if i.startswith("img-2026-03-02")}
    assert set(by_run.values()) == {"r1", "r3"}
    assert [p.name for p in Path(home.predictions).iterdir() if p.name.startswith("_")] == []


def test_force_on_a_version_never_scored_writes_its_partition(spark: SparkSession, home: RescorePaths) -> None:
    assert _score(home, "--force", "--run-id", "r1") == 0
    assert len(_rows(spark, home)) == 12


def test_force_keeps_the_columns_of_rows_it_does_not_rescore_when_older_files_lack_them(
    spark: SparkSession, home: RescorePaths
) -> None:
    # Given day 1 scored before top_k existed (a file without the column, listed first) and the
    # other days scored now
    partition = Path(home.predictions) / "model_name=m" / "model_version=1"
    images = spark.read.parquet(home.images).where("ingested_at < '2026-03-02'")
    old = images.selectExpr("image_id", "'x' AS label", "CAST(0.5 AS float) AS score", "'r0' AS run_id")
    old.coalesce(1).write.parquet(str(partition / "_old"))
    for path in (partition / "_old").glob("part-*"):
        path.rename(partition / f"a-{path.name}")
    assert _score(home, "--from-date", "2026-03-02", "--run-id", "r1") == 0
    # When day 2 is re-scored with --force
    assert _score(home, "--from-date", "2026-03-02", "--to-date", "2026-03-02", "--force", "--run-id", "r2") == 0
    # Then day 3's rows, kept from before, still have their top_k
    rows = {r["image_id"]: r for r in _rows(spark, home)}
    assert len(rows) == 12
    day3 = [r for i, r in rows.items() if i.startswith("img-2026-03-03")]
    assert len(day3) == 3 and all(r["run_id"] == "r1" and len(r["top_k"]) == 1 for r in day3)
    assert all(r["top_k"] is None for i, r in rows.items() if i.startswith("img-2026-03-01"))


def _data_files(paths: RescorePaths) -> list[str]:
    partition = Path(paths.predictions) / "model_name=m" / "model_version=1"
    return sorted(p.name for p in partition.iterdir() if not p.name.startswith(("_", ".")))


def test_each_run_compacts_the_versions_partition_once_it_passes_the_threshold(
    spark: SparkSession, home: RescorePaths
) -> None:
    # Given three runs that each append a day's predictions, compacting above 2 files
    for day in DAYS:
        assert _score(home, "--from-date", day, "--to-date", day, "--run-id", day, "--compact-above-files", "2") == 0
        # Then the partition never holds more than 2 files once a run is over
        assert 1 <= len(_data_files(home)) <= 2
    # and every prediction is there once, with the run that wrote it
    rows = _rows(spark, home)
    assert len(rows) == 12 and len({r["image_id"] for r in rows}) == 12
    assert {r["run_id"] for r in rows} == set(DAYS)
    assert not [p.name for p in Path(home.predictions).iterdir() if p.name.startswith(("_staging", "_compaction"))]


def test_a_run_with_nothing_to_score_still_compacts_and_zero_turns_it_off(
    spark: SparkSession, home: RescorePaths
) -> None:
    # Given a partition of several files (one per day, compaction off)
    for day in DAYS:
        assert _score(home, "--from-date", day, "--to-date", day, "--compact-above-files", "0") == 0
    assert len(_data_files(home)) >= 3
    # When a run finds nothing new but the threshold is now 1 file
    assert _score(home, "--compact-above-files", "1") == 0
    # Then the partition is one file with the same 12 predictions
    assert len(_data_files(home)) == 1
    assert len(_rows(spark, home)) == 12


def test_the_job_logs_where_its_python_workers_spent_the_time(
    home: RescorePaths, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="rescore.score"):
        assert _score(home) == 0
    lines = [r.getMessage() for r in caplog.records if "Python workers' time per image" in r.getMessage()]
    assert len(lines) == 1
    assert "12 images" in lines[0]  # every image of the three days, scored once
    assert "model " in lines[0] and "decoding " in lines[0]


def test_bad_flags_are_refused_with_the_flag_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model-name", "m", "--from-date", "2026-03-05", "--to-date", "2026-03-01"])
    assert "--from-date 2026-03-05 is after --to-date 2026-03-01" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model-name", "m", "--from-date", "yesterday"])
    assert "use YYYY-MM-DD" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model-name", "m", "--decode", "gpu"])
    with pytest.raises(SystemExit):
        parse_args(["--model-name", "m", "--compact-above-files", "-1"])
    assert "--compact-above-files must be 0 (never) or more, got -1" in capsys.readouterr().err
    args = parse_args(["--model-name", "m"])
    assert (args.batch_size, args.arrow_batch_size, args.top_k, args.decode, args.force) == (64, None, 3, "auto", False)
    assert (args.compact_above_files, args.compact_file_mb) == (64, 128)


def test_the_parquet_reader_holds_one_arrow_batch_of_images_not_4096(spark: SparkSession, home: RescorePaths) -> None:
    # Given the images table holds the image bytes (a column batch of 4,096 rows of photos is one
    # contiguous buffer of up to a row group, which ran a 1 GB driver out of heap)
    spark.conf.unset("spark.sql.parquet.columnarReaderBatchSize")
    # When the job scores with batches of 2 images
    assert _score(home, "--run-id", "r1") == 0
    # Then its reader filled column batches of 2 rows, and every image was scored
    assert spark.conf.get("spark.sql.parquet.columnarReaderBatchSize") == "2"
    assert len(_rows(spark, home)) == 12
