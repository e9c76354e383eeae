"""What the benchmark sends: one real test picture, as every request body a system accepts.

Every system gets the same picture: the V2 JSON body is byte for byte the same for us, the naive
handler and every peer (they all speak the Open Inference Protocol or are given a handler that
reads it); the binary body carries the same float32 tensor; the classify body the same picture
as a PNG. Without the MNIST files (a machine where `make data` did not run) a fixed random
picture stands in; the report says which.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from PIL import Image

from bench.loadgen import Request

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte"
MEAN, STD = 0.1307, 0.3081  # the shipped MNIST models' normalisation (their config.json)


@dataclass(frozen=True)
class Picture:
    pixels: np.ndarray  # (28, 28) uint8, white digit on black
    source: str

    @property
    def tensor(self) -> np.ndarray:
        """The normalised model input, (1, 1, 28, 28) float32."""
        x = (self.pixels.astype(np.float32) / 255.0 - MEAN) / STD
        return x.reshape(1, 1, 28, 28)


def test_picture(index: int = 0) -> Picture:
    """MNIST test picture `index` (a 7 for index 0), or a seeded random one without the data."""
    if MNIST_TEST.exists():
        raw = MNIST_TEST.read_bytes()
        offset = 16 + index * 784  # IDX header: magic, count, rows, cols
        pixels = np.frombuffer(raw, np.uint8, 784, offset).reshape(28, 28)
        return Picture(pixels.copy(), f"MNIST test image {index}")
    rng = np.random.default_rng(index)
    return Picture(rng.integers(0, 256, (28, 28), dtype=np.uint8), "random picture (no MNIST)")


def v2_json_body(tensor: np.ndarray, input_name: str = "image") -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "data": tensor.ravel().tolist(),
                }
            ]
        }
    )


def v2_binary_body(tensor: np.ndarray, input_name: str = "image") -> tuple[bytes, int]:
    """Binary tensor extension: JSON header, then the raw tensor; outputs asked for in binary."""
    raw = np.ascontiguousarray(tensor, dtype=np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, len(header)


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


JSON = {"Content-Type": "application/json"}


def v2_json_request(model: str, tensor: np.ndarray) -> Request:
    return Request("POST", f"/v2/models/{model}/infer", v2_json_body(tensor), JSON)


def v2_binary_request(model: str, tensor: np.ndarray) -> Request:
    body, header_length = v2_binary_body(tensor)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }
    return Request("POST", f"/v2/models/{model}/infer", body, headers)


def classify_request(model: str, picture: Picture) -> Request:
    body = orjson.dumps({"image": png_b64(picture.pixels)})
    return Request("POST", f"/v1/models/{model}/classify?top_k=3", body, JSON)
