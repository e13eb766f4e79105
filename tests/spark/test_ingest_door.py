"""The door check: a generated corpus of every awkward file lands where it belongs, with its reason."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

from tests.corpus import MAX_PIXELS
from tests.corpus import corpus as _corpus
from tests.corpus import image_bytes as _image_bytes

pytestmark = pytest.mark.spark

#: How every reject reason ends (written out by hand, not imported from the job).
_RELAND = "land it again under a new name (a path already taken is never read again)"


def _relative(path: str, landing: Path) -> str:
    prefix = f"file:{landing}/"
    assert path.startswith(prefix), path
    return path[len(prefix) :]


def test_every_awkward_file_lands_where_it_belongs(
    spark: SparkSession, rescore_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from spark_jobs.ingest import main

    # Given a landing folder with every case of the door check
    landing = rescore_home / "landing"
    expect = _corpus(landing)
    # When ingest runs once through its command line
    with caplog.at_level(logging.INFO, logger="rescore.ingest"):
        rc = main(["--home", str(rescore_home), "--max-pixels", str(MAX_PIXELS), "--run-id", "corpus"])
    assert rc == 0

    warehouse = rescore_home / "warehouse"
    images = {_relative(r.path, landing): r for r in spark.read.parquet(str(warehouse / "images")).collect()}
    rejects = {_relative(r.path, landing): r for r in spark.read.parquet(str(warehouse / "rejects")).collect()}
    image_paths = spark.read.parquet(str(warehouse / "image_paths")).collect()

    # Then each accepted file is an image row with its facts, and its id is the sha256 of its bytes
    accepted = {name for name, e in expect.items() if e[0] == "images"}
    assert set(images) == accepted
    for name in accepted:
        row = images[name]
        _, fmt, mode, width, height = expect[name]
        assert (row.format, row.mode, row.width, row.height) == (fmt, mode, int(width), int(height)), name
        data = (landing / name).read_bytes()
        assert row.image_id == hashlib.sha256(data).hexdigest()
        assert bytes(row.content) == data
        assert row.size == len(data)
        assert row.ingest_run == "corpus"
    # And each rejected file has the reason a person can act on
    rejected = {name for name, e in expect.items() if e[0] == "rejects"}
    assert set(rejects) == rejected
    for name in rejected:
        assert rejects[name].reason.startswith(expect[name][1]), (name, rejects[name].reason)
        # and says how to land a fixed copy: the stream never reads a path it has taken again
        assert rejects[name].reason.endswith(_RELAND), (name, rejects[name].reason)
    # And the duplicate is one image with both of its paths kept
    rgba_id = hashlib.sha256((landing / "a-rgba.png").read_bytes()).hexdigest()
    assert sorted(_relative(r.path, landing) for r in image_paths if r.image_id == rgba_id) == [
        "a-rgba.png",
        "nested/copy of rgba.png",
    ]
    assert len(image_paths) == len(accepted) + 1
    # And the counts reconcile, and the task log says so
    seen = len(expect)
    line = f"{seen} files seen = {len(accepted)} accepted + {len(rejected)} rejected + 1 duplicates (reconciled)"
    assert any(line in message for message in caplog.messages), caplog.messages


def test_an_unreadable_file_is_rejected_with_permission_denied(spark: SparkSession, rescore_home: Path) -> None:
    from spark_jobs.contract import RescorePaths
    from spark_jobs.ingest import ingest_landing

    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading; see the direct test below")
    landing = rescore_home / "landing"
    landing.mkdir()
    locked = landing / "locked.png"
    locked.write_bytes(_image_bytes("RGB", (8, 8), "PNG", (1, 2, 3)))
    locked.chmod(0)
    try:
        paths = RescorePaths(str(rescore_home))
        counts = ingest_landing(
            spark, paths=paths, landing=str(landing), checkpoint=f"{paths.checkpoints}/ingest", run_id="r"
        )
    finally:
        locked.chmod(0o644)
    assert (counts.seen, counts.rejected) == (1, 1)
    (row,) = spark.read.parquet(paths.rejects).collect()
    assert row.reason.startswith("unreadable: permission denied")


def test_permission_denied_at_open_becomes_an_unreadable_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    from spark_jobs import ingest

    # Given a file the ingest user may not open (simulated: root can open anything)
    def refuse(path: str) -> io.BufferedReader:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(ingest, "_open_landed", refuse)
    # When the door check reads it
    row = ingest.inspect_file("file:/lake/locked.png", 10, None, max_pixels=MAX_PIXELS, max_file_bytes=100)
    # Then it is a reject naming the fix, with no id and no bytes
    assert row["reason"] == (
        "unreadable: permission denied (Permission denied); give the ingest user read access "
        "and land it again under a new name (a path already taken is never read again)"
    )
    assert row["image_id"] is None and row["content"] is None


def test_a_file_deleted_after_it_landed_is_rejected_as_vanished(tmp_path: Path) -> None:
    from spark_jobs.ingest import inspect_file

    row = inspect_file(f"file:{tmp_path}/gone.png", 10, None, max_pixels=MAX_PIXELS, max_file_bytes=100)
    assert row["reason"] == (
        "vanished: the file was deleted or renamed after it landed; "
        "land it again under a new name (a path already taken is never read again)"
    )


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_a_cut_off_bmp_gif_or_tiff_is_rejected_and_an_intact_one_accepted(fmt: str) -> None:
    from spark_jobs.ingest import inspect_image

    # Given an image whose format's verify() does not read the pixels, whole and cut at 60%
    data = _image_bytes("RGB", (64, 48), fmt, (10, 200, 30))
    # When the door check opens each
    whole = inspect_image(data, max_pixels=MAX_PIXELS)
    cut = inspect_image(data[: int(len(data) * 0.6)], max_pixels=MAX_PIXELS)
    # Then the intact one is accepted and the cut one rejected (scoring's decode would fail on it)
    assert (whole.reason, whole.format, whole.width, whole.height) == (None, fmt, 64, 48)
    assert cut.reason is not None and cut.reason.startswith("truncated or corrupt image: image file is truncated")


def _jpeg_with_embedded_jpeg() -> bytes:
    """A 96x64 JPEG carrying a complete small JPEG in an APP15 segment, as an EXIF thumbnail would."""
    import random

    from PIL import Image

    noise = random.Random(7).randbytes(96 * 64 * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (96, 64), noise).save(buf, "JPEG", quality=90)
    main = buf.getvalue()
    thumbnail = _image_bytes("RGB", (8, 8), "JPEG", (1, 2, 3))
    segment = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    return main[:2] + segment + main[2:]


def test_a_jpeg_with_data_after_its_end_marker_is_accepted() -> None:
    from spark_jobs.ingest import inspect_image

    # Given whole JPEGs followed by trailing data (a motion photo's video, a camera trailer, zero padding)
    jpeg = _jpeg_with_embedded_jpeg()
    for trailer in (b"\x00\x00\x00\x18ftypmp42" + b"x" * 190, b"\x00" * 4096, b"\xff\xd8\xff junk \xff\xd9 tail"):
        # When the door check opens it
        facts = inspect_image(jpeg + trailer, max_pixels=MAX_PIXELS)
        # Then it is an image (Pillow decodes it whole)
        assert (facts.reason, facts.format, facts.width, facts.height) == (None, "JPEG", 96, 64), trailer[:12]


def test_a_cut_off_jpeg_is_rejected_even_with_an_end_marker_inside_it() -> None:
    from spark_jobs.ingest import inspect_image

    # Given a JPEG whose embedded thumbnail has its own end marker, cut off inside its scan or just
    # before its end marker, alone and followed by bytes
    jpeg = _jpeg_with_embedded_jpeg()
    assert jpeg.count(b"\xff\xd9") >= 2
    for cut in (jpeg[: len(jpeg) * 3 // 4], jpeg[:-10], jpeg[:-2], jpeg[: len(jpeg) * 3 // 4] + b"x" * 300):
        # When the door check opens it
        facts = inspect_image(cut, max_pixels=MAX_PIXELS)
        # Then it is rejected as truncated
        assert facts.reason is not None and facts.reason.startswith("truncated JPEG: the end-of-image marker"), (
            len(cut),
            facts.reason,
        )
