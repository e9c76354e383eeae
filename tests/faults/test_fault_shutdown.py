"""SIGTERM while requests are in flight.

What must happen: the listening socket closes at once (new connections are refused), every
request already accepted is answered in full, and the process exits with 0; requests that would
outlast `SEEDSERVE_SHUTDOWN_TIMEOUT_S` are cut off at that bound instead of holding the exit.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from fault_tools import (
    LONG_GENERATION,
    PICTURE,
    SLOW_GENERATION_ENV,
    probabilities,
    v2_body,
    write_slow_diffusion,
)
from helpers.live_server import Server, live_server
from helpers.onnx_builders import write_classifier

GENERATION = {**LONG_GENERATION, "steps": 2000}  # with n=128: seconds, so the queued requests
# below always arrive while it still runs, even on an idle fast core


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_classifier(tmp_path, "linear-test")
    write_slow_diffusion(tmp_path)
    return tmp_path


class InFlight:
    """Requests sent from threads; each answer (or transport error) kept under its name."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.answers: dict[str, httpx.Response | Exception] = {}
        self.threads: list[threading.Thread] = []

    def send(self, name: str, path: str, body: dict) -> None:
        def run() -> None:
            try:
                self.answers[name] = httpx.post(self.server.url + path, json=body, timeout=60)
            except httpx.HTTPError as exc:
                self.answers[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)


def wait_in_flight(server: Server, count: int) -> None:
    """Until the server holds `count` requests (its own gauge says so)."""
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(f"{server.url}/metrics").text
        line = next(
            x for x in text.splitlines() if x.startswith("seedserve_http_requests_in_flight ")
        )
        if float(line.split()[-1]) >= count:
            return
        assert time.monotonic() < deadline, "the requests never reached the server"
        time.sleep(0.02)


def test_sigterm_finishes_accepted_requests_and_refuses_new_ones(repository: Path) -> None:
    # Requests wait up to 1.5 s in the batch queue for company: they are in flight at SIGTERM.
    env = {"SEEDSERVE_MAX_QUEUE_DELAY_MS": "1500", **SLOW_GENERATION_ENV}
    expected = ort.InferenceSession(str(repository / "linear-test/1/model.onnx")).run(
        ["probabilities"], {"image": PICTURE}
    )[0]
    with live_server(repository, env=env) as server:
        flight = InFlight(server)
        # a generation of a second or so, then four requests held in the batch queue
        flight.send("generate", "/v1/images/generations", {**GENERATION, "n": 128})
        wait_in_flight(server, 1)
        for i in range(4):
            flight.send(f"infer-{i}", "/v2/models/linear-test/infer", v2_body())
        wait_in_flight(server, 5)
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # the port no longer accepts
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
        returncode = server.process.wait(timeout=20)
        exited_after = time.monotonic() - stopped_at
        flight.join()
    assert returncode == 0
    assert exited_after < 15
    for name, answer in flight.answers.items():
        assert isinstance(answer, httpx.Response), (name, answer)
        assert answer.status_code == 200, (name, answer.text)
        if name.startswith("infer"):
            np.testing.assert_allclose(probabilities(answer), expected, rtol=1e-5)
    assert len(flight.answers["generate"].json()["data"]) == 128  # type: ignore[union-attr]


def test_shutdown_timeout_bounds_the_wait(repository: Path) -> None:
    env = {"SEEDSERVE_SHUTDOWN_TIMEOUT_S": "1", **SLOW_GENERATION_ENV}
    with live_server(repository, env=env) as server:
        flight = InFlight(server)
        flight.send("generate", "/v1/images/generations", LONG_GENERATION)  # many seconds
        wait_in_flight(server, 1)
        stopped_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=20)
        exited_after = time.monotonic() - stopped_at
        flight.join()
        log = server.process.stdout.read().decode() if server.process.stdout else ""
    assert returncode == 0
    assert 0.9 < exited_after < 8, exited_after  # waited for the bound, not for the generation
    answer = flight.answers["generate"]
    # cut off: an error status, or the connection closed; never a hang and never a 200
    assert isinstance(answer, httpx.HTTPError) or answer.status_code >= 500
    assert "never retrieved" not in log
