"""The bench's Python floor (bench/floor_server.py), a real server on loopback: it must give
in-process onnxruntime's answers, JSON and binary, and each request its own rows when many share
a batch, or the floor it measures would be of a server that does less than ours."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from helpers.onnx_builders import write_classifier

from bench.procs import Server, stop_server
from bench.systems import Context, check_answer, floor_workloads, probabilities_of, start_floor
from bench.workloads import test_picture as picture
from bench.workloads import v2_binary_request, v2_json_request


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Context]]:
    root = tmp_path_factory.mktemp("floor")
    model_dir = write_classifier(root / "models", "linear-test")
    ctx = Context("linear-test", model_dir, model_dir / "1" / "model.onnx", root, picture())
    server = start_floor(ctx)
    try:
        yield server, ctx
    finally:
        stop_server(server, grace_s=5.0)


def in_process(ctx: Context, tensor: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(ctx.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    result: np.ndarray = session.run(names, {"image": tensor})[names.index("probabilities")]
    return result


def test_every_workload_gets_in_process_answers(floor: tuple[Server, Context]) -> None:
    server, ctx = floor
    expected = in_process(ctx, ctx.picture.tensor)
    workloads = floor_workloads(ctx)
    assert set(workloads) == {"v2-json", "v2-binary", "v2-json-b16", "v2-binary-b16"}
    for name, request in workloads.items():
        assert check_answer(server, name, request, expected) == "", name


def test_requests_batched_together_get_their_own_rows(floor: tuple[Server, Context]) -> None:
    server, ctx = floor
    pictures = [picture(i).tensor for i in range(24)]
    sizes = [1 + i % 3 for i in range(24)]  # 1 to 3 pictures per request
    tensors = [np.repeat(p, n, axis=0) for p, n in zip(pictures, sizes, strict=True)]
    requests = [
        (v2_binary_request if i % 2 else v2_json_request)("linear-test", t)
        for i, t in enumerate(tensors)
    ]

    def send(index: int) -> np.ndarray:
        request = requests[index]
        response = httpx.post(
            server.url + request.path,
            content=request.body,
            headers=dict(request.headers or {}),
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        return probabilities_of(response).reshape(sizes[index], -1)

    before = httpx.get(server.url + "/stats").json()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(len(requests))))
    after = httpx.get(server.url + "/stats").json()
    assert after["requests"] - before["requests"] == len(requests)
    assert after["calls"] - before["calls"] < len(requests)  # some shared an onnxruntime call
    for tensor, answer in zip(tensors, answers, strict=True):
        np.testing.assert_allclose(answer, in_process(ctx, tensor), atol=1e-5)
    log = Path(server.log_path).read_text()
    assert "Traceback" not in log, log
