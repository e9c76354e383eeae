"""The application factory: `create_app(settings)` wires settings -> repository -> registry ->
data plane -> routers. Nothing is loaded at import time; the lifespan loads the models."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service import __version__
from service.cluster import Cluster
from service.dataplane import DataPlane
from service.docs import add_docs
from service.errors import ServiceError
from service.fastpath import App
from service.grpcapi.inference import Backend
from service.grpcapi.server import GrpcServer
from service.http_errors import error_parts, validation_message
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.registry import Registry
from service.repository import Repository
from service.routers import (
    classify,
    completions,
    health,
    image_generation,
    language_models,
    model_control,
    models,
    open_inference,
    playground,
)
from service.settings import Settings
from service.tracing import configure_tracing, shutdown_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    span_exporter: SpanExporter | None = None,
) -> App:
    """The service. `span_exporter` (tests) receives every span, as `otlp_endpoint` would."""
    settings = settings or Settings()
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.switch_interval_ms > 0:
            # the decode engine's thread and the event loop both run Python: see the setting
            sys.setswitchinterval(settings.switch_interval_ms / 1e3)
        configure_tracing(settings, span_exporter)  # here: each worker process has its own
        registry = Registry(Repository(settings.models_dir), settings, metrics)
        app.state.registry = registry
        app.state.dataplane = DataPlane(registry, metrics, settings)
        # Made before the models load: the cluster journal's end now is what that load reflects.
        cluster = Cluster(app.state.dataplane, settings.cluster_dir, settings.poll_interval_s)
        app.state.cluster = cluster
        grpc_server = grpc_endpoint(app, settings, metrics)
        if grpc_server is not None:  # up before the models load: liveness answers meanwhile
            await grpc_server.start()
            grpc_server.drain_on_signals()
        # Loading blocks on onnxruntime; keep the loop free so liveness answers meanwhile.
        await asyncio.to_thread(registry.load_all_quietly)
        # the other workers' loads and unloads, and repository polling (one worker for all)
        await cluster.start()
        app.state.started = True
        if settings.gc_freeze:
            gc.collect()
            gc.freeze()
        ready = sum(s.ready for s in registry.models.values())
        log.info("ready", extra={"models_ready": ready, "models_total": len(registry.models)})
        try:
            yield
        finally:
            app.state.started = False
            if grpc_server is not None:
                await grpc_server.stop()  # begun at SIGTERM already, if one came
            if settings.gc_freeze:
                gc.unfreeze()  # what start-up kept becomes collectable again
            await cluster.close()
            await app.state.dataplane.close()
            shutdown_tracing()  # sends the spans still buffered

    app = App(
        title="seedserve",
        version=__version__,
        summary="onnxruntime model server: classification, next-word prediction, text and image "
        "generation, with the Open Inference Protocol and OpenAI-compatible endpoints.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started = False
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    app.fast_path = RequestMiddleware(
        app.infer, metrics, settings.max_body_bytes, settings.access_log
    )
    app.fast_next_word = RequestMiddleware(
        app.next_word, metrics, settings.max_body_bytes, settings.access_log
    )
    app.fast_completions = RequestMiddleware(
        app.completions, metrics, settings.max_body_bytes, settings.access_log
    )
    _add_error_handlers(app)
    add_docs(app)
    for module in (
        health, open_inference, model_control, models, classify, image_generation, playground,
        language_models, completions,
    ):  # fmt: skip
        app.include_router(module.router)

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of every metric."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def grpc_endpoint(app: FastAPI, settings: Settings, metrics: Metrics) -> GrpcServer | None:
    """The gRPC server over the app's registry, data plane and cluster; None when it is off."""
    if settings.grpc_port == 0:
        return None
    backend = Backend(
        settings,
        app.state.registry,
        app.state.dataplane,
        app.state.cluster,
        lambda: bool(app.state.started),
    )
    return GrpcServer(backend, metrics, settings)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        status, body, headers = error_parts(exc)
        return Response(body, status_code=status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
        # The client went away mid-upload: no one reads this answer, and it is no server error.
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # Invalid input is a 400 whichever parser found it (body, query or path parameters).
        return JSONResponse({"error": validation_message(exc)[0]}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}"
            message += f" (allowed: {allowed})" if allowed else ""
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
