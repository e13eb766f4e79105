"""Generate labelled sample images: coloured shapes on coloured backgrounds.

Files go to ``$RESCORE_HOME/landing/`` (JPEG and PNG, several sizes); the true label of every
file is appended to ``$RESCORE_HOME/samples/truth.csv`` keyed by ``image_id`` (the sha256 of the
file's bytes, as ingest computes it), so accuracy can be measured after scoring.

    python -m include.sample_data --count 300 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from spark_jobs.contract import RescorePaths

log = logging.getLogger(__name__)

LABELS = ("circle", "square", "triangle", "cross")
SIZES = (64, 96, 128, 200)
TRUTH_FIELDS = ("image_id", "file", "label")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))


def _contrasting_pair(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    while True:
        bg, fg = _colour(rng), _colour(rng)
        if sum(abs(a - b) for a, b in zip(bg, fg, strict=True)) > 180:
            return bg, fg


def render_shape(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one ``label`` shape at a random place, scale and colour on a ``size`` px square."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}: use one of {LABELS}")
    bg, fg = _contrasting_pair(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    radius = size * float(rng.uniform(0.22, 0.40))
    cx = size * float(rng.uniform(0.38, 0.62))
    cy = size * float(rng.uniform(0.38, 0.62))
    angle = float(rng.uniform(0, math.pi / 2))
    if label == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
    elif label == "square":
        pts = [
            (cx + radius * math.cos(angle + k * math.pi / 2), cy + radius * math.sin(angle + k * math.pi / 2))
            for k in range(4)
        ]
        draw.polygon(pts, fill=fg)
    elif label == "triangle":
        pts = [
            (cx + radius * math.cos(angle + k * 2 * math.pi / 3), cy + radius * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        draw.polygon(pts, fill=fg)
    else:  # cross
        width = max(2, int(radius * 0.45))
        for k in range(2):
            a = angle + k * math.pi / 2
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fg, width=width)
    noise = rng.normal(0, 8, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius=0.5))


def encode(img: Image.Image, fmt: str, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Sample:
    image_id: str
    file: str
    label: str
    data: bytes


def iter_samples(count: int, seed: int) -> Iterator[Sample]:
    """Yield ``count`` encoded sample images with their labels, reproducibly for a seed."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = LABELS[int(rng.integers(0, len(LABELS)))]
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        fmt = "JPEG" if rng.random() < 0.7 else "PNG"
        data = encode(render_shape(label, size, rng), fmt, rng)
        ext = "jpg" if fmt == "JPEG" else "png"
        yield Sample(hashlib.sha256(data).hexdigest(), f"s{seed}_{i:06d}_{label}.{ext}", label, data)


def generate(paths: RescorePaths, count: int, seed: int) -> list[Sample]:
    """Write ``count`` images into the landing folder and record their labels.

    Each file is written under a temporary name and renamed, so ingest never sees half a file.
    """
    landing = Path(paths.landing)
    landing.mkdir(parents=True, exist_ok=True)
    truth_path = Path(paths.samples) / "truth.csv"
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not truth_path.exists()
    written = []
    with truth_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(TRUTH_FIELDS)
        for sample in iter_samples(count, seed):
            target = landing / sample.file
            tmp = landing / f".{sample.file}.tmp"
            tmp.write_bytes(sample.data)
            os.replace(tmp, target)
            writer.writerow((sample.image_id, sample.file, sample.label))
            written.append(sample)
    log.info("wrote %d images to %s (labels in %s)", len(written), landing, truth_path)
    return written


def read_truth(paths: RescorePaths) -> dict[str, str]:
    """``image_id -> label`` for every image the generator wrote under this home."""
    truth_path = Path(paths.samples) / "truth.csv"
    if not truth_path.exists():
        return {}
    with truth_path.open(newline="") as fh:
        return {row["image_id"]: row["label"] for row in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=None, help="RESCORE_HOME (default: $RESCORE_HOME or var/)")
    parser.add_argument("--count", type=int, default=200, help="images to write (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; a new seed gives new images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = RescorePaths(args.home) if args.home else RescorePaths.from_env()
    generate(paths, args.count, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
