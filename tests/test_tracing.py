"""Tracing through the real app and real models: a request's `traceparent` is continued, and the
request, queue, batch, onnxruntime, response and decode-step spans come out with their parents
and links (the SDK's in-memory exporter); the JSON access log carries the trace id; tracing off
makes no span; a live server sends its spans over OTLP/HTTP to a collector."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers.live_server import live_server
from helpers.onnx_builders import write_classifier, write_diffusion_generator, write_language_model
from helpers.shipped_models import copy_models
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from service import tracing
from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
INFER = "/v2/models/linear-test/infer"
VERSIONED_ROUTE = "/v2/models/{model_name}/versions/{model_version}/infer"
IMAGE = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}


def hex_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def linked(span: ReadableSpan) -> set[str]:
    return {f"{link.context.span_id:016x}" for link in span.links}


def named(spans: Any, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def only(spans: Any, name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def server_spans(spans: Any) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER]


def within(inner: ReadableSpan, outer: ReadableSpan) -> bool:
    assert inner.start_time and inner.end_time and outer.start_time and outer.end_time
    return outer.start_time <= inner.start_time <= inner.end_time <= outer.end_time


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def classifier_dir(tmp_path: Path) -> Path:
    write_classifier(tmp_path / "models", "linear-test")
    return tmp_path / "models"


def traced(models_dir: Path, exporter: InMemorySpanExporter, **overrides: Any) -> TestClient:
    settings = Settings(models_dir=models_dir, access_log=False, **overrides)
    return TestClient(create_app(settings, span_exporter=exporter))


@pytest.mark.parametrize(
    ("batching", "path", "route"),
    [
        (True, INFER, "/v2/models/{model_name}/infer"),
        (False, "/v2/models/linear-test/versions/1/infer", VERSIONED_ROUTE),
    ],
    ids=["dynamic-batcher", "unbatched"],
)
def test_v2_infer_continues_the_callers_trace(
    classifier_dir: Path, exporter: InMemorySpanExporter, batching: bool, path: str, route: str
) -> None:
    with traced(classifier_dir, exporter, batching=batching) as client:
        response = client.post(path, json={"inputs": [IMAGE]}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    assert {trace_of(s) for s in spans} == {TRACE_ID}

    (server,) = server_spans(spans)
    assert server.name == f"POST {route}"
    assert server.parent is not None and server.parent.is_remote
    assert parent_id(server) == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == path
    # the answer names the server span, so a caller can find its part of the trace
    assert response.headers["traceparent"] == f"00-{TRACE_ID}-{hex_id(server)}-01"

    queue, run, answer = (
        only(spans, "queue"),
        only(spans, "onnxruntime.run"),
        only(spans, "response"),
    )
    assert parent_id(queue) == parent_id(answer) == hex_id(server)
    assert queue.attributes == {"seedserve.model": "linear-test", "seedserve.model_version": "1"}
    if batching:
        batch = only(spans, "batch")
        assert parent_id(batch) == hex_id(server)
        assert linked(batch) == {hex_id(server)}
        assert batch.attributes is not None and batch.attributes["seedserve.batch.size"] == 1
        assert parent_id(run) == hex_id(batch)
        assert within(run, batch)
    else:
        assert named(spans, "batch") == []
        assert parent_id(run) == hex_id(server)
    assert run.attributes is not None and run.attributes["onnxruntime.file"] == "model.onnx"
    for span in (queue, run, answer):
        assert within(span, server)
    assert queue.end_time is not None and run.start_time is not None
    assert queue.end_time <= run.start_time  # the wait ends before onnxruntime starts
    assert run.end_time is not None and run.end_time > run.start_time
    assert len(spans) == (5 if batching else 4)


def test_a_batch_of_several_requests_links_each(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    # the first request waits up to 500 ms for company: four sent at once share one call
    with traced(classifier_dir, exporter, max_queue_delay_ms=500) as client:
        start = threading.Barrier(4)

        def send(_: int) -> int:
            start.wait()
            return client.post(INFER, json={"inputs": [IMAGE]}).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    spans = exporter.get_finished_spans()
    servers = server_spans(spans)
    assert len(servers) == 4
    assert len({trace_of(s) for s in servers}) == 4  # no traceparent: a trace each
    assert all(s.parent is None for s in servers)
    server_ids = {hex_id(s) for s in servers}
    # each request waited in the queue, in its own trace
    queues = named(spans, "queue")
    assert sorted(parent_id(q) or "" for q in queues) == sorted(server_ids)
    batches = named(spans, "batch")
    shared = max(batches, key=lambda b: len(b.links))
    assert len(shared.links) >= 2, [len(b.links) for b in batches]
    assert linked(shared) <= server_ids
    assert parent_id(shared) in linked(shared)  # in the trace of one of its requests
    assert shared.attributes is not None
    assert shared.attributes["seedserve.batch.requests"] == len(shared.links)
    assert sum(len(b.links) for b in batches) == 4  # every request is in exactly one batch


def test_completion_of_a_shipped_language_model_traces_each_decode_step(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    root = copy_models(["rnn-austen"], tmp_path / "models")
    with traced(root, exporter) as client:
        response = client.post(
            "/v1/completions",
            json={"model": "rnn-austen", "prompt": "It is a truth", "max_tokens": 6, "seed": 1},
            headers={"traceparent": TRACEPARENT},
        )
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    assert {trace_of(s) for s in spans} == {TRACE_ID}
    (server,) = server_spans(spans)
    assert server.name == "POST /v1/completions"
    assert parent_id(server) == PARENT_ID
    steps = named(spans, "decode.step")
    tokens = response.json()["usage"]["completion_tokens"]
    assert len(steps) == tokens - 1  # the last token is not fed back
    runs = named(spans, "onnxruntime.run")
    for step in steps:
        assert parent_id(step) == hex_id(server)
        assert linked(step) == {hex_id(server)}
        assert step.attributes is not None and step.attributes["seedserve.sequences"] == 1
        assert within(step, server)
        # the step graph's call under each step
        assert [r for r in runs if parent_id(r) == hex_id(step)]
    # the prompt is read by the decode engine, in a span of its own under the request
    (prefill,) = named(spans, "decode.prefill")
    assert parent_id(prefill) == hex_id(server) and linked(prefill) == {hex_id(server)}
    assert prefill.attributes is not None and prefill.attributes["seedserve.sequences"] == 1
    assert [r for r in runs if parent_id(r) == hex_id(prefill)]
    assert within(prefill, server) and prefill.end_time <= min(s.start_time for s in steps)


def test_concurrent_completions_share_a_traced_decode_step(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    write_language_model(tmp_path / "models", "lm-test")
    traces = ["1" * 32, "2" * 32]
    with traced(tmp_path / "models", exporter) as client:
        start = threading.Barrier(2)

        def send(trace_id: str) -> None:
            start.wait()
            # streamed: each step hands its tokens over as it goes, as the clients read them
            body = {"model": "lm-test", "prompt": "the", "max_tokens": 500, "seed": 1}
            body["stream"] = True
            headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
            assert client.post("/v1/completions", json=body, headers=headers).status_code == 200

        threads = [threading.Thread(target=send, args=(t,)) for t in traces]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    spans = exporter.get_finished_spans()
    servers = {trace_of(s): hex_id(s) for s in server_spans(spans)}
    assert set(servers) == set(traces)
    shared = [s for s in named(spans, "decode.step") if len(s.links) == 2]
    assert shared, "the two requests never shared a decode step"
    for step in shared:
        assert linked(step) == set(servers.values())
        assert parent_id(step) in linked(step)
        assert step.attributes is not None and step.attributes["seedserve.sequences"] == 2


def test_image_generation_traces_each_denoising_call(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    write_diffusion_generator(tmp_path / "models", "diffusion-test")
    with traced(tmp_path / "models", exporter) as client:
        body = {"model": "diffusion-test", "labels": [3], "seed": 0, "steps": 5}
        response = client.post(
            "/v1/images/generations", json=body, headers={"traceparent": TRACEPARENT}
        )
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    (server,) = server_spans(spans)
    steps = named(spans, "denoise.step")
    assert len(steps) == 5
    for step in steps:
        assert trace_of(step) == TRACE_ID
        assert parent_id(step) == hex_id(server)
        assert linked(step) == {hex_id(server)}
        assert within(step, server)  # the denoiser's call (image models run their sessions)
        assert step.attributes is not None and step.attributes["seedserve.batch.requests"] == 1


@contextmanager
def json_logs(*names: str) -> Iterator[io.StringIO]:
    """What the named loggers write while the block runs, formatted as the service does (when
    they write it: the trace ids are those current then)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def access_lines(client: TestClient, headers: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """One V2 infer; its response and the access log line it wrote."""
    with json_logs("seedserve.access") as stream:
        response = client.post(INFER, json={"inputs": [IMAGE]}, headers=headers)
    (line,) = stream.getvalue().splitlines()
    return response, json.loads(line)


def test_the_access_log_line_carries_the_trace_id(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    settings = Settings(models_dir=classifier_dir, access_log=True)
    with TestClient(create_app(settings, span_exporter=exporter)) as client:
        response, line = access_lines(client, {"traceparent": TRACEPARENT})
    (server,) = server_spans(exporter.get_finished_spans())
    assert line["message"] == "request" and line["status"] == response.status_code == 200
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == hex_id(server)


def test_a_failing_request_is_an_error_span_and_its_error_log_has_the_trace_id(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    with traced(classifier_dir, exporter) as client:
        model = client.app.state.registry.get("linear-test")  # type: ignore[attr-defined]

        def broken(feeds: object, output_names: object = None) -> None:
            raise RuntimeError("injected fault")

        model.primary.run = broken  # what the dynamic batcher calls
        with json_logs("service.fastpath") as stream:
            response = client.post(
                INFER, json={"inputs": [IMAGE]}, headers={"traceparent": TRACEPARENT}
            )
    assert response.status_code == 500
    spans = exporter.get_finished_spans()
    (server,) = server_spans(spans)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 500
    batch = only(spans, "batch")  # where it failed, with the exception recorded
    assert batch.status.status_code is StatusCode.ERROR
    assert [e.name for e in batch.events] == ["exception"]
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["message"] == "inference failed" and "injected fault" in line["exception"]
    assert line["trace_id"] == TRACE_ID and line["span_id"] == hex_id(server)


def test_a_client_error_is_no_error_span(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    with traced(classifier_dir, exporter) as client:
        response = client.post("/v2/models/nope/infer", json={"inputs": [IMAGE]})
        nowhere = client.get("/no/such/route")
    assert response.status_code == nowhere.status_code == 404
    unknown_model, unknown_route = server_spans(exporter.get_finished_spans())
    for server in (unknown_model, unknown_route):
        assert server.status.status_code is StatusCode.UNSET
        assert server.attributes is not None
        assert server.attributes["http.response.status_code"] == 404
    assert unknown_model.name == "POST /v2/models/{model_name}/infer"
    assert unknown_route.name == "GET"  # no route: the method alone, as OpenTelemetry names it


def test_tracing_off_makes_no_span_and_changes_nothing(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    with traced(classifier_dir, exporter) as client:  # on, then shut down with its app
        assert client.post(INFER, json={"inputs": [IMAGE]}).status_code == 200
    assert tracing.on() is False
    exporter.clear()
    settings = Settings(models_dir=classifier_dir, access_log=True)
    assert settings.otlp_endpoint is None
    with TestClient(create_app(settings)) as client:
        assert tracing.on() is False
        response, line = access_lines(client, {"traceparent": TRACEPARENT})
    assert response.status_code == 200
    assert "traceparent" not in response.headers
    assert "trace_id" not in line and "span_id" not in line
    assert exporter.get_finished_spans() == ()


def test_sampling_ratio_applies_to_new_traces_only(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    with traced(classifier_dir, exporter, trace_sample_ratio=0.0) as client:
        unsampled = client.post(INFER, json={"inputs": [IMAGE]})
        assert exporter.get_finished_spans() == ()
        # the trace id still travels, marked not sampled, so logs and callers can join up
        assert int(unsampled.headers["traceparent"][-2:], 16) & 1 == 0
        sampled = client.post(INFER, json={"inputs": [IMAGE]}, headers={"traceparent": TRACEPARENT})
    assert unsampled.status_code == sampled.status_code == 200
    spans = exporter.get_finished_spans()
    assert {trace_of(s) for s in spans} == {TRACE_ID}  # the caller's decision is followed
    assert {s.name for s in spans} >= {"queue", "batch", "onnxruntime.run", "response"}


def test_an_endpoint_that_is_no_http_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="otlp_endpoint"):
        Settings(otlp_endpoint="localhost:4318")
    assert Settings(otlp_endpoint="").otlp_endpoint is None  # an empty variable is unset


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that keeps every export request it gets."""

    received: list[tuple[str, str, bytes]]  # (path, content type, body), set per server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, self.headers.get("content-type", ""), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_live_server_sends_its_spans_over_otlp_http(
    classifier_dir: Path, collector: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = collector
    with live_server(classifier_dir, env={"SEEDSERVE_OTLP_ENDPOINT": url}) as server:
        response = httpx.post(
            server.url + INFER, json={"inputs": [IMAGE]}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200, response.text
    assert server.returncode == 0  # SIGTERM: the lifespan ends and sends what is buffered
    assert received, "no export request reached the collector"
    spans = []
    for path, content_type, body in received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "seedserve"
            spans += [s for scope in resource_spans.scope_spans for s in scope.spans]
    ours = [s for s in spans if s.trace_id.hex() == TRACE_ID]
    names = {s.name for s in ours}
    assert {"POST /v2/models/{model_name}/infer", "queue", "batch", "onnxruntime.run"} <= names
    (server_span,) = [s for s in ours if s.name.startswith("POST")]
    assert server_span.parent_span_id.hex() == PARENT_ID


def test_grpc_infer_continues_the_callers_trace(
    classifier_dir: Path, exporter: InMemorySpanExporter
) -> None:
    """The same spans over gRPC: the metadata's traceparent is the server span's parent."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from helpers.live_server import free_port

    port = free_port()
    with (
        traced(classifier_dir, exporter, grpc_port=port),
        grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client,
    ):
        image = grpcclient.InferInput("image", [1, 1, 28, 28], "FP32")
        image.set_data_from_numpy(np.full((1, 1, 28, 28), 0.5, np.float32))
        client.infer("linear-test", [image], headers={"traceparent": TRACEPARENT})
        with pytest.raises(grpcclient.InferenceServerException):
            client.infer("no-such-model", [image], headers={"traceparent": TRACEPARENT})
    spans = exporter.get_finished_spans()
    assert {trace_of(s) for s in spans} == {TRACE_ID}
    served, missing = server_spans(spans)
    assert served.name == "inference.GRPCInferenceService/ModelInfer"
    assert parent_id(served) == parent_id(missing) == PARENT_ID
    assert served.attributes is not None and missing.attributes is not None
    assert served.attributes["rpc.grpc.status_code"] == 0
    assert missing.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND: the client's mistake
    assert missing.status.status_code is not StatusCode.ERROR
    queue, answer = only(spans, "queue"), only(spans, "response")
    assert parent_id(queue) == parent_id(answer) == hex_id(served)
    assert parent_id(only(spans, "batch")) == hex_id(served)
