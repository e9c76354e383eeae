"""Turning a user's picture into the tensor a classifier was trained on.

Training images are light strokes on a dark 28x28 background. A user's picture can be any size,
dark on light, with the object anywhere in the frame; MNIST's documentation says its digits were
size-normalised to fit a 20x20 box (keeping the aspect ratio) and centred in 28x28 by centre of
mass. We do the same, so a phone photo of a digit reads like a test image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge

FORMATS = {"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"}
Reframe = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class ImageSpec:
    """The `preprocessing` section of a classifier's config.json."""

    height: int = 28
    width: int = 28
    mean: float = 0.0
    std: float = 1.0
    background: str = "dark"  # the training images' background
    center: str = "mass"  # "mass": MNIST's 20x20 box + centre of mass; "box": fit the bounding box

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ImageSpec:
        return cls(
            height=int(section.get("height", 28)),
            width=int(section.get("width", 28)),
            mean=float(section.get("mean", 0.0)),
            std=float(section.get("std", 1.0)),
            background=str(section.get("background", "dark")),
            center=str(section.get("center", "mass")),
        )


def decode_image(data: bytes, max_pixels: int, where: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/... bytes into grayscale float32 in [0, 1], shape (H, W)."""
    if not data:
        raise InvalidInput(f"{where} is empty", param=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise InvalidInput(f"{where}: {image.format} images are not accepted", param=where)
            if image.width * image.height > max_pixels:
                raise PayloadTooLarge(
                    f"{where} is {image.width}x{image.height} pixels; the limit is {max_pixels}",
                    param=where,
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{where} is not a readable image ({exc})", param=where) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PayloadTooLarge(f"{where} decompresses to too many pixels", param=where) from None
    return to_gray(image)


def to_gray(image: Image.Image) -> np.ndarray:
    """Grayscale in [0, 1]; transparent areas take the colour opposite to the strokes."""
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
        opaque = alpha > 0.5
        ink = float(gray[opaque].mean()) if opaque.any() else 0.0
        background = 0.0 if ink > 0.5 else 1.0  # light strokes go on black, dark ones on white
        composed: np.ndarray = gray * alpha + background * (1.0 - alpha)
        return composed
    return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)


def pixels_to_array(pixels: Any, where: str = "pixels") -> np.ndarray:
    """A JSON pixel array (H, W) with intensities in [0, 1] (or 0-255 integers)."""
    try:
        array = np.asarray(pixels, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where} must be a 2-D array of numbers", param=where) from None
    if array.ndim != 2 or min(array.shape) < 1:
        raise InvalidInput(
            f"{where} must be a 2-D array, got shape {list(array.shape)}", param=where
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where} contains NaN or infinity", param=where)
    if array.min() < 0 or array.max() > 255:
        raise InvalidInput(f"{where} values must lie in [0, 1] or [0, 255]", param=where)
    if array.max() > 1.0:
        array = array / 255.0
    return array.astype(np.float32)


def preprocess(gray: np.ndarray, spec: ImageSpec, reframe: Reframe = "auto") -> np.ndarray:
    """(H, W) grayscale in [0, 1] -> normalised (1, height, width) float32, as in training."""
    if spec.background == "dark" and _has_light_background(gray):
        gray = 1.0 - gray
    same_size = gray.shape == (spec.height, spec.width)
    if reframe == "always" or (reframe == "auto" and not same_size):
        gray = reframe_object(gray, spec)
    elif not same_size:
        gray = _resize(gray, spec.width, spec.height)
    return ((gray - spec.mean) / spec.std).astype(np.float32)[None]


def _has_light_background(gray: np.ndarray) -> bool:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border)) > 0.5


def reframe_object(gray: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Crop to the object (light on dark), scale it into the frame and centre it."""
    height, width = spec.height, spec.width
    ink = gray > 0.1 * float(gray.max()) if gray.max() > 0 else np.zeros_like(gray, dtype=bool)
    if not ink.any():
        return np.zeros((height, width), dtype=np.float32)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # MNIST: a 20x20 box in the 28x28 frame; otherwise the object fills the frame.
    box = round(min(height, width) * 20 / 28) if spec.center == "mass" else min(height, width)
    scale = box / max(crop.shape)
    new_h, new_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    patch = _resize(crop, new_w, new_h)
    frame = np.zeros((height, width), dtype=np.float32)
    if spec.center == "mass":
        total = float(patch.sum())
        ys, xs = np.indices(patch.shape)
        cy = float((ys * patch).sum() / total) if total else new_h / 2
        cx = float((xs * patch).sum() / total) if total else new_w / 2
        top = round(height / 2 - cy)
        left = round(width / 2 - cx)
        top = min(max(top, 0), height - new_h)
        left = min(max(left, 0), width - new_w)
    else:
        top, left = (height - new_h) // 2, (width - new_w) // 2
    frame[top : top + new_h, left : left + new_w] = patch
    return frame


def _resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(
        image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32
    ).clip(0, 1)
