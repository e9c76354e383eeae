"""The gRPC Open Inference Protocol endpoint, through Triton's official client (`tritonclient.grpc`)
and grpcio's own stubs, against a real server (`python -m service`) with shipped models."""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.live_server import Server, live_server
from helpers.onnx_builders import write_classifier
from helpers.scrape import model_metric
from helpers.shipped_models import copy_models
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

KEY = "inference-key-0123456789"
ADMIN = "admin-key-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = copy_models(["cnn-mnist", "gru-austen"], tmp_path_factory.mktemp("grpc") / "models")
    write_classifier(root, "linear-test")
    env = {
        "SEEDSERVE_API_KEY": KEY,
        "SEEDSERVE_ADMIN_API_KEY": ADMIN,
        "SEEDSERVE_MAX_CONCURRENT_GENERATIONS": "1",
        "SEEDSERVE_MAX_BODY_BYTES": str(1024 * 1024),
    }
    with live_server(root, env=env) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture
def stub(server: Server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def digits(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32)


def image_input(batch: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def rest_infer(server: Server, model: str, batch: np.ndarray, **outputs: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "image", "shape": list(batch.shape), "datatype": "FP32",
             "data": batch.reshape(-1).tolist()}
        ]
    }  # fmt: skip
    if outputs:
        body["outputs"] = [{"name": k, "parameters": v} for k, v in outputs.items()]
    answer = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return {o["name"]: o for o in answer.json()["outputs"]}


def text_input(text: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return tensor


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # open, as REST's
    assert client.is_model_ready("cnn-mnist", headers=AUTH)
    assert not client.is_model_ready("no-such-model", headers=AUTH)  # as Triton: false
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "seedserve"
    assert {"statistics", "model_configuration", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("cnn-mnist", headers=AUTH, as_json=True)
    assert model["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    ]
    assert [o["name"] for o in model["outputs"]] == ["logits", "probabilities"]


def test_model_config_is_the_rest_one(
    client: grpcclient.InferenceServerClient, server: Server
) -> None:
    config = client.get_model_config("cnn-mnist", headers=AUTH, as_json=True)["config"]
    rest = httpx.get(f"{server.url}/v2/models/cnn-mnist/config", headers=AUTH).json()
    assert config["name"] == rest["name"] == "cnn-mnist"
    assert int(config["max_batch_size"]) == rest["max_batch_size"]
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        (i["name"], i["data_type"], i["dims"]) for i in rest["input"]
    ]


def test_infer_raw_matches_rest_json(
    client: grpcclient.InferenceServerClient, server: Server
) -> None:
    batch = digits(5)
    answer = client.infer("cnn-mnist", [image_input(batch)], headers=AUTH, request_id="r-1")
    assert answer.get_response().id == "r-1"
    assert answer.get_response().model_version == "1"
    grpc_probs = answer.as_numpy("probabilities")
    rest_probs = rest_infer(server, "cnn-mnist", batch)["probabilities"]["data"]
    assert grpc_probs.shape == (5, 10)
    np.testing.assert_allclose(grpc_probs.reshape(-1), rest_probs, rtol=1e-5, atol=1e-6)


def test_infer_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Server
) -> None:
    """KServe's clients may send typed `contents` instead of raw bytes: the same answer."""
    batch = digits(2)
    request = pb.ModelInferRequest(model_name="cnn-mnist")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    request.outputs.add(name="probabilities")
    response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    assert [o.name for o in response.outputs] == ["probabilities"]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    expected = rest_infer(server, "cnn-mnist", batch)["probabilities"]["data"]
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-5, atol=1e-6)


def test_classification_extension(client: grpcclient.InferenceServerClient, server: Server) -> None:
    batch = digits(3)
    wanted = grpcclient.InferRequestedOutput("probabilities", class_count=3)
    answer = client.infer("cnn-mnist", [image_input(batch)], outputs=[wanted], headers=AUTH)
    top = answer.as_numpy("probabilities")
    rest = rest_infer(server, "cnn-mnist", batch, probabilities={"classification": 3})
    assert top.shape == (3, 3)
    assert [x.decode() for x in top.reshape(-1)] == rest["probabilities"]["data"]


def test_statistics_count_grpc_requests(client: grpcclient.InferenceServerClient) -> None:
    def successes() -> int:
        stats = client.get_inference_statistics("linear-test", headers=AUTH, as_json=True)
        (model,) = stats["model_stats"]
        return int(model["inference_stats"]["success"].get("count", 0))

    before = successes()
    for _ in range(3):
        client.infer("linear-test", [image_input(digits(2))], headers=AUTH)
    assert successes() == before + 3
    everything = client.get_inference_statistics(headers=AUTH, as_json=True)["model_stats"]
    assert {m["name"] for m in everything} >= {"cnn-mnist", "gru-austen", "linear-test"}


