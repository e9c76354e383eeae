"""`python -m service [--host H] [--port P] [--grpc-port G] [--models-dir DIR] [--workers N]`.

Each option is also an environment variable (SEEDSERVE_HOST, ...); a flag wins over the variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import tempfile
from types import FrameType

import uvicorn

from service.logs import configure_logging
from service.settings import Settings

GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="address to bind (SEEDSERVE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (SEEDSERVE_PORT, default 8000)")
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port (SEEDSERVE_GRPC_PORT, default 8001; 0 = no gRPC)"
    )
    parser.add_argument(
        "--models-dir", help="model repository (SEEDSERVE_MODELS_DIR, default models)"
    )
    parser.add_argument(
        "--workers", type=int, help="server processes (SEEDSERVE_WORKERS, default 1)"
    )
    args = parser.parse_args()
    for name in ("host", "port", "grpc_port", "models_dir", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"SEEDSERVE_{name.upper()}"] = str(value)
    settings = Settings()  # validates every variable before anything starts
    # gRPC core's EventEngine listener hands every connection's reads and writes to its own
    # threads, which then wake the Python poller thread and the event loop: off, a call costs
    # fewer context switches and less CPU (measured in bench/results/grpc.md). A GRPC_EXPERIMENTS
    # of the user's own is left alone.
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    configure_logging(settings.log_level)
    run_dirs = []
    if settings.workers > 1:
        # Each worker writes its metrics to files here; /metrics merges them (see service/metrics.py).
        run_dirs.append(tempfile.mkdtemp(prefix="seedserve-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = run_dirs[-1]
        # The workers' journal of loads and unloads (see service/cluster.py): fresh for each run,
        # so no worker replays an unload of an earlier run.
        run_dirs.append(tempfile.mkdtemp(prefix="seedserve-cluster-"))
        os.environ["SEEDSERVE_CLUSTER_DIR"] = run_dirs[-1]
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the handler
    # that was installed before it: make that one a no-op so a clean shutdown exits with 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    try:
        if settings.http_server == "granian":
            serve_with_granian(settings)
        else:
            uvicorn.run(
                "service.app:create_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=settings.shutdown_timeout_s,
            )
    finally:
        for folder in run_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def serve_with_granian(settings: Settings) -> None:
    """The same app under Granian: its Rust HTTP/1.1 server hands each request to the ASGI app
    on one asyncio loop per worker (lifespan included, so models and gRPC start as usual)."""
    from granian import Granian  # optional: only when asked for
    from granian.constants import Interfaces

    Granian(
        "service.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        runtime_threads=1,
        log_enabled=False,
        workers_kill_timeout=max(1, int(settings.shutdown_timeout_s)),
    ).serve()


def _stopped(signum: int, frame: FrameType | None) -> None:
    logging.getLogger("seedserve").info("stopped", extra={"signal": signal.Signals(signum).name})


if __name__ == "__main__":
    main()
