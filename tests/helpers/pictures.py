"""Pictures as the tests upload them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_of(pixels: np.ndarray) -> bytes:
    """A grey PNG of `pixels` in [0, 1] (rounded to the nearest of 256 levels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()