def test_repository_index_unload_load(client: grpcclient.InferenceServerClient) -> None:
    index = {
        m["name"]: m
        for m in client.get_model_repository_index(headers=ADMIN_AUTH, as_json=True)["models"]
    }
    assert index["linear-test"]["state"] == "READY"
    client.unload_model("linear-test", headers=ADMIN_AUTH)
    assert not client.is_model_ready("linear-test", headers=AUTH)
    index = client.get_model_repository_index(headers=ADMIN_AUTH, as_json=True)["models"]
    assert {"name": "linear-test", "state": "UNAVAILABLE", "reason": "unloaded"} in [
        {k: m.get(k) for k in ("name", "state", "reason")} for m in index
    ] or any(m["name"] == "linear-test" and m["state"] == "UNAVAILABLE" for m in index)
    client.load_model("linear-test", headers=ADMIN_AUTH)
    assert client.is_model_ready("linear-test", headers=AUTH)
    with pytest.raises(InferenceServerException, match="not supported") as refused:
        client.load_model("linear-test", headers=ADMIN_AUTH, config='{"max_batch_size": 4}')
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_keys(client: grpcclient.InferenceServerClient) -> None:
    batch = digits(1)
    with pytest.raises(InferenceServerException, match="API key") as missing:
        client.infer("cnn-mnist", [image_input(batch)])
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as not_admin:
        client.get_model_repository_index(headers=AUTH)
    assert not_admin.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_server_ready()  # health stays open


def test_errors_name_the_problem(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="'nope' not found") as unknown:
        client.infer("nope", [image_input(digits(1))], headers=AUTH)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("image", [1, 1, 28, 27], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 28, 27), np.float32))
    with pytest.raises(InferenceServerException, match="image") as bad:
        client.infer("cnn-mnist", [wrong], headers=AUTH)
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="no output 'nope'"):
        client.infer(
            "cnn-mnist", [image_input(digits(1))], headers=AUTH,
            outputs=[grpcclient.InferRequestedOutput("nope")],
        )  # fmt: skip


def test_message_over_the_limit(client: grpcclient.InferenceServerClient) -> None:
    batch = digits(400)  # 1.25 MB of FP32 against a 1 MiB limit
    with pytest.raises(InferenceServerException) as refused:
        client.infer("cnn-mnist", [image_input(batch)], headers=AUTH)
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_generation_unary_and_streamed(client: grpcclient.InferenceServerClient) -> None:
    params = {"max_tokens": 8, "temperature": 0}
    whole = client.infer(
        "gru-austen", [text_input("It is a truth")], headers=AUTH, parameters=params
    )
    text = whole.as_numpy("text_output")[0].decode()
    assert whole.get_response().parameters["finish_reason"].string_param == "length"
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=AUTH)
    try:
        client.async_stream_infer(
            "gru-austen", [text_input("It is a truth")], parameters=params, request_id="s1",
            enable_empty_final_response=True,
        )  # fmt: skip
        tokens, final = [], False
        while not final:
            result, error = answers.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            assert response.id == "s1"
            final = response.parameters["triton_final_response"].bool_param
            if not final:
                tokens.append(result.as_numpy("text_output")[0].decode())
        assert len(tokens) == 8 and "".join(tokens) == text  # greedy: the same text
        # an error travels in the stream, which goes on
        client.async_stream_infer("no-such-model", [text_input("x")])
        result, error = answers.get(timeout=30)
        assert result is None and "not found" in str(error)
        client.async_stream_infer("cnn-mnist", [image_input(digits(2))], request_id="s2")
        result, error = answers.get(timeout=30)
        assert error is None and result.as_numpy("probabilities").shape == (2, 10)
    finally:
        client.stop_stream()


def test_generation_parameters_checked(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="temperature") as bad:
        client.infer(
            "gru-austen", [text_input("Emma")], headers=AUTH, parameters={"temperature": -1.0}
        )
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="colour"):
        client.infer("gru-austen", [text_input("Emma")], headers=AUTH, parameters={"colour": "red"})


def test_overload_is_unavailable_with_retry_info(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """The server runs one generation at a time (SEEDSERVE_MAX_CONCURRENT_GENERATIONS=1): a
    second one while a long one streams is refused with UNAVAILABLE, retry-after and RetryInfo."""
    long = pb.ModelInferRequest(model_name="gru-austen")
    long.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"Emma"
    )
    long.parameters["max_tokens"].int64_param = 400
    stream = stub.ModelStreamInfer(iter([long]), metadata=tuple(AUTH.items()))
    first = next(stream)  # the long generation is running
    assert not first.error_message
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(long, metadata=tuple(AUTH.items()))
        error = refused.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "limit" in error.details()
        trailing = dict(error.trailing_metadata())
        assert int(trailing["retry-after"]) >= 1
        status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and retry.retry_delay.seconds >= 1
    finally:
        stream.cancel()


