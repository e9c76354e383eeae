"""Bad input never reaches onnxruntime: each case gets a 4xx JSON error naming the problem, and
the service keeps answering afterwards."""

from __future__ import annotations

import base64
import io
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

INFER = "/v2/models/linear-test/infer"
CLASSIFY = "/v1/models/linear-test/classify"


def tensor(**override: Any) -> dict[str, Any]:
    return {
        "name": "image",
        "shape": [1, 1, 28, 28],
        "datatype": "FP32",
        "data": [0.0] * 784,
        **override,
    }


def png(size: tuple[int, int] = (28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 0).save(buffer, format="PNG")
    return buffer.getvalue()


# (method, path, kwargs, status, words the error must contain)
CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("post", "/v2/models/nope/infer", {"json": {"inputs": [tensor()]}}, 404, "nope"),
    ("get", "/v2/models/nope", {}, 404, "nope"),
    ("get", "/v2/models/linear-test/versions/7", {}, 404, "version"),
    ("get", "/v2/models/linear-test/versions/abc/ready", {}, 404, "version"),
    ("get", "/v2/models/..%2F..%2Fetc/ready", {}, 404, ""),
    ("post", INFER, {"content": b"{not json"}, 400, "JSON"),
    ("post", INFER, {"content": b"[1, 2]"}, 400, "object"),
    ("post", INFER, {"json": {}}, 400, "inputs"),
    ("post", INFER, {"json": {"inputs": []}}, 400, "inputs"),
    ("post", INFER, {"json": {"inputs": [tensor()], "extra": 1}}, 400, "extra"),
    ("post", INFER, {"json": {"inputs": [tensor(name="pixels")]}}, 400, "pixels"),
    ("post", INFER, {"json": {"inputs": [tensor(datatype="FP64")]}}, 400, "FP32"),
    ("post", INFER, {"json": {"inputs": [tensor(datatype="FLOAT")]}}, 400, "datatype"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[1, 784], data=[0.0] * 784)]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[2, 1, 28, 28])]}}, 400, "elements"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[-1, 1, 28, 28])]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(shape="1x784")]}}, 400, "shape"),
    ("post", INFER, {"json": {"inputs": [tensor(data=["a"] * 784)]}}, 400, "string"),
    ("post", INFER, {"json": {"inputs": [tensor(data=[[0.0] * 700, [0.0] * 84])]}}, 400, "ragged"),
    ("post", INFER, {"json": {"inputs": [tensor(data=[1e39] * 784)]}}, 400, "infinity"),
    ("post", INFER, {"json": {"inputs": [tensor(shape=[0, 1, 28, 28], data=[])]}}, 400, "batch"),
    (
        "post",
        INFER,
        {"json": {"inputs": [tensor(shape=[65, 1, 28, 28], data=[0.0] * 784 * 65)]}},
        400,
        "batch size",
    ),
    ("post", INFER, {"json": {"inputs": [tensor(), tensor()]}}, 400, "twice"),
    ("post", INFER, {"json": {"inputs": [tensor()], "outputs": [{"name": "nope"}]}}, 400, "nope"),
    (
        "post",
        INFER,
        {"json": {"inputs": [tensor(data=None, parameters={"binary_data_size": 3136})]}},
        400,
        "data",
    ),
    (
        "post",
        INFER,
        {
            "content": orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 1, 28, 28],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 3136},
                        }
                    ]
                }
            )
            + b"\0" * 100,
            "headers": {"Inference-Header-Content-Length": "108"},
        },
        400,
        "",
    ),
    (
        "post",
        INFER,
        {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}},
        400,
        "Inference-Header-Content-Length",
    ),
    ("post", INFER, {"content": b"x" * (3 * 1024 * 1024)}, 413, "limit"),
    ("post", CLASSIFY, {"content": b"{}"}, 400, "image"),
    ("post", CLASSIFY, {"json": {"image": "!!!"}}, 400, "base64"),
    (
        "post",
        CLASSIFY,
        {"json": {"image": base64.b64encode(b"not an image").decode()}},
        400,
        "image",
    ),
    ("post", CLASSIFY, {"json": {"image": base64.b64encode(png()[:40]).decode()}}, 400, "image"),
    (
        "post",
        CLASSIFY,
        {"json": {"images": [base64.b64encode(png()).decode()] * 65}},
        400,
        "at most",
    ),
    ("post", CLASSIFY, {"json": {"pixels": [[0.0, "x"]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [[0.0, 300.0]]}}, 400, "pixels"),
    ("post", CLASSIFY, {"json": {"pixels": [0.0, 1.0]}}, 400, "2-D"),
    ("post", CLASSIFY, {"json": {"image": "", "pixels": [[0]]}}, 400, "exactly one"),
    ("post", CLASSIFY, {"json": {"picture": "x"}}, 400, "picture"),
    (
        "post",
        CLASSIFY,
        {"files": {"file": ("x.png", b"GIF89a-broken", "image/png")}},
        400,
        "file[0]",
    ),
    ("post", CLASSIFY, {"files": {"other": ("x.png", png(), "image/png")}}, 400, "no image"),
    (
        "post",
        CLASSIFY,
        {"content": b"abc", "headers": {"Content-Type": "text/plain"}},
        415,
        "content type",
    ),
    ("post", CLASSIFY + "?top_k=0", {"json": {"pixels": [[0.0]]}}, 422, "top_k"),
    ("post", CLASSIFY + "?top_k=1000", {"json": {"pixels": [[0.0]]}}, 400, "top_k"),
    ("post", CLASSIFY + "?reframe=maybe", {"json": {"pixels": [[0.0]]}}, 422, "reframe"),
    ("post", "/v1/models/nope/classify", {"json": {"pixels": [[0.0]]}}, 404, "nope"),
    (
        "post",
        "/v1/models/linear-test/classify?version=9",
        {"json": {"pixels": [[0.0]]}},
        404,
        "version",
    ),
    ("get", "/v1/models/nope", {}, 404, "nope"),
    ("get", "/no/such/route", {}, 404, ""),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), CASES)
def test_bad_input_gets_clear_error(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error
    assert words.lower() in error.lower(), error
    assert client.get("/v2/health/ready").status_code == 200


def test_decompression_bomb_is_refused(client: TestClient, settings: Any) -> None:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000), 0).save(buffer, format="PNG")  # tiny file, 25 M pixels
    response = client.post(CLASSIFY, files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert "pixels" in response.json()["error"]


def test_errors_are_counted_by_outcome(client: TestClient) -> None:
    client.post(INFER, json={"inputs": [tensor(datatype="FP64")]})
    client.post(INFER, json={"inputs": [tensor()]})
    text = client.get("/metrics").text
    assert (
        'seedserve_inference_requests_total{model="linear-test",outcome="invalid",version="1"} 1.0'
        in text
    )
    assert (
        'seedserve_inference_requests_total{model="linear-test",outcome="success",version="1"} 1.0'
        in text
    )
