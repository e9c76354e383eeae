"""FastAPI dependencies as `Annotated` aliases: routers ask for what they use, nothing global."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from service.cluster import Cluster
from service.dataplane import DataPlane
from service.errors import UnsupportedMediaType
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings

JSON = "application/json"

# `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
# dependency per request that cost more than the inference of a small model.


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


async def get_cluster(request: Request) -> Cluster:
    cluster: Cluster = request.app.state.cluster
    return cluster


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def media_type(request: Request) -> str:
    """The request's media type in lower case, without parameters; "" when it sent none."""
    return media_type_of(request.headers.get("content-type", ""))


def media_type_of(content_type: str) -> str:
    """A Content-Type header's media type in lower case, without parameters."""
    return content_type.split(";")[0].strip().lower()


def is_json(media: str) -> bool:
    """Whether a media type is JSON: application/json or application/*+json, as FastAPI reads
    a body."""
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def require_media_type(request: Request, accepted: Sequence[str]) -> str:
    """The request's media type when it is one of `accepted` (`application/*+json` counting as
    JSON, as FastAPI reads it); UnsupportedMediaType (415) naming what was sent otherwise."""
    sent = media_type(request)
    if sent in accepted:
        return sent
    if JSON in accepted and is_json(sent):
        return JSON
    wanted = " or ".join(accepted)
    got = f"got {sent!r}" if sent else "got none (the header is missing)"
    hint = "send the header `Content-Type: application/json`"
    if "multipart/form-data" in accepted:
        hint = "upload pictures as multipart/form-data (field `file`) or " + hint
    if sent == "application/x-www-form-urlencoded":
        hint += " (`curl -d` alone sends application/x-www-form-urlencoded)"
    message = f"Content-Type must be {wanted}, {got}: {hint}"
    raise UnsupportedMediaType(message, param="Content-Type")


async def require_json(request: Request) -> None:
    """For every route whose body is JSON. It runs before FastAPI validates the body, which
    would otherwise call a body sent without `Content-Type: application/json` "not a valid
    dictionary"."""
    require_media_type(request, (JSON,))


RegistryDep = Annotated[Registry, Depends(get_registry)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
ClusterDep = Annotated[Cluster, Depends(get_cluster)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

# On each route whose body is JSON (`dependencies=[JsonBody]`): 415 unless the body is JSON.
JsonBody = Depends(require_json)
