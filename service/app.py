"""The application factory: `create_app(settings)` wires settings -> repository -> registry ->
data plane -> routers. Nothing is loaded at import time; the lifespan loads the models."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
from service.fastpath import App, error_parts
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.registry import Registry
from service.repository import Repository
from service.routers import (
    classify,
    completions,
    health,
    images,
    models,
    playground,
    repository,
    text,
    v2,
)
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, metrics: Metrics | None = None) -> App:
    settings = settings or Settings()
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.switch_interval_ms > 0:
            # the decode engine's thread and the event loop both run Python: see the setting
            sys.setswitchinterval(settings.switch_interval_ms / 1e3)
        registry = Registry(Repository(settings.models_dir), settings, metrics)
        app.state.registry = registry
        app.state.dataplane = DataPlane(registry, metrics, settings)
        # Made before the models load: the cluster journal's end now is what that load reflects.
        cluster = Cluster(app.state.dataplane, settings.cluster_dir, settings.poll_interval_s)
        app.state.cluster = cluster
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
            if settings.gc_freeze:
                gc.unfreeze()  # what start-up kept becomes collectable again
            await cluster.close()
            await app.state.dataplane.close()

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
    _add_error_handlers(app)
    add_docs(app)
    for module in (health, v2, repository, models, classify, images, playground, text, completions):
        app.include_router(module.router)

    @app.get("/metrics", tags=["metrics"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of every metric."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


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
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )
