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
    """Decode image bytes into a normalised float32 CHW array of ``size`` x ``size``."""
    return normalise(decode_pixels(data, size), mean, std)


def decode_pixels(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes into an 8-bit RGB HWC array of ``size`` x ``size``, not yet normalised
    (a GPU predictor normalises on the device: it is about a third of the CPU of decoding a
    224 px image, and the array is a quarter of the float32 one).

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
    return np.asarray(rgb, dtype=np.uint8)


def normalise(pixels: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """8-bit HWC pixels as float32 CHW: scaled to [0, 1], minus ``mean``, over ``std`` per channel
    (the same float32 operations, in the same order, as :class:`TorchPredictor` on a device)."""
    import numpy as np

    scaled = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
    normalised = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)
