"""Open Inference Protocol server endpoints: metadata, liveness, readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service import __version__
from service.deps import RegistryDep
from service.protocol.types import EXTENSIONS, ServerMetadata

router = APIRouter(prefix="/v2", tags=["health"])

# The protocol's bodies (KServe's InferenceRESTClient reads them); probes read the status code.
LIVE = b'{"live":true}'
READY, NOT_READY = b'{"ready":true}', b'{"ready":false}'


def _body(key: str, description: str) -> dict[str, Any]:
    schema = {"type": "object", "required": [key], "properties": {key: {"type": "boolean"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """Server name, version and the protocol extensions it supports."""
    return ServerMetadata(name="seedserve", version=__version__, extensions=EXTENSIONS)


@router.get(
    "/health/live",
    response_class=Response,
    responses={200: _body("live", 'Live: `{"live": true}`.')},
)
async def live() -> Response:
    """Liveness: the process answers `{"live": true}`."""
    return Response(LIVE, media_type="application/json")


@router.get(
    "/health/ready",
    response_class=Response,
    responses={
        200: _body("ready", 'Ready: `{"ready": true}`.'),
        503: _body("ready", 'Not ready: `{"ready": false}`.'),
    },
)
async def ready(request: Request, registry: RegistryDep) -> Response:
    """Readiness: start-up finished and at least one model (every model, if strict) is ready;
    `{"ready": true}` with 200, or `{"ready": false}` with 503."""
    if not getattr(request.app.state, "started", False):
        return Response(NOT_READY, status_code=503, media_type="application/json")
    ok = registry.ready()
    if ok:
        return Response(READY, media_type="application/json")
    return Response(NOT_READY, status_code=503, media_type="application/json")
