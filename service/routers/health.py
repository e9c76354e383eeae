"""Open Inference Protocol server endpoints: metadata, liveness, readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import __version__
from service.deps import RegistryDep
from service.protocol.types import ServerMetadata

router = APIRouter(prefix="/v2", tags=["health"])

EXTENSIONS = ["binary_tensor_data", "model_configuration", "classification", "generate"]


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """Server name, version and the protocol extensions it supports."""
    return ServerMetadata(name="seedserve", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", response_class=Response, responses={200: {"description": "Live."}})
async def live() -> Response:
    """Liveness: the process answers."""
    return Response(status_code=200)


@router.get(
    "/health/ready",
    response_class=Response,
    responses={200: {"description": "Ready."}, 503: {"description": "Not ready."}},
)
async def ready(request: Request, registry: RegistryDep) -> Response:
    """Readiness: start-up finished and at least one model (every model, if strict) is ready."""
    if not getattr(request.app.state, "started", False):
        return Response(status_code=503)
    states = list(registry.models.values())
    if request.app.state.settings.strict_readiness:
        ok = bool(states) and all(s.ready for s in states)
    else:
        ok = any(s.ready for s in states)
    return Response(status_code=200 if ok else 503)
