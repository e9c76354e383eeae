"""Clients that go away before their answer is ready.

What must happen: a long image generation, or a text completion (streamed as server-sent
events or answered whole), stops within moments (the loops check between steps and tokens) and frees its slot; a stream
whose client stops reading is held back (bounded memory, the other requests still answered); a
request cut off mid-upload is recorded as 499 (client closed), not as a server error, and logs no traceback; a request abandoned while it waits in the batch queue
does not disturb the requests batched with it; and the service stays healthy for the next client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fault_tools import (
    LONG_GENERATION,
    LONG_STEPS,
    SLOW_GENERATION_ENV,
    probabilities,
    raw_request,
    v2_body,
    wait_until,
    write_slow_diffusion,
)
from helpers.live_server import Server, live_server
from helpers.onnx_builders import write_classifier, write_language_model
from helpers.scrape import metric

LABELS = {"model": "diffusion-test", "version": "1"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    write_classifier(tmp_path, "linear-test")
    write_slow_diffusion(tmp_path)
    write_language_model(tmp_path, "lm-test")
    env = {
        "SEEDSERVE_MAX_QUEUE_DELAY_MS": "300",
        "SEEDSERVE_MAX_NEW_TOKENS": "100000",  # a completion that would run for many seconds
        **SLOW_GENERATION_ENV,
    }
    with live_server(tmp_path, env=env) as running:
        yield running
    running.assert_clean_exit()


def metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics").text


def assert_stopped(server: Server, counter: str, labels: dict[str, str], full: int) -> None:
    """The task's slot is freed within moments, part-way (`counter` < `full`), and stays still."""
    wait_until(
        lambda: metric(metrics(server), "seedserve_generation_tasks_in_flight", **labels) == 0,
        "the loop to stop",
        timeout=5,
    )
    done = metric(metrics(server), counter, **labels)
    assert done is not None and done < full
    time.sleep(0.3)
    assert metric(metrics(server), counter, **labels) == done


def test_generation_stops_when_the_client_goes_away(server: Server) -> None:
    sock = raw_request(
        server.url, "POST", "/v1/images/generations", json.dumps(LONG_GENERATION).encode()
    )
    wait_until(
        lambda: (metric(metrics(server), "seedserve_denoising_steps_total", **LABELS) or 0) > 0,
        "the generation to start",
    )
    sock.close()
    assert_stopped(server, "seedserve_denoising_steps_total", LABELS, LONG_STEPS)
    # the slot is free and the next client is served
    body = {"model": "diffusion-test", "n": 2, "steps": 5, "seed": 1}
    answer = httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2


def test_upload_cut_off_is_a_499_not_a_server_error(server: Server) -> None:
    partial = json.dumps(v2_body()).encode()[:1000]
    sock = raw_request(
        server.url, "POST", "/v2/models/linear-test/infer", partial, declared=100_000
    )
    time.sleep(0.2)
    sock.close()
    route = {"method": "POST", "route": "/v2/models/{model_name}/infer"}
    wait_until(
        lambda: (
            metric(metrics(server), "seedserve_http_requests_total", status="499", **route) == 1
        ),
        "the abandoned upload to be recorded",
    )
    text = metrics(server)
    assert metric(text, "seedserve_http_requests_total", status="500", **route) is None
    assert metric(text, "seedserve_http_requests_in_flight") == 0
    answer = httpx.post(f"{server.url}/v2/models/linear-test/infer", json=v2_body())
    assert answer.status_code == 200


