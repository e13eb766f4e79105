"""Image decoding shared by ingest (header checks) and scoring (decode + preprocess)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def decode_for_model(
    data: bytes, size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """Decode image bytes into a normalised float32 CHW array of ``size`` x ``size``.

    EXIF orientation is applied, any mode (palette, CMYK, 16-bit, grayscale, RGBA) becomes RGB,
    and JPEGs are decoded in draft mode near the target size (about half the decode time).
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit and 32-bit grayscale: scale to 8 bit before RGB conversion (PIL would clip).
            arr16 = np.asarray(img, dtype=np.float32)
            peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr16.max()), 1.0)
            img = Image.fromarray((arr16 / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
        rgb = img.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
