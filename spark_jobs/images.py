"""Image decoding shared by ingest (header checks) and scoring (decode + preprocess)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (palette, CMYK, 16-bit, grayscale, RGBA) as 8-bit RGB, EXIF orientation applied."""
    import numpy as np
    from PIL import Image, ImageOps

    oriented = ImageOps.exif_transpose(img)
    if oriented.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bit first (a plain convert would clip at 255).
        wide = np.asarray(oriented, dtype=np.float32)
        peak = 65535.0 if oriented.mode.startswith("I;16") else max(float(wide.max()), 1.0)
        oriented = Image.fromarray((wide / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    return oriented.convert("RGB")


def decode_for_model(
    data: bytes, size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """Decode image bytes into a normalised float32 CHW array of ``size`` x ``size``.

    JPEGs are decoded in draft mode near the target size (about half the decode time).
    """
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        rgb = to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    normalised = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)
