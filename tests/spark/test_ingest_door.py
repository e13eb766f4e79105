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

pytestmark = pytest.mark.spark

MAX_PIXELS = 50_000  # the bomb below has 90,000 pixels; every other image is far smaller


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, color: object, **save: object) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def _corpus(landing: Path) -> dict[str, tuple[str, ...]]:
    """Write the corpus; return, per relative path, what must happen to it (written by hand)."""
    import numpy as np
    from PIL import Image

    files: dict[str, bytes] = {}
    expect: dict[str, tuple[str, ...]] = {}

    def accept(name: str, data: bytes, fmt: str, mode: str, size: tuple[int, int]) -> None:
        files[name] = data
        expect[name] = ("images", fmt, mode, str(size[0]), str(size[1]))

    def reject(name: str, data: bytes, reason: str) -> None:
        files[name] = data
        expect[name] = ("rejects", reason)

    jpeg = _image_bytes("RGB", (64, 48), "JPEG", (200, 10, 10))
    png = _image_bytes("RGB", (64, 48), "PNG", (10, 200, 10))
    reject("zero.jpg", b"", "empty file (0 bytes)")
    reject("notes.txt", b"just some text, not a picture\n", "not an image")
    reject("cut.jpg", jpeg[:-10], "truncated JPEG: the end-of-image marker is missing")
    reject("cut-in-header.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt image")
    reject("cut.png", png[: len(png) // 2], "truncated or corrupt image")
    reject("portrait.ppm", _image_bytes("RGB", (30, 20), "PPM", (1, 2, 3)), "unsupported format PPM")
    reject("bomb.png", _image_bytes("L", (300, 300), "PNG", 7), "decompression bomb: 300x300 = 90000 pixels")

    accept("plain.jpg", jpeg, "JPEG", "RGB", (64, 48))
    accept("plain.png", png, "PNG", "RGB", (64, 48))
    accept("cmyk.jpg", _image_bytes("CMYK", (40, 30), "JPEG", (0, 50, 100, 0)), "JPEG", "CMYK", (40, 30))
    sixteen = io.BytesIO()
    Image.fromarray(np.full((24, 32), 40000, dtype=np.uint16)).save(sixteen, "PNG")
    accept("sixteen-bit.png", sixteen.getvalue(), "PNG", "I;16", (32, 24))
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=0)
    accept("palette-transparent.png", buf.getvalue(), "PNG", "P", (20, 20))
    accept("a-rgba.png", _image_bytes("RGBA", (16, 16), "PNG", (1, 2, 3, 128)), "PNG", "RGBA", (16, 16))
    rotated = Image.new("RGB", (40, 20), (9, 9, 200))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", exif=exif)
    accept("exif-rotated.jpg", buf.getvalue(), "JPEG", "RGB", (20, 40))
    frames = [Image.new("P", (12, 10), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    accept("animated.gif", buf.getvalue(), "GIF", "P", (12, 10))
    accept("gray.jpg", _image_bytes("L", (33, 22), "JPEG", 90), "JPEG", "L", (33, 22))
    accept("pic.webp", _image_bytes("RGB", (26, 18), "WEBP", (5, 100, 5)), "WEBP", "RGB", (26, 18))
    accept("pic.tiff", _image_bytes("RGB", (27, 19), "TIFF", (5, 5, 100)), "TIFF", "RGB", (27, 19))
    accept("pic.bmp", _image_bytes("RGB", (28, 20), "BMP", (50, 5, 5)), "BMP", "RGB", (28, 20))
    accept("UPPER.JPG", _image_bytes("RGB", (29, 21), "JPEG", (1, 1, 1)), "JPEG", "RGB", (29, 21))
    accept("with space.png", _image_bytes("RGB", (30, 22), "PNG", (2, 2, 2)), "PNG", "RGB", (30, 22))
    accept("nested/café ünï 写真.png", _image_bytes("RGB", (31, 23), "PNG", (3, 3, 3)), "PNG", "RGB", (31, 23))
    # The same bytes as a-rgba.png under another (later-sorting) name, in a sub-folder: one image, two paths.
    files["nested/copy of rgba.png"] = files["a-rgba.png"]
    expect["nested/copy of rgba.png"] = ("duplicate", "a-rgba.png")

    for name, data in files.items():
        target = landing / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return expect


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
        "and land the file again under a new name"
    )
    assert row["image_id"] is None and row["content"] is None


def test_a_file_deleted_after_it_landed_is_rejected_as_vanished(tmp_path: Path) -> None:
    from spark_jobs.ingest import inspect_file

    row = inspect_file(f"file:{tmp_path}/gone.png", 10, None, max_pixels=MAX_PIXELS, max_file_bytes=100)
    assert row["reason"].startswith("vanished: the file was deleted or renamed after it landed")