def test_deadline_stops_the_generation(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Server
) -> None:
    long = pb.ModelInferRequest(model_name="gru-austen")
    long.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"Emma"
    )
    long.parameters["max_tokens"].int64_param = 512
    before = generated_tokens(server)
    with pytest.raises(grpc.RpcError) as late:
        stub.ModelInfer(long, metadata=tuple(AUTH.items()), timeout=0.05)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # its generation slot is free again: the next one runs (one at a time on this server)
    deadline = time.monotonic() + 10
    while True:
        try:
            stub.ModelInfer(
                pb.ModelInferRequest(
                    model_name="gru-austen",
                    inputs=[pb.ModelInferRequest.InferInputTensor(
                        name="text_input", datatype="BYTES", shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[b"Emma"]),
                    )],
                ),
                metadata=tuple(AUTH.items()),
            )  # fmt: skip
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            time.sleep(0.1)
    # stopped early: far fewer than its 512 tokens (and the 20 of the one after) were written
    assert generated_tokens(server) - before < 400
    # and counted as the client's cancellation, not as an error of ours
    cancelled = 'seedserve_grpc_requests_total{code="CANCELLED",method="ModelInfer"}'
    assert cancelled in httpx.get(f"{server.url}/metrics").text


def generated_tokens(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return model_metric(text, "seedserve_generated_tokens_total", "gru-austen")


def test_request_id_and_metrics(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Server
) -> None:
    request = pb.ModelReadyRequest(name="cnn-mnist")
    _, call = stub.ModelReady.with_call(
        request, metadata=(*AUTH.items(), ("x-request-id", "trace-me-42"))
    )
    assert dict(call.trailing_metadata())["x-request-id"] == "trace-me-42"
    with pytest.raises(grpc.RpcError):  # no key: counted under its code
        stub.ModelInfer(pb.ModelInferRequest(model_name="cnn-mnist"))
    with pytest.raises(grpc.RpcError) as invalid:  # no inputs: the client's mistake, its id kept
        stub.ModelInfer(
            pb.ModelInferRequest(model_name="cnn-mnist"),
            metadata=(*AUTH.items(), ("x-request-id", "bad-one-7")),
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(invalid.value.trailing_metadata())["x-request-id"] == "bad-one-7"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'seedserve_grpc_requests_total{code="INVALID_ARGUMENT",method="ModelInfer"}' in metrics
    assert 'seedserve_grpc_requests_total{code="OK",method="ModelReady"}' in metrics
    assert 'seedserve_grpc_requests_total{code="UNAUTHENTICATED",method="ModelInfer"}' in metrics
    assert "seedserve_grpc_request_duration_seconds_bucket" in metrics


def test_health_service(server: Server) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "live"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_drains_grpc(tmp_path: Path) -> None:
    """SIGTERM: new calls are refused (health checks too), a running stream finishes,
    the process exits 0; the JSON access log has each call's request id and status code."""
    root = copy_models(["gru-austen"], tmp_path / "models")
    env = {"SEEDSERVE_ACCESS_LOG": "true", "SEEDSERVE_SHUTDOWN_TIMEOUT_S": "20"}
    with live_server(root, env=env) as running:
        channel = grpc.insecure_channel(running.grpc)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        request = pb.ModelInferRequest(model_name="gru-austen", id="draining")
        request.inputs.add(
            name="text_input", datatype="BYTES", shape=[1]
        ).contents.bytes_contents.append(b"Emma")
        request.parameters["max_tokens"].int64_param = 120
        tokens: list[str] = []
        stream = stub.ModelStreamInfer(iter([request]), metadata=(("x-request-id", "drain-1"),))
        first = next(stream)
        tokens.append(first.infer_response.raw_output_contents[0][4:].decode())
        reader = threading.Thread(
            target=lambda: tokens.extend(
                r.infer_response.raw_output_contents[0][4:].decode() for r in stream
            )
        )
        reader.start()
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        for call in (
            lambda: stub.ServerLive(pb.ServerLiveRequest()),
            lambda: health.Check(health_pb2.HealthCheckRequest(service="")),
        ):
            with pytest.raises(grpc.RpcError) as refused:  # new calls, probes too
                call()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        reader.join(timeout=30)
        assert len(tokens) == 120, "the running generation finished"
        assert running.process.wait(timeout=30) == 0
        channel.close()
    output = running.process.stdout.read().decode() if running.process.stdout else ""
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("grpc_method") == "ModelStreamInfer"]
    assert access and access[0]["request_id"] == "drain-1" and access[0]["code"] == "OK"
