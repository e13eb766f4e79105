"""Files above --max-file-bytes are stored by path and still scored; bad arguments are clear errors."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numpy as np
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.spark


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class _BrightnessPredictor:
    """A stand-in model: 'light' when the mean normalised pixel is above zero, else 'dark'."""

    def __init__(self) -> None:
        from spark_jobs.model_store import Manifest

        self.manifest = Manifest(
            name="brightness", framework="pytorch", architecture="small_cnn", input_size=8, labels=["dark", "light"]
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        light = (batch.mean(axis=(1, 2, 3)) > 0).astype(np.float32)
        return np.stack([1 - light, light], axis=1)

    def forward(self, batch: np.ndarray) -> Any:
        from spark_jobs.models import BatchOutput

        return BatchOutput(self.predict(batch), None)


def test_a_file_above_max_file_bytes_is_stored_by_path_and_scored_from_it(
    spark: SparkSession, rescore_home: Path
) -> None:
    import pandas as pd

    from spark_jobs.contract import RescorePaths
    from spark_jobs.ingest import ingest_landing
    from spark_jobs.score import decode_batch, predict_batch, select_unscored

    # Given a white image of a few hundred bytes and a limit of 100 bytes, beside a small file
    landing = rescore_home / "landing"
    landing.mkdir()
    big = _png((255, 255, 255), (64, 64))
    (landing / "big white.png").write_bytes(big)
    small = _png((0, 0, 0), (1, 1))
    (landing / "tiny.png").write_bytes(small)
    assert len(big) > 100 >= len(small)
    paths = RescorePaths(str(rescore_home))
    # When ingest runs with that limit
    counts = ingest_landing(
        spark,
        paths=paths,
        landing=str(landing),
        checkpoint=f"{paths.checkpoints}/ingest",
        run_id="r",
        max_file_bytes=100,
    )
    assert (counts.seen, counts.accepted) == (2, 2)
    rows = {Path(r.path).name: r for r in spark.read.parquet(paths.images).collect()}
    # Then the large one has its metadata and path but no bytes; the small one keeps its bytes
    large = rows["big white.png"]
    assert large.content is None
    assert (large.size, large.width, large.height, large.format) == (len(big), 64, 64, "PNG")
    assert large.image_id == hashlib.sha256(big).hexdigest()
    assert bytes(rows["tiny.png"].content) == small

    # And scoring reads it from its path
    todo = select_unscored(spark.read.parquet(paths.images), None, model_name="brightness", model_version="1")
    todo_rows = sorted(todo.collect(), key=lambda r: r.path)
    predictor = _BrightnessPredictor()
    decoded = decode_batch(
        predictor.manifest, pd.Series([r.content for r in todo_rows]), pd.Series([r.path for r in todo_rows])
    )
    result = predict_batch(predictor, decoded, top_k=1)  # type: ignore[arg-type]
    assert result["error"].isna().all(), result["error"].tolist()
    assert result["label"].tolist() == ["light", "dark"]  # "big white.png" sorts before "tiny.png"


def _run_main(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    from spark_jobs.ingest import main

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="rescore.ingest"):
        rc = main(argv)
    return rc, "\n".join(caplog.messages)


def test_a_missing_landing_folder_names_the_path_and_the_fix(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rc, message = _run_main(["--home", str(rescore_home), "--landing", str(rescore_home / "nowhere")], caplog)
    assert rc == 2
    assert f"landing folder {rescore_home / 'nowhere'} does not exist: create it, or pass --landing" in message


def test_an_unknown_source_lists_the_known_ones(rescore_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc, message = _run_main(["--home", str(rescore_home), "--source", "xml"], caplog)
    assert rc == 2
    assert "unknown --source 'xml': use one of images, parquet, csv, json, tfrecord" in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max-pixels", "0"], "--max-pixels 0 must be a positive number"),
        (["--max-files-per-batch", "0"], "--max-files-per-batch 0 must be a positive number"),
        (["--merge-batches", "-1"], "--merge-batches -1 must be 0 (never merge) or more"),
        (["--modified-after", "last tuesday"], "--modified-after 'last tuesday' is not a timestamp: use ISO 8601"),
    ],
)
def test_bad_option_values_say_what_to_pass(
    rescore_home: Path, caplog: pytest.LogCaptureFixture, argv: list[str], expected: str
) -> None:
    rc, message = _run_main(["--home", str(rescore_home), *argv], caplog)
    assert rc == 2
    assert expected in message


def test_a_checkpoint_that_is_a_file_is_refused(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (rescore_home / "landing").mkdir()
    checkpoint = rescore_home / "ckpt"
    checkpoint.write_text("oops")
    rc, message = _run_main(["--home", str(rescore_home), "--checkpoint", str(checkpoint)], caplog)
    assert rc == 2
    assert f"checkpoint {checkpoint} is a file, not a folder" in message


def test_a_damaged_checkpoint_is_refused_with_the_fix(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (rescore_home / "landing").mkdir()
    checkpoint = rescore_home / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "metadata").write_text("\x00\x01 not json")
    rc, message = _run_main(["--home", str(rescore_home), "--checkpoint", str(checkpoint)], caplog)
    assert rc == 2
    assert f"checkpoint {checkpoint} is unreadable: its metadata file is damaged; restore" in message


def test_a_damaged_offset_log_is_refused_with_the_fix(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    landing = rescore_home / "landing"
    landing.mkdir()
    (landing / "a.png").write_bytes(_png((1, 2, 3), (4, 4)))
    assert _run_main(["--home", str(rescore_home)], caplog)[0] == 0
    (landing / "b.png").write_bytes(_png((3, 2, 1), (4, 4)))
    offsets = rescore_home / "checkpoints" / "ingest" / "offsets"
    (offsets / "0").write_text("garbage")
    for crc in offsets.glob(".*.crc"):
        crc.unlink()
    rc, message = _run_main(["--home", str(rescore_home)], caplog)
    assert rc == 2
    assert f"checkpoint {rescore_home}/checkpoints/ingest is unreadable" in message


@pytest.mark.parametrize("modified_after", ["2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00Z"])
def test_modified_after_with_a_utc_offset_skips_older_files(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture, modified_after: str
) -> None:
    import os

    # Given an image modified in 2020 and one modified now
    landing = rescore_home / "landing"
    landing.mkdir()
    (landing / "old.png").write_bytes(_png((1, 2, 3), (4, 4)))
    os.utime(landing / "old.png", (1_600_000_000, 1_600_000_000))  # September 2020
    (landing / "new.png").write_bytes(_png((3, 2, 1), (4, 4)))
    # When ingest runs with --modified-after as Airflow's {{ ts }} renders it (a UTC offset)
    rc, message = _run_main(["--home", str(rescore_home), "--modified-after", modified_after], caplog)
    # Then the run succeeds, the old file is skipped and the new one ingested
    assert rc == 0, message
    images = spark.read.parquet(str(rescore_home / "warehouse" / "images")).collect()
    assert [Path(r.path).name for r in images] == ["new.png"]
