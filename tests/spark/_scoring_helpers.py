"""Shared pieces of the scoring tests: sample images as a DataFrame, and an independent reference
preprocessing written with PIL and numpy only (not through spark_jobs.images)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from include.sample_data import iter_samples

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def write_samples(folder: Path, count: int, seed: int) -> list[Path]:
    """Generated JPEG/PNG files of several sizes, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for sample in iter_samples(count, seed):
        path = folder / sample.file
        path.write_bytes(sample.data)
        files.append(path)
    return files


def images_frame(spark: SparkSession, files: list[Path], partitions: int = 2) -> DataFrame:
    """The columns score_images reads, one row per file; image_id is the file name here."""
    rows: list[tuple[Any, ...]] = [(f.name, f"file:{f}", bytearray(f.read_bytes())) for f in files]
    frame = spark.createDataFrame(rows, "image_id string, path string, content binary")
    return frame.repartition(partitions)


def reference_pixels(path: Path, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """HWC float32: EXIF orientation, RGB, JPEG draft at the target size, bilinear resize, normalise."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(path.read_bytes())) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((pixels - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)).astype(np.float32)
