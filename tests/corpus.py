"""A landing folder holding every case of ingest's door check, with what must happen to each file.

Shared by the door-check tests (local Spark) and the cluster run (tests/integration).
"""

from __future__ import annotations

import io
from pathlib import Path

MAX_PIXELS = 50_000  # the bomb below has 90,000 pixels; every other image is far smaller


def image_bytes(mode: str, size: tuple[int, int], fmt: str, color: object, **save: object) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def corpus(landing: Path) -> dict[str, tuple[str, ...]]:
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

    jpeg = image_bytes("RGB", (64, 48), "JPEG", (200, 10, 10))
    png = image_bytes("RGB", (64, 48), "PNG", (10, 200, 10))
    reject("zero.jpg", b"", "empty file (0 bytes)")
    reject("notes.txt", b"just some text, not a picture\n", "not an image")
    reject("cut.jpg", jpeg[:-10], "truncated JPEG: the end-of-image marker is missing")
    reject("cut-in-header.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt image")
    reject("cut.png", png[: len(png) // 2], "truncated or corrupt image")
    reject("portrait.ppm", image_bytes("RGB", (30, 20), "PPM", (1, 2, 3)), "unsupported format PPM")
    reject("bomb.png", image_bytes("L", (300, 300), "PNG", 7), "decompression bomb: 300x300 = 90000 pixels")

    accept("plain.jpg", jpeg, "JPEG", "RGB", (64, 48))
    accept("plain.png", png, "PNG", "RGB", (64, 48))
    accept("cmyk.jpg", image_bytes("CMYK", (40, 30), "JPEG", (0, 50, 100, 0)), "JPEG", "CMYK", (40, 30))
    sixteen = io.BytesIO()
    Image.fromarray(np.full((24, 32), 40000, dtype=np.uint16)).save(sixteen, "PNG")
    accept("sixteen-bit.png", sixteen.getvalue(), "PNG", "I;16", (32, 24))
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    palette.save(buf, "PNG", transparency=0)
    accept("palette-transparent.png", buf.getvalue(), "PNG", "P", (20, 20))
    accept("a-rgba.png", image_bytes("RGBA", (16, 16), "PNG", (1, 2, 3, 128)), "PNG", "RGBA", (16, 16))
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
    accept("gray.jpg", image_bytes("L", (33, 22), "JPEG", 90), "JPEG", "L", (33, 22))
    accept("pic.webp", image_bytes("RGB", (26, 18), "WEBP", (5, 100, 5)), "WEBP", "RGB", (26, 18))
    accept("pic.tiff", image_bytes("RGB", (27, 19), "TIFF", (5, 5, 100)), "TIFF", "RGB", (27, 19))
    accept("pic.bmp", image_bytes("RGB", (28, 20), "BMP", (50, 5, 5)), "BMP", "RGB", (28, 20))
    accept("UPPER.JPG", image_bytes("RGB", (29, 21), "JPEG", (1, 1, 1)), "JPEG", "RGB", (29, 21))
    accept("with space.png", image_bytes("RGB", (30, 22), "PNG", (2, 2, 2)), "PNG", "RGB", (30, 22))
    accept("nested/café ünï 写真.png", image_bytes("RGB", (31, 23), "PNG", (3, 3, 3)), "PNG", "RGB", (31, 23))
    # The same bytes as a-rgba.png under another (later-sorting) name, in a sub-folder: one image, two paths.
    files["nested/copy of rgba.png"] = files["a-rgba.png"]
    expect["nested/copy of rgba.png"] = ("duplicate", "a-rgba.png")

    for name, data in files.items():
        target = landing / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return expect
