"""Open Inference Protocol endpoints against a real onnxruntime model."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient


def reference(models_dir: Path, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(models_dir / "linear-test" / "1" / "model.onnx"))
    return session.run(None, {"image": batch})


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "seedserve"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata(client: TestClient) -> None:
    meta = client.get("/v2/models/linear-test").json()
    assert meta["name"] == "linear-test"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert client.get("/v2/models/linear-test/versions/1").json() == meta
    assert client.get("/v2/models/linear-test/ready").status_code == 200
    assert client.get("/v2/models/linear-test/versions/1/ready").status_code == 200
    assert client.get("/v2/models/linear-test/versions/2/ready").status_code == 404
    assert client.get("/v2/models/linear-test/config").json()["task"] == "classification"


@pytest.mark.parametrize("nested", [False, True])
def test_infer_json_matches_onnxruntime(client: TestClient, models_dir: Path, nested: bool) -> None:
    batch = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    data = batch.tolist() if nested else batch.reshape(-1).tolist()
    body = {
        "id": "abc",
        "inputs": [{"name": "image", "shape": [3, 1, 28, 28], "datatype": "FP32", "data": data}],
    }
    response = client.post("/v2/models/linear-test/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "linear-test"
    assert answer["model_version"] == "1"
    assert answer["id"] == "abc"
    logits, probabilities = reference(models_dir, batch)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["logits"]["shape"] == [3, 10]
    assert outputs["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.array(outputs["logits"]["data"]).reshape(3, 10), logits, rtol=1e-6
    )
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 10), probabilities, rtol=1e-6
    )


def test_infer_selected_output_and_version_path(client: TestClient) -> None:
    body = {
        "inputs": [
            {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    answer = client.post("/v2/models/linear-test/versions/1/infer", json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    assert abs(sum(answer["outputs"][0]["data"]) - 1.0) < 1e-5


def binary_request(
    batch: np.ndarray, outputs: list[dict] | None, request_binary: bool
) -> tuple[bytes, int]:
    raw = batch.astype("<f4").tobytes()
    header: dict = {
        "inputs": [
            {
                "name": "image",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    if request_binary:
        header["parameters"] = {"binary_data_output": True}
    head = orjson.dumps(header)
    return head + raw, len(head)


def test_infer_binary_in_binary_out(client: TestClient, models_dir: Path) -> None:
    batch = np.random.default_rng(2).random((4, 1, 28, 28), dtype=np.float32)
    body, length = binary_request(batch, None, request_binary=True)
    response = client.post(
        "/v2/models/linear-test/infer",
        content=body,
        headers={
            "Inference-Header-Content-Length": str(length),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:json_length])
    blob = response.content[json_length:]
    logits, probabilities = reference(models_dir, batch)
    offset = 0
    got = {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        got[output["name"]] = np.frombuffer(blob[offset : offset + size], "<f4").reshape(
            output["shape"]
        )
        offset += size
    assert offset == len(blob)
    np.testing.assert_array_equal(got["logits"], logits)
    np.testing.assert_array_equal(got["probabilities"], probabilities)


def test_infer_binary_in_mixed_out(client: TestClient, models_dir: Path) -> None:
    batch = np.zeros((1, 1, 28, 28), dtype=np.float32)
    outputs = [
        {"name": "logits", "parameters": {"binary_data": False}},
        {"name": "probabilities", "parameters": {"binary_data": True}},
    ]
    body, length = binary_request(batch, outputs, request_binary=False)
    response = client.post(
        "/v2/models/linear-test/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(length)},
    )
    json_length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:json_length])
    assert "data" in header["outputs"][0]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 40
    assert len(response.content) == json_length + 40


def test_bytes_codec_round_trip() -> None:
    from service.protocol.v2 import from_binary, to_bytes

    array = np.array([b"a", b"hello", b""], dtype=object)
    raw = to_bytes(array, "BYTES")
    assert raw[:4] == struct.pack("<I", 1)
    back = from_binary(memoryview(raw), "BYTES", 3, "x")
    assert back.tolist() == [b"a", b"hello", b""]
