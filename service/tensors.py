"""Open Inference Protocol datatypes and their numpy equivalents.

BF16 has no numpy type: inside the service a BF16 tensor is a uint16 array of its raw bits
(what the binary extension carries); `bf16_from_float` / `bf16_to_float` convert for JSON.
"""

from __future__ import annotations

import struct

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),  # the raw bits
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
V2_DATATYPES: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items() if k != "BF16"}


def bf16_from_float(values: np.ndarray) -> np.ndarray:
    """float32 values -> BF16 bits, rounded to nearest even (as onnxruntime's Cast does)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_to_float(bits: np.ndarray) -> np.ndarray:
    """BF16 bits -> float32 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def parse_bytes_elements(raw: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """BYTES elements in the binary form (each a 4-byte little-endian length, then its bytes)
    as an object array; ValueError when the data is cut short or `count` does not match."""
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ValueError("truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + length > len(raw):
            raise ValueError("BYTES element runs past its data")
        items.append(bytes(raw[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    if count is not None and len(items) != count:
        raise ValueError(f"{len(items)} BYTES elements, {count} needed")
    return np.array(items, dtype=object)
