"""Open Inference Protocol model-repository extension: index, load, unload (admin key required)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from service.auth import AdminAuth
from service.deps import ClusterDep, RegistryDep
from service.errors import InvalidInput
from service.protocol.types import ErrorResponse, RepositoryModel
from service.repository import check_name

router = APIRouter(
    prefix="/v2/repository",
    tags=["model repository"],
    dependencies=[AdminAuth],
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
)


@router.post("/index", response_model=list[RepositoryModel])
async def index(request: Request, registry: RegistryDep) -> list[RepositoryModel]:
    """Every model in the repository with its state: READY, UNAVAILABLE (with the reason)."""
    ready_only = await _ready_filter(request)
    return [
        RepositoryModel(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in registry.index(ready_only)
    ]


async def _ready_filter(request: Request) -> bool:
    body = await request.body()
    if not body.strip():
        return False
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not valid JSON", param="body") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ready", False), bool):
        raise InvalidInput("body must be an object with an optional boolean `ready`", param="ready")
    return bool(obj.get("ready", False))


@router.post(
    "/models/{model_name}/load",
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
async def load(cluster: ClusterDep, model_name: str) -> dict[str, Any]:
    """Load (or reload) a model on every worker: the new version is loaded and warmed up before it
    replaces the old one; if it is broken the old one keeps serving and the error says why."""
    await cluster.load(check_name(model_name))
    return {}


@router.post("/models/{model_name}/unload", responses={404: {"model": ErrorResponse}})
async def unload(cluster: ClusterDep, model_name: str) -> dict[str, Any]:
    """Stop serving a model on every worker once its queued requests are answered."""
    await cluster.unload(check_name(model_name))
    return {}