def test_abandoned_request_in_a_batch_does_not_disturb_the_others(server: Server) -> None:
    """Three requests wait in the batch queue together (300 ms); one client leaves. The other
    two get their correct answers, from one batch of three."""
    body = json.dumps(v2_body()).encode()
    leaving = raw_request(server.url, "POST", "/v2/models/linear-test/infer", body)
    staying = [
        raw_request(server.url, "POST", "/v2/models/linear-test/infer", body) for _ in range(2)
    ]
    time.sleep(0.1)
    leaving.close()
    answers = []
    for sock in staying:
        with sock, sock.makefile("rb") as stream:
            status = stream.readline()
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            content = stream.read(int(headers["content-length"]))
            answers.append((status, content))
    reference = probabilities(
        httpx.post(f"{server.url}/v2/models/linear-test/infer", json=v2_body())
    )
    for status, content in answers:
        assert b" 200 " in status, (status, content)
        outputs = {o["name"]: o for o in json.loads(content)["outputs"]}
        got = np.asarray(outputs["probabilities"]["data"], dtype=np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, reference, rtol=1e-5)
    text = metrics(server)
    labels = {"model": "linear-test", "version": "1"}
    assert metric(text, "seedserve_inference_batch_size_sum", **labels) == 4  # 3 batched + 1
    assert metric(text, "seedserve_inference_batch_size_count", **labels) == 2
    assert metric(text, "seedserve_http_requests_in_flight") == 0


def test_streamed_completion_stops_when_the_client_goes_away(server: Server) -> None:
    lm = {"model": "lm-test", "version": "1"}
    full = 100_000
    body = {"model": "lm-test", "prompt": "the", "max_tokens": full, "stream": True}
    sock = raw_request(server.url, "POST", "/v1/completions", json.dumps(body).encode())
    with sock.makefile("rb") as stream:
        assert b" 200 " in stream.readline()
        while not stream.readline().startswith(b"data: "):
            pass  # headers, then chunk sizes, until the first event
    sock.close()
    assert_stopped(server, "seedserve_generated_tokens_total", lm, full)
    answer = httpx.post(
        f"{server.url}/v1/completions", json={**body, "max_tokens": 5, "stream": False}
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5


def test_plain_completion_stops_when_the_client_goes_away(server: Server) -> None:
    """An answer sent whole writes nothing until its end, so only the server's disconnect
    message can stop it: the engine drops its sequence within moments."""
    lm = {"model": "lm-test", "version": "1"}
    full = 100_000
    body = {"model": "lm-test", "prompt": "the", "max_tokens": full}
    sock = raw_request(server.url, "POST", "/v1/completions", json.dumps(body).encode())
    wait_until(
        lambda: (metric(metrics(server), "seedserve_generated_tokens_total", **lm) or 0) > 0,
        "the completion to start",
    )
    sock.close()
    assert_stopped(server, "seedserve_generated_tokens_total", lm, full)
    answer = httpx.post(f"{server.url}/v1/completions", json={**body, "max_tokens": 5})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5


def test_a_stream_whose_client_stops_reading_is_held_back(server: Server) -> None:
    """The client reads nothing: once the socket buffers are full, the engine holds the stream
    at SEEDSERVE_MAX_UNREAD_STREAM_TOKENS unread tokens instead of writing all 100,000 into
    memory, the service answers everyone else meanwhile, and the stream ends when the client
    goes."""
    lm = {"model": "lm-test", "version": "1"}
    full = 100_000
    body = {"model": "lm-test", "prompt": "the", "max_tokens": full, "stream": True}
    sock = raw_request(server.url, "POST", "/v1/completions", json.dumps(body).encode())
    counts: list[float] = []

    def still() -> bool:
        counts.append(metric(metrics(server), "seedserve_generated_tokens_total", **lm) or 0.0)
        return len(counts) > 10 and counts[-1] == counts[-11] > 0  # unchanged for 10 looks

    wait_until(still, "the stalled stream to be held back", timeout=60)
    assert counts[-1] < full / 2  # what the socket buffers hold, and no more
    answer = httpx.post(
        f"{server.url}/v1/completions", json={**body, "max_tokens": 5, "stream": False}
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5
    sock.close()
    assert_stopped(server, "seedserve_generated_tokens_total", lm, full)
