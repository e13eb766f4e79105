"""The benchmark's images: reproducible for a seed, sized like photos, compressing like photos."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from include.bench.data import describe, generate_images, link_count, link_set

pytestmark = pytest.mark.unit


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in generate_images(tmp_path / "a", 3, seed=5)]
    again = [p.read_bytes() for p in generate_images(tmp_path / "b", 3, seed=5)]
    other = [p.read_bytes() for p in generate_images(tmp_path / "c", 3, seed=6)]
    assert first == again
    assert first != other


def test_per_image_seeds_give_the_same_files_for_any_number_of_processes(tmp_path: Path) -> None:
    one = [p.read_bytes() for p in generate_images(tmp_path / "p1", 5, seed=5, processes=1)]
    two = [p.read_bytes() for p in generate_images(tmp_path / "p2", 5, seed=5, processes=2)]
    stream = [p.read_bytes() for p in generate_images(tmp_path / "s", 5, seed=5)]
    assert one == two
    assert len(set(one)) == 5
    # A folder is reused only for the scheme that wrote it.
    assert one != stream
    again = generate_images(tmp_path / "s", 5, seed=5, processes=2)
    assert [p.read_bytes() for p in again] == one


def test_images_are_photo_sized_jpegs_that_compress_like_photos(tmp_path: Path) -> None:
    files = generate_images(tmp_path / "img", 6, seed=1)
    for path in files:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert 256 <= img.width <= 512 and 256 <= img.height <= 512
    # Flat synthetic drawings compress to well under 0.3 bits per pixel; camera photos to about 1-4.
    assert 0.5 <= describe(files)["bits_per_pixel"] <= 4.0


def test_link_set_holds_every_file_once_per_copy(tmp_path: Path) -> None:
    files = generate_images(tmp_path / "img", 2, seed=1)
    folder = link_set(files, tmp_path / "x3", copies=3)
    linked = sorted(folder.iterdir())
    assert len(linked) == 6
    assert {p.read_bytes() for p in linked} == {p.read_bytes() for p in files}


def test_link_count_reads_the_files_in_order_again_until_the_count(tmp_path: Path) -> None:
    files = generate_images(tmp_path / "img", 3, seed=1)
    folder = link_count(files, tmp_path / "seven", 7)
    linked = sorted(folder.iterdir())
    expected = [f"c000_{f.name}" for f in files] + [f"c001_{f.name}" for f in files] + [f"c002_{files[0].name}"]
    assert [p.name for p in linked] == expected
    assert [p.read_bytes() for p in linked] == [files[i % 3].read_bytes() for i in range(7)]
    # no more than the files: the first ones under their own names, as link_set gives them
    assert sorted(p.name for p in link_count(files, tmp_path / "two", 2).iterdir()) == [f.name for f in files[:2]]
    with pytest.raises(ValueError, match="no files to link"):
        link_count([], tmp_path / "none", 1)
