"""The gRPC server beside REST, in the same process and event loop: `inference.GRPCInferenceService`
(service/grpcapi/inference.py) and `grpc.health.v1.Health` for Kubernetes gRPC probes.

Health services: "" and "inference.GRPCInferenceService" answer SERVING when the server is ready
(as `/v2/health/ready`), "live" whenever the process answers (as `/v2/health/live`). On SIGTERM
every one turns NOT_SERVING, new calls are refused and running ones get `shutdown_timeout_s` to
finish, while REST drains alongside (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from service.grpcapi.calls import SERVICE, Calls
from service.grpcapi.inference import Backend, InferenceServicer
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS_SERVICES = ("", SERVICE)


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 whose readiness services follow the server's readiness."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend

    async def refresh(self) -> None:
        status = SERVING if self.backend.ready() else NOT_SERVING
        for service in READINESS_SERVICES:
            await self.set(service, status)  # ignored once shutting down

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    async def follow(self, every_s: float = 1.0) -> None:
        """Keep Watch streams told of readiness changes (loads, unloads, failures)."""
        while True:
            await self.refresh()
            await asyncio.sleep(every_s)


class GrpcServer:
    def __init__(self, backend: Backend, metrics: Metrics, settings: Settings) -> None:
        self.settings = settings
        self.health = Health(backend)
        options = [
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # several worker processes share the port (the kernel spreads the connections);
            # one alone must own it, so a second server on the port fails instead of sharing
            ("grpc.so_reuseport", int(settings.workers > 1)),
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(backend, Calls(settings, metrics)), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"{settings.host}:{settings.grpc_port}"
        self._follower: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(
                f"gRPC could not listen on {self.address} ({exc}); set SEEDSERVE_GRPC_PORT to a "
                "free port, or 0 for no gRPC"
            ) from None
        await self.health.set("live", SERVING)
        await self.health.refresh()
        await self.server.start()
        self._follower = asyncio.create_task(self.health.follow())
        log.info("grpc listening", extra={"address": self.address})

    def drain_on_signals(self) -> None:
        """Start draining as soon as SIGTERM/SIGINT arrives, before uvicorn's handler runs (its
        HTTP drain comes first and the lifespan's shutdown only after it)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's (an in-process test client runs elsewhere)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin_stop)
                if callable(previous):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def begin_stop(self) -> asyncio.Task[None]:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def stop(self) -> None:
        await self.begin_stop()

    async def _stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_timeout_s)
        log.info("grpc stopped")
