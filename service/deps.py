"""FastAPI dependencies as `Annotated` aliases: routers ask for what they use, nothing global."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.cluster import Cluster
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings

# `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
# dependency per request that cost more than the inference of a small model.


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def get_cluster(request: Request) -> Cluster:
    return request.app.state.cluster


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


RegistryDep = Annotated[Registry, Depends(get_registry)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
ClusterDep = Annotated[Cluster, Depends(get_cluster)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
