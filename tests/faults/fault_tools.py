"""Pieces the fault suite shares: models with a defect, traffic that records every answer, and a
raw HTTP/1.1 client that can walk away in the middle of a request."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
from helpers.onnx_builders import write_diffusion_generator
from onnx import TensorProto, helper, numpy_helper

ADMIN = "admin-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
# One normalised picture, the same in every test: answers can be compared with onnxruntime's.
PICTURE = np.random.default_rng(7).random((1, 1, 28, 28), dtype=np.float32)


def v2_body(picture: np.ndarray = PICTURE) -> dict:
    return {
        "inputs": [
            {
                "name": "image",
                "shape": list(picture.shape),
                "datatype": "FP32",
                "data": picture.ravel().tolist(),
            }
        ]
    }


def probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    return np.asarray(outputs["probabilities"]["data"], dtype=np.float32).reshape(1, 10)


def truncate(path: Path) -> None:
    """A partly written file: the first half of a real ONNX graph."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def failing_classifier_onnx() -> onnx.ModelProto:
    """Loads and has the classifier's signature, but every inference fails: it gathers pixel
    5000 of a 784-pixel picture. Only the warm-up inference can catch it."""
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Gather", ["flat", "indices"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-at-run-time",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        ],
        [numpy_helper.from_array(np.full(10, 5000, dtype=np.int64), "indices")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def write_slow_diffusion(root: Path, name: str = "diffusion-test") -> Path:
    """The tiny diffusion generator with a 4000-step schedule, so one request can be made to
    run for seconds (LONG_GENERATION) without a big model."""
    model_dir = write_diffusion_generator(root, name)
    config = json.loads((model_dir / "config.json").read_text())
    config["generation"]["schedule"]["timesteps"] = 4000
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


SLOW_GENERATION_ENV = {
    "SEEDSERVE_MAX_IMAGES_PER_GENERATION": "512",
    "SEEDSERVE_MAX_DIFFUSION_STEPS": "4000",
    "SEEDSERVE_MAX_DENOISING_WORK": "5000000",
}
# 4000 denoiser calls on 1024 pictures: tens of seconds here, seconds on the fastest core,
# far longer than any test waits for it.
LONG_STEPS = 4000
LONG_GENERATION = {
    "model": "diffusion-test",
    "n": 512,
    "steps": LONG_STEPS,
    "guidance": 2.0,
    "seed": 1,
}


@dataclass
class Traffic:
    """Answers of clients that send requests back to back: status codes and transport errors."""

    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bodies: list[httpx.Response] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Block until `count` more answers have arrived."""
        target = len(self.statuses) + len(self.errors) + count
        deadline = time.monotonic() + timeout
        while len(self.statuses) + len(self.errors) < target:
            assert time.monotonic() < deadline, f"traffic stalled: {self}"
            time.sleep(0.01)


@contextmanager
def traffic(send: Callable[[], httpx.Response], clients: int = 3) -> Iterator[Traffic]:
    """`clients` threads call `send` back to back until the block ends; every answer is kept."""
    record = Traffic()
    stop = threading.Event()
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            try:
                response = send()
            except httpx.HTTPError as exc:
                with lock:
                    record.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                record.statuses.append(response.status_code)
                record.bodies.append(response)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        record.wait_for(clients)  # every client is under way before the fault happens
        yield record
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def raw_request(
    url: str, method: str, path: str, body: bytes, declared: int | None = None
) -> socket.socket:
    """Send an HTTP/1.1 request by hand and return the open socket: the caller decides when to
    walk away. `declared` > len(body) leaves the upload unfinished."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    length = len(body) if declared is None else declared
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock
