"""Protocol details the official clients depend on: the health bodies KServe's client reads,
the `model_name` / `model_version` its SDK puts in the body, Triton's raw binary request, and
Triton's statistics extension, through `tritonclient` and KServe's `InferenceRESTClient`
against a real server."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from helpers import model_zoo as zoo
from helpers.live_server import ROOT, Server, live_server
from helpers.onnx_builders import write_classifier
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.settings import Settings

RAW = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 28, 28), dtype=np.float32)


def json_body(batch: np.ndarray, **fields: object) -> dict:
    tensor = {"name": "image", "shape": list(batch.shape), "datatype": "FP32"}
    return {**fields, "inputs": [{**tensor, "data": batch.reshape(-1).tolist()}]}


def identity_bytes(repo: Path, name: str, width: int) -> Path:
    """text BYTES [batch, width] -> Identity -> same."""
    node = helper.make_node("Identity", ["text"], ["same"])
    inputs = [zoo.tensor("text", TensorProto.STRING, ["batch", width])]
    outputs = [zoo.tensor("same", TensorProto.STRING, ["batch", width])]
    return zoo.write_model(repo / name, zoo.graph_model(name, [node], inputs, outputs))


def binary_outputs(response: Any) -> dict[str, np.ndarray]:
    """The outputs of a binary-extension answer, every one of them binary."""
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    blob, offset, out = response.content[length:], 0, {}
    for tensor in header["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        assert "data" not in tensor, "every output of a raw request comes back binary"
        chunk = blob[offset : offset + size]
        if tensor["datatype"] == "BYTES":
            (n,) = struct.unpack_from("<I", chunk)
            out[tensor["name"]] = np.array([chunk[4 : 4 + n]], dtype=object)
        else:
            out[tensor["name"]] = np.frombuffer(chunk, dtype="<f4").reshape(tensor["shape"])
        offset += size
    assert offset == len(blob)
    return out


def json_outputs(response: Any) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("protocol") / "models"
    write_classifier(root, "linear-test")  # image FP32 [-1, 1, 28, 28]: one variable dim
    zoo.pad_needs_real_shape(root)  # x FP32 [-1, -1]: batch (one item) and one variable dim
    zoo.many_io(root)  # five inputs
    zoo.dynamic_hw_conv(root)  # [-1, 3, -1, -1]: two variable dims besides the batch
    identity_bytes(root, "one-string", 1)
    identity_bytes(root, "two-strings", 2)
    return root


@pytest.fixture(scope="module")
def app_client(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=repo, access_log=False))) as client:
        yield client


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    return app_client


# -- health bodies -------------------------------------------------------------------------------
def test_health_answers_carry_the_protocols_bodies(app_client: TestClient) -> None:
    live = app_client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert live.headers["content-type"] == "application/json"
    ready = app_client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    for path in ("/v2/models/linear-test/ready", "/v2/models/linear-test/versions/1/ready"):
        answer = app_client.get(path)
        assert (answer.status_code, answer.json()) == (200, {"name": "linear-test", "ready": True})
    missing = app_client.get("/v2/models/linear-test/versions/7/ready")
    assert missing.status_code == 404 and "7" in missing.json()["error"]
    assert "statistics" in app_client.get("/v2").json()["extensions"]


def test_not_ready_says_so_in_the_body(tmp_path: Path) -> None:
    (write_classifier(tmp_path, "broken") / "1" / "model.onnx").write_bytes(b"not onnx")
    settings = Settings(models_dir=tmp_path, access_log=False)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/v2/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"ready": False})
        assert client.get("/v2/health/live").json() == {"live": True}
        model = client.get("/v2/models/broken/ready")
        assert model.status_code == 503
        body = model.json()
        assert body["name"] == "broken" and body["ready"] is False
        assert "model.onnx" in body["error"], "the reason stays in `error`"


# -- model_name / model_version in the body ------------------------------------------------------
def test_the_body_may_name_the_model(client: TestClient) -> None:
    batch = images(1)
    plain = client.post("/v2/models/linear-test/infer", json=json_body(batch))
    for fields in (
        {"model_name": "linear-test"},
        {"model_name": "linear-test", "model_version": "1"},
        {"model_name": None, "model_version": None},
    ):
        for url in ("/v2/models/linear-test/infer", "/v2/models/linear-test/versions/1/infer"):
            named = client.post(url, json=json_body(batch, **fields))
            assert named.status_code == 200, (fields, named.text)
            assert named.json()["outputs"] == plain.json()["outputs"]


@pytest.mark.parametrize(
    ("url", "fields", "words"),
    [
        ("/v2/models/linear-test/infer", {"model_name": "other"}, ["'other'", "'linear-test'"]),
        ("/v2/models/linear-test/infer", {"model_version": "3"}, ["'3'", "'1' (the default)"]),
        ("/v2/models/linear-test/versions/1/infer", {"model_version": "2"}, ["'2'", "'1'"]),
        ("/v2/models/linear-test/infer", {"model_name": 5}, ["model_name must be a string"]),
        ("/v2/models/linear-test/infer", {"model_version": 1}, ["model_version must be"]),
    ],
)
def test_a_body_that_names_another_model_is_refused(
    client: TestClient, url: str, fields: dict, words: list[str]
) -> None:
    answer = client.post(url, json=json_body(images(1), **fields))
    assert answer.status_code == 400, answer.text
    for word in words:
        assert word in answer.json()["error"]


@pytest.mark.parametrize("where", ["inputs", "outputs"])
def test_shared_memory_is_refused_clearly(client: TestClient, where: str) -> None:
    body = json_body(images(1))
    shm = {"shared_memory_region": "r", "shared_memory_byte_size": 40}
    if where == "inputs":
        body["inputs"][0]["parameters"] = shm
    else:
        body["outputs"] = [{"name": "logits", "parameters": shm}]
    answer = client.post("/v2/models/linear-test/infer", json=body)
    assert answer.status_code == 400 and "shared memory" in answer.json()["error"]


# -- Triton's raw binary request -----------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 3])
def test_a_raw_binary_request_answers_as_json_does(client: TestClient, count: int) -> None:
    batch = images(count, seed=count)
    raw = client.post("/v2/models/linear-test/infer", content=batch.tobytes(), headers=RAW)
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "application/octet-stream"
    got = binary_outputs(raw)
    want = json_outputs(client.post("/v2/models/linear-test/infer", json=json_body(batch)))
    assert sorted(got) == sorted(want) == ["logits", "probabilities"]
    for name in want:
        assert got[name].shape == (count, 10)
        np.testing.assert_array_equal(got[name], want[name])


def test_a_raw_request_sizes_the_one_variable_dimension(client: TestClient) -> None:
    """A batching model with a variable dim of its own: one item, as Triton does."""
    x = np.arange(12, dtype=np.float32)
    raw = client.post("/v2/models/needs-real-shape/infer", content=x.tobytes(), headers=RAW)
    assert raw.status_code == 200, raw.text
    body = {"inputs": [{"name": "x", "shape": [1, 12], "datatype": "FP32", "data": x.tolist()}]}
    want = json_outputs(client.post("/v2/models/needs-real-shape/infer", json=body))
    got = binary_outputs(raw)
    assert got["y"].shape == (1, 3)
    np.testing.assert_array_equal(got["y"], want["y"])


def test_a_raw_request_to_a_one_string_model(client: TestClient) -> None:
    """The body is the one BYTES element itself (no length prefix)."""
    text = "héllo wörld"
    raw = client.post("/v2/models/one-string/infer", content=text.encode(), headers=RAW)
    assert raw.status_code == 200, raw.text
    tensor = {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}
    answer = client.post("/v2/models/one-string/infer", json={"inputs": [tensor]})
    assert answer.status_code == 200, answer.text
    (want,) = answer.json()["outputs"]
    assert want["shape"] == [1, 1]
    assert binary_outputs(raw)["same"].tolist() == [x.encode() for x in want["data"]]


@pytest.mark.parametrize(
    ("model", "content", "words"),
    [
        ("many-io", b"\0" * 16, ["one input", "has 5"]),
        ("dynamic-hw-conv", b"\0" * 48, ["more than one variable-sized dimension"]),
        ("two-strings", b"ab", ["BYTES", "input shape [1]"]),
        ("linear-test", b"\0" * (784 * 4 + 4), ["a multiple of 3136 bytes", "3140"]),
        ("linear-test", b"", ["empty"]),
        ("linear-test", b"\0" * (784 * 4 * 65), ["batch size 65"]),  # past max_batch_size 64
    ],
)
def test_what_a_raw_request_cannot_say_is_refused(
    client: TestClient, model: str, content: bytes, words: list[str]
) -> None:
    answer = client.post(f"/v2/models/{model}/infer", content=content, headers=RAW)
    assert answer.status_code == 400, answer.text
    for word in words:
        assert word in answer.json()["error"], answer.json()


# -- statistics: Triton's shape, and the unbatched path --------------------------------------------
def test_statistics_of_requests_run_without_the_batcher(tmp_path: Path) -> None:
    write_classifier(tmp_path, "linear-test")
    settings = Settings(models_dir=tmp_path, access_log=False, batching=False)
    with TestClient(create_app(settings)) as client:
        for count in (2, 1):
            answer = client.post("/v2/models/linear-test/infer", json=json_body(images(count)))
            assert answer.status_code == 200
        raw = client.post("/v2/models/linear-test/infer", content=images(3).tobytes(), headers=RAW)
        assert raw.status_code == 200
        assert client.post("/v2/models/linear-test/infer", json={"inputs": []}).status_code == 400
        body = client.get("/v2/models/linear-test/versions/1/stats").json()
        assert body == client.get("/v2/models/linear-test/stats").json()
        assert body["model_stats"] == client.get("/v2/models/stats").json()["model_stats"]
    (stats,) = body["model_stats"]
    assert sorted(stats) == sorted(
        ["name", "version", "last_inference", "inference_count", "execution_count",
         "inference_stats", "response_stats", "batch_stats", "memory_usage"]
    )  # fmt: skip
    assert (stats["inference_count"], stats["execution_count"]) == (6, 3)
    inference = stats["inference_stats"]
    assert (inference["success"]["count"], inference["fail"]["count"]) == (3, 1)
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 3
    assert inference["compute_infer"]["ns"] > 0 and inference["queue"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [
        (1, 1), (2, 1), (3, 1),
    ]  # fmt: skip


# -- statistics, tritonclient and KServe's SDK against a real server -----------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("clients") / "models"
    write_classifier(root, "linear-test")
    write_classifier(root, "counted", seed=1)  # only the statistics test sends it requests
    with live_server(root) as running:
        running.models_dir = root  # type: ignore[attr-defined]
        yield running


def triton(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def triton_infer(client: httpclient.InferenceServerClient, batch: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)  # binary, the client's default
    return client.infer("counted", [tensor]).as_numpy("probabilities")


def test_tritonclient_reads_the_statistics(server: Server) -> None:
    client = triton(server)
    before_ms = time.time_ns() // 1_000_000
    untouched = client.get_inference_statistics("counted")["model_stats"][0]
    assert untouched["inference_count"] == 0 and untouched["batch_stats"] == []
    sizes = [1, 2, 3, 2]
    for size in sizes:  # one at a time: each its own execution
        triton_infer(client, images(size))
    with pytest.raises(InferenceServerException):
        triton_infer(client, images(1).reshape(1, 28, 28, 1))  # a wrong shape: a failure
    (stats,) = client.get_inference_statistics("counted", "1")["model_stats"]
    assert (stats["name"], stats["version"]) == ("counted", "1")
    assert stats["inference_count"] == sum(sizes)
    assert stats["execution_count"] == len(sizes)
    assert before_ms <= stats["last_inference"] <= time.time_ns() // 1_000_000
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == len(sizes)
    assert inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] == len(sizes), key
    for key in ("success", "queue", "compute_infer"):
        assert inference[key]["ns"] > 0, key
    assert inference["success"]["ns"] > inference["compute_infer"]["ns"]
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    batches = {b["batch_size"]: b for b in stats["batch_stats"]}
    assert {size: b["compute_infer"]["count"] for size, b in batches.items()} == {1: 1, 2: 2, 3: 1}
    assert all(b["compute_infer"]["ns"] > 0 for b in batches.values())
    # every model, and a model's every version, name the same numbers
    everything = {s["name"]: s for s in client.get_inference_statistics()["model_stats"]}
    assert sorted(everything) == ["counted", "linear-test"]
    assert everything["counted"]["inference_count"] == sum(sizes)
    assert client.get_inference_statistics("counted")["model_stats"][0]["execution_count"] == 4
    for name, version in (("nope", ""), ("counted", "2")):
        with pytest.raises(InferenceServerException):
            client.get_inference_statistics(name, version)


def test_tritonclient_health_and_raw_http(server: Server) -> None:
    client = triton(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear-test") and not client.is_model_ready("nope")


def kserve_sdk(
    server: Server, address: str, batch: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """What KServe's SDK saw at `address` (run in a process of its own: see tests/helpers/kserve_sdk.py),
    with its health answers checked, and the probabilities onnxruntime gives for `batch`."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "kserve_sdk.py"), address, "linear-test"],
        input=json.dumps(batch.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["live"] is True and seen["ready"] is True
    assert seen["model_ready"] is True and seen["missing_model_ready"] is False
    session = ort.InferenceSession(str(server.models_dir / "linear-test" / "1" / "model.onnx"))  # type: ignore[attr-defined]
    return seen, session.run(["probabilities"], {"image": batch})[0]


def test_kserve_rest_client(server: Server) -> None:
    """KServe's InferenceRESTClient: health, model ready, JSON and binary tensors, errors."""
    seen, want = kserve_sdk(server, server.url, images(2, seed=7))
    answer = seen["json"]
    assert (answer["model_name"], answer["id"]) == ("linear-test", "k1")
    assert sorted(answer["outputs"]) == ["logits", "probabilities"]
    np.testing.assert_allclose(np.array(answer["outputs"]["probabilities"]), want, rtol=1e-6)
    (binary,) = seen["binary"]["outputs"].values()
    np.testing.assert_array_equal(np.array(binary, dtype=np.float32), want)
    refused = seen["mismatch"]
    assert refused["status"] == 400
    assert "'other'" in refused["message"] and "'linear-test'" in refused["message"]


def test_kserve_grpc_client(server: Server) -> None:
    """KServe's InferenceGRPCClient: health, model ready, typed and raw tensors, errors."""
    seen, want = kserve_sdk(server, f"grpc://{server.grpc}", images(2, seed=8))
    for form in ("typed", "raw"):
        answer = seen[form]
        assert answer["model_name"] == "linear-test"
        np.testing.assert_allclose(np.array(answer["outputs"]["probabilities"]), want, rtol=1e-6)
    assert seen["typed"]["id"] == "g1"
    assert "no-such-model" in seen["missing"]["error"] and "not found" in seen["missing"]["error"]
