"""Pictures a request uploads, for every route that takes them (classify, VAE reconstruction):
multipart files or JSON (`image`, `images` base64, or `pixels`), decoded to grayscale arrays
under the service's limits, and the OpenAPI body that documents them."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from starlette.datastructures import UploadFile

from service.deps import JSON, require_media_type
from service.errors import InvalidInput
from service.settings import Settings
from service.tasks.image_preprocessing import decode_image, pixels_to_array

PICTURE_TYPES = ("multipart/form-data", JSON)  # what a route taking pictures accepts


def pictures_body(**json_properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that takes pictures: multipart files or JSON."""
    pixels = "(H, W) or (N, H, W) intensities in [0, 1] or 0-255."
    files = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "One or more PNG/JPEG pictures (repeat the field).",
    }
    as_json = {
        "image": {"type": "string", "description": "A base64 PNG/JPEG."},
        "images": {"type": "array", "items": {"type": "string"}},
        "pixels": {"type": "array", "description": pixels},
        **json_properties,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": files},
                    }
                },
                JSON: {"schema": {"type": "object", "properties": as_json}},
            },
        }
    }


async def read_images(request: Request, settings: Settings) -> list[np.ndarray]:
    """Every picture of the request as grayscale (H, W) arrays in [0, 1]."""
    limit = settings.max_images_per_request
    if require_media_type(request, PICTURE_TYPES) == JSON:
        images = _from_json(await request.body(), settings, limit)
    else:
        images = await _from_multipart(request, settings, limit)
    if not images:
        raise InvalidInput("no image in the request", param="file")
    return images


async def _from_multipart(request: Request, settings: Settings, limit: int) -> list[np.ndarray]:
    try:
        form = await request.form(max_files=limit, max_fields=limit + 8)
    except Exception as exc:  # starlette raises MultiPartException/HTTPException for bad forms
        raise InvalidInput(
            f"malformed multipart body: {getattr(exc, 'detail', exc)}", param="file"
        ) from None
    try:
        files = form.getlist("file")
        if len(files) > limit:
            raise InvalidInput(
                f"at most {limit} images per request, got {len(files)}", param="file"
            )
        images = []
        for i, item in enumerate(files):
            if not isinstance(item, UploadFile):
                raise InvalidInput(
                    f"file[{i}] must be an uploaded file, not a text field", param="file"
                )
            images.append(decode_image(await item.read(), settings.max_image_pixels, f"file[{i}]"))
        return images
    finally:
        await form.close()


def _from_json(body: bytes, settings: Settings, limit: int) -> list[np.ndarray]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", param="body") from None
    if not isinstance(obj, dict):
        raise InvalidInput("request body must be a JSON object", param="body")
    unknown = set(obj) - {"image", "images", "pixels"}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}", param=sorted(unknown)[0])
    if len([k for k in ("image", "images", "pixels") if k in obj]) != 1:
        raise InvalidInput("give exactly one of image, images or pixels", param="image")
    if "pixels" in obj:
        return _pixel_images(obj["pixels"], limit)
    encoded: Any = [obj["image"]] if "image" in obj else obj["images"]
    field = "image" if "image" in obj else "images"
    if not isinstance(encoded, list) or not all(isinstance(x, str) for x in encoded):
        raise InvalidInput(f"{field} must be base64 strings", param=field)
    if len(encoded) > limit:
        raise InvalidInput(f"at most {limit} images per request, got {len(encoded)}", param=field)
    return [
        decode_image(_b64(text, f"{field}[{i}]"), settings.max_image_pixels, f"{field}[{i}]")
        for i, text in enumerate(encoded)
    ]


def _pixel_images(pixels: Any, limit: int) -> list[np.ndarray]:
    depth, probe = 0, pixels
    while isinstance(probe, list) and probe:
        depth, probe = depth + 1, probe[0]
    if depth == 3:
        if len(pixels) > limit:
            raise InvalidInput(
                f"at most {limit} images per request, got {len(pixels)}", param="pixels"
            )
        return [pixels_to_array(p, f"pixels[{i}]") for i, p in enumerate(pixels)]
    return [pixels_to_array(pixels)]


def _b64(text: str, where: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]  # a data URL from a browser canvas
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64", param=where) from None
