"""Run the real service (`python -m service`) in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    grpc: str = ""  # host:port of its gRPC endpoint ("" when the test turned gRPC off)
    returncode: int | None = None  # set once it has stopped

    def assert_clean_exit(self) -> None:
        """After `live_server`'s block: it stopped with 0 and logged no traceback and no
        exception that an asyncio task never retrieved."""
        log = self.process.stdout.read().decode() if self.process.stdout else ""
        assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]
        assert self.returncode == 0


@contextmanager
def live_server(
    models_dir: Path, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[Server]:
    """Start the service, wait until ready, yield it; on exit SIGTERM it and record its exit code."""
    port = free_port()
    environ = {
        **os.environ,
        "SEEDSERVE_ACCESS_LOG": "false",
        "SEEDSERVE_GRPC_PORT": str(free_port()),
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--models-dir", str(models_dir)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    grpc_port = int(environ["SEEDSERVE_GRPC_PORT"])
    server = Server(
        f"http://127.0.0.1:{port}", process, f"127.0.0.1:{grpc_port}" if grpc_port else ""
    )
    url = server.url
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"service exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("service did not become ready")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            server.returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
