"""spark_jobs.images against an independent PIL + numpy reference, bit for bit, on every kind of
image ingest accepts (EXIF-rotated, CMYK, 16-bit, palette, RGBA, animated, grayscale, ...)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from include.sample_data import iter_samples
from spark_jobs.images import decode_for_model, decode_pixels, normalise, to_rgb
from tests.corpus import corpus
from tests.spark._scoring_helpers import reference_pixels

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _accepted(tmp_path: Path) -> list[Path]:
    expected = corpus(tmp_path)
    return [tmp_path / name for name, what in expected.items() if what[0] == "images"]


def _not_16_bit(files: list[Path]) -> list[Path]:
    """The reference converts 16-bit grayscale the way Pillow does (clipping at 255); Rescore
    scales it (test below), so 16-bit files are compared there, not to the reference."""
    return [f for f in files if f.name != "sixteen-bit.png"]


@pytest.mark.parametrize("size", [8, 32, 64])
def test_decoding_gives_the_reference_bits_for_every_kind_of_image(tmp_path: Path, size: int) -> None:
    files = _not_16_bit(_accepted(tmp_path / "corpus"))
    for sample in iter_samples(12, seed=5):
        path = tmp_path / "samples" / sample.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)
        files.append(path)
    assert len(files) > 25
    for path in files:
        expected = reference_pixels(path, size, list(MEAN), list(STD)).transpose(2, 0, 1)
        got = decode_for_model(path.read_bytes(), size, MEAN, STD)
        assert got.dtype == np.float32 and got.flags.c_contiguous, path.name
        assert np.array_equal(got, expected), f"{path.name} at {size} px differs from the reference"


def test_16_bit_grayscale_is_scaled_to_8_bit_not_clipped(tmp_path: Path) -> None:
    """sixteen-bit.png holds 40,000 everywhere: 40000 / 65535 * 255 = 155.6, kept as 155 on every
    channel (Pillow's own conversion would clip it to 255)."""
    path = next(p for p in _accepted(tmp_path) if p.name == "sixteen-bit.png")
    pixels = decode_pixels(path.read_bytes(), 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert set(np.unique(pixels).tolist()) == {155}


def test_the_exif_orientation_is_applied(tmp_path: Path) -> None:
    """exif-rotated.jpg is stored 40 x 20 and displayed 20 x 40: decoding at its own size keeps the
    displayed orientation, so the stored image's columns come out as rows."""
    path = next(p for p in _accepted(tmp_path) if p.name == "exif-rotated.jpg")
    with Image.open(path) as img:
        assert img.size == (40, 20)
        assert to_rgb(img).size == (20, 40)


def test_normalise_matches_the_arithmetic_for_every_level_and_channel() -> None:
    """Each of the 256 levels in each channel, computed the documented way in float32."""
    pixels = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    pixels[:, :, 1] = pixels[:, :, 1][::-1]  # channels differ, so a channel mix-up shows
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    expected = ((scaled - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)
    assert np.array_equal(normalise(pixels, MEAN, STD), expected)
    # another mean and std in the same process get their own table
    other = normalise(pixels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert other[0, 0, 0] == np.float32(-1.0) and other[0, 15, 15] == np.float32(1.0)


def test_normalise_refuses_anything_but_8_bit_rgb_pixels() -> None:
    with pytest.raises(ValueError, match=r"8-bit H x W x 3 pixels, got float32 \(4, 4, 3\)"):
        normalise(np.zeros((4, 4, 3), dtype=np.float32), MEAN, STD)
    with pytest.raises(ValueError, match=r"got uint8 \(4, 4\)"):
        normalise(np.zeros((4, 4), dtype=np.uint8), MEAN, STD)


def test_an_upright_rgb_image_is_not_copied() -> None:
    """Most photos: no transpose and no conversion, so to_rgb hands back the decoded image itself
    (each needless copy of a decoded photo cost measurable time)."""
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (10, 20, 30)).save(buf, "JPEG")
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert to_rgb(img) is img
    assert decode_pixels(buf.getvalue(), 30).shape == (30, 30, 3)
