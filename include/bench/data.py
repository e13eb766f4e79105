"""Benchmark images: JPEGs that compress like photos (smooth gradients, soft blobs, shapes,
sensor-like noise), a fixed seed, 256-512 px sides. Generated once per seed and count."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

STAMP = "images.json"


def render_photo(rng: np.random.Generator) -> Image.Image:
    """One photo-like RGB image: low-frequency colour fields, a few shapes, blur and grain."""
    width, height = (int(v) for v in rng.integers(256, 513, size=2))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs /= width
    ys /= height
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    slope = rng.uniform(-80, 80, size=(3, 2)).astype(np.float32)
    img = base[None, None, :] + xs[..., None] * slope[:, 0] + ys[..., None] * slope[:, 1]
    for _ in range(int(rng.integers(3, 7))):  # soft light and shadow
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.5)
        amp = rng.uniform(-70, 70, size=3).astype(np.float32)
        img += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None] * amp
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 2)), int(rng.integers(20, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            draw.polygon(
                [(x0, y0), (x0 + w, y0 + int(rng.integers(0, h))), (x0 + int(rng.integers(0, w)), y0 + h)], fill=fill
            )
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.0))))
    grain = rng.normal(0, float(rng.uniform(3, 7)), size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(pil, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def generate_images(folder: Path, count: int, seed: int, processes: int | None = None) -> list[Path]:
    """``count`` JPEGs in ``folder`` (reused when a previous run wrote the same seed and count).

    Without ``processes``, one random stream renders the images in order (the CPU benchmark's
    images). With ``processes``, image ``i`` gets its own stream seeded by ``(seed, i)`` and a pool of
    that many processes renders them: the same files for any number of processes, different files
    from the single-stream ones (a many-core machine generates thousands in seconds, not minutes).
    """
    wanted: dict[str, object] = {"count": count, "seed": seed, "version": 1}
    if processes is not None:
        wanted["scheme"] = "per-image"
    stamp = folder / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return sorted(folder.glob("*.jpg"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if processes is None:
        rng = np.random.default_rng(seed)
        files = [_write(folder, i, rng) for i in range(count)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: a forked child of a driver with a Spark session inherits its py4j
        # socket and, exiting, reset the driver's connection to the JVM ("Connection reset by peer")
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, processes), mp_context=spawn) as pool:
            files = list(pool.map(_write_seeded, [(folder, i, seed) for i in range(count)], chunksize=64))
    stamp.write_text(json.dumps(wanted))
    log.info("generated %d photo-like JPEGs in %s", count, folder)
    return files


def _write(folder: Path, index: int, rng: np.random.Generator) -> Path:
    buf = io.BytesIO()
    render_photo(rng).save(buf, format="JPEG", quality=int(rng.integers(80, 93)))
    path = folder / f"img_{index:06d}.jpg"
    path.write_bytes(buf.getvalue())
    return path


def _write_seeded(job: tuple[Path, int, int]) -> Path:
    folder, index, seed = job
    return _write(folder, index, np.random.default_rng([seed, index]))


def link_set(files: list[Path], folder: Path, copies: int = 1) -> Path:
    """A folder holding ``copies`` hard links (a copy where links fail) of every file in ``files``."""
    return link_count(files, folder, copies * len(files))


def link_count(files: list[Path], folder: Path, count: int) -> Path:
    """A folder of ``count`` hard links to ``files`` in order, again from the first when ``count``
    exceeds them: then every link is named after its pass, ``c000_``, ``c001_``, ..."""
    if count and not files:
        raise ValueError(f"no files to link into {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        src = files[i % len(files)]
        _link(src, folder / (src.name if count <= len(files) else f"c{i // len(files):03d}_{src.name}"))
    return folder


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def describe(files: list[Path]) -> dict[str, float]:
    """Mean size, pixels and bits per pixel: how photo-like the compression is."""
    sizes, pixels = [], []
    for path in files:
        sizes.append(path.stat().st_size)
        with Image.open(path) as img:
            pixels.append(img.width * img.height)
    total_bits = 8 * sum(sizes)
    return {
        "count": len(files),
        "mean_bytes": round(sum(sizes) / len(files), 1),
        "mean_pixels": round(sum(pixels) / len(files), 1),
        "bits_per_pixel": round(total_bits / sum(pixels), 3),
    }
