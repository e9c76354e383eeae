"""Open Inference Protocol (KServe V2) model endpoints, with the binary tensor extension and
Triton's statistics extension."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from service.auth import InferenceAuth
from service.deps import RegistryDep
from service.errors import ModelNotReady
from service.pbtxt import triton_config_dict
from service.protocol.types import ErrorResponse, ModelMetadata
from service.runtimes import TensorModel

router = APIRouter(
    prefix="/v2/models", tags=["open inference protocol"], dependencies=[InferenceAuth]
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


def _json_schema(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


MODEL_READY_SCHEMA = {
    "type": "object",
    "required": ["name", "ready"],
    "properties": {
        "name": {"type": "string"},
        "ready": {"type": "boolean"},
        "error": {"type": "string", "description": "Why not, when it is not ready."},
    },
}
READY: dict[int | str, dict[str, Any]] = {
    200: _json_schema("The model (version) is ready: `ready` is true.", MODEL_READY_SCHEMA),
    404: {"model": ErrorResponse},
    503: _json_schema(
        "The model failed to load: `ready` is false, `error` says why.", MODEL_READY_SCHEMA
    ),
}

DURATION = {
    "type": "object",
    "required": ["count", "ns"],
    "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}},
}
STATS_SCHEMA = {
    "type": "object",
    "required": ["model_stats"],
    "properties": {
        "model_stats": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name", "version", "last_inference", "inference_count", "execution_count",
                    "inference_stats", "batch_stats",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "last_inference": {
                        "type": "integer",
                        "description": "Milliseconds since the epoch; 0 = never.",
                    },
                    "inference_count": {"type": "integer"},
                    "execution_count": {"type": "integer"},
                    "inference_stats": {
                        "type": "object",
                        "properties": {
                            key: DURATION
                            for key in (
                                "success", "fail", "queue", "compute_input", "compute_infer",
                                "compute_output", "cache_hit", "cache_miss",
                            )
                        },
                    },
                    "response_stats": {"type": "object"},
                    "batch_stats": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "batch_size": {"type": "integer"},
                                "compute_input": DURATION,
                                "compute_infer": DURATION,
                                "compute_output": DURATION,
                            },
                        },
                    },
                    "memory_usage": {"type": "array", "items": {"type": "object"}},
                },
            },
        }
    },
}  # fmt: skip
STATS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: _json_schema(
        "Triton's statistics extension: per model version, counts and total nanoseconds since "
        "it loaded, as served by the worker that answers.",
        STATS_SCHEMA,
    ),
}

INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "Output tensors; binary ones follow the JSON header "
        "(`Inference-Header-Content-Length`).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    413: {"model": ErrorResponse},
}

INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "parameters": {"type": "object"},
                                    "data": {},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor extension: JSON header of "
                "`Inference-Header-Content-Length` bytes, then the raw tensors.",
            },
        },
    }
}


# Registered before the metadata routes: routes are tried in order and this one carries the load.
@router.post(
    "/{model_name}/infer",
    response_class=Response,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
@router.post(
    "/{model_name}/versions/{model_version}/infer",
    response_class=Response,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    """Run inference on JSON tensors or binary tensors (binary tensor data extension)."""
    # Declared for the OpenAPI schema and method matching only: `App` (service/fastpath.py)
    # answers every POST to this path itself, before the router is consulted.
    raise ModelNotReady("the V2 infer route is served by the application itself")


# Before the metadata routes: `/v2/models/stats` is not a model named "stats".
@router.get("/stats", response_class=Response, responses=STATS)
async def all_statistics(registry: RegistryDep) -> Response:
    """Statistics of every loaded version of every model (Triton's statistics extension)."""
    states = sorted(registry.models.items())
    return _statistics(m for _, state in states for _, m in sorted(state.versions.items()))


@router.get("/{model_name}/stats", response_class=Response, responses=STATS)
@router.get(
    "/{model_name}/versions/{model_version}/stats", response_class=Response, responses=STATS
)
async def model_statistics(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    """Statistics of a model's loaded versions, or of one version (Triton's statistics
    extension)."""
    model = registry.get(model_name, model_version)
    if model_version is not None:
        return _statistics([model])
    state = registry.models.get(model_name)  # (a reload in a thread may swap it meanwhile)
    versions = state.versions if state is not None else {model.version: model}
    return _statistics(m for _, m in sorted(versions.items()))


def _statistics(models: Iterable[TensorModel]) -> Response:
    stats = [m.stats.report(m.name, m.version) for m in models]
    return Response(orjson.dumps({"model_stats": stats}), media_type="application/json")


@router.get("/{model_name}", response_model=ModelMetadata, responses=ERRORS)
@router.get(
    "/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=ERRORS
)
async def model_metadata(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> ModelMetadata:
    """A model's inputs, outputs, versions and platform."""
    model = registry.get(model_name, model_version)
    return model.metadata(sorted(registry.models[model_name].versions))


@router.get("/{model_name}/ready", response_class=Response, responses=READY)
@router.get(
    "/{model_name}/versions/{model_version}/ready", response_class=Response, responses=READY
)
async def model_ready(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    """`{"name", "ready": true}` (200) when the model (version) is loaded and ready; 503 with
    `"ready": false` and the reason when it failed to load; 404 when there is no such model."""
    try:
        registry.get(model_name, model_version)
    except ModelNotReady as exc:
        body = {"name": model_name, "ready": False, "error": exc.message}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    body = {"name": model_name, "ready": True}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/{model_name}/config", responses=ERRORS)
@router.get("/{model_name}/versions/{model_version}/config", responses=ERRORS)
async def model_config(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> dict[str, Any]:
    """The model's completed config in Triton's form (the model-configuration extension), with
    a task model's own sections of config.json (task, labels, preprocessing...) beside it."""
    config = registry.get(model_name, model_version).effective_config()
    body = triton_config_dict(config)
    for key, value in config.raw.items():
        if key not in TRITON_FORM_OF_JSON:
            body.setdefault(key, value)
    return body


# config.json fields that the Triton form already says in its own words
TRITON_FORM_OF_JSON = {
    "name", "platform", "max_batch_size", "inputs", "outputs", "batching", "version_policy",
    "onnxruntime",
}  # fmt: skip
