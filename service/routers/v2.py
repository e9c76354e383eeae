"""Open Inference Protocol (KServe V2) model endpoints, with the binary tensor extension."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service.auth import InferenceAuth
from service.dataplane import DataPlane
from service.deps import RegistryDep
from service.pbtxt import triton_config_dict
from service.protocol.types import ErrorResponse, ModelMetadata, TensorMetadata
from service.protocol.v2 import (
    HEADER,
    RequestedOutput,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    top_classes,
)
from service.registry import Registry
from service.runtimes import TensorModel

router = APIRouter(
    prefix="/v2/models", tags=["open inference protocol"], dependencies=[InferenceAuth]
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}

READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "The model (version) is ready."},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
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
    # Served by service/fastpath.py in the running app; this route documents the endpoint and
    # answers should the fast path ever decline a request.
    body = await request.body()
    content, headers = await run_infer(
        request.app.state.registry,
        request.app.state.dataplane,
        model_name,
        model_version,
        body,
        request.headers.get(HEADER),
    )
    return Response(content, headers=headers)


async def run_infer(
    registry: Registry,
    dataplane: DataPlane,
    model_name: str,
    model_version: str | None,
    body: bytes,
    header_length: str | None,
) -> tuple[bytes, dict[str, str]]:
    """One V2 infer request: the response body and its headers (content type, binary header)."""
    model = registry.get(model_name, model_version)
    async with dataplane.track(model):
        parsed = parse_infer_request(body, parse_header_length(header_length, len(body)))
        requested = parsed.outputs
        names = [o.name for o in requested] if requested is not None else None
        results = await dataplane.infer(model, parsed.inputs, names, parsed.parameters)
        outputs = [
            (name, datatype, array, parsed.binary_output)
            for name, datatype, array in _typed(model, results)
        ]
        if requested is not None:
            outputs = [
                _shaped(model, output, wanted)
                for output, wanted in zip(outputs, requested, strict=True)
            ]
        content, json_length = encode_infer_response(
            model.name, str(model.version), parsed.id, outputs
        )
    if json_length is None:
        return content, {"content-type": "application/json"}
    return content, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(json_length),
    }


def _typed(model: TensorModel, results: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    return [(name, model.output_types[name], a) for name, a in results.items()]


def _shaped(
    model: TensorModel, output: tuple[str, str, np.ndarray, bool], wanted: RequestedOutput
) -> tuple[str, str, np.ndarray, bool]:
    """One requested output as asked: binary or JSON, the top classes where asked for them."""
    name, datatype, array, _ = output
    if wanted.classification:
        labels = model.output_labels.get(name, ())
        array = top_classes(array, wanted.classification, model.config.batches, labels)
        datatype = "BYTES"
    return name, datatype, array, wanted.binary


def metadata(model: TensorModel, versions: list[int]) -> ModelMetadata:
    batch = [-1] if model.config.max_batch_size > 0 else []
    return ModelMetadata(
        name=model.name,
        versions=[str(v) for v in versions],
        platform=model.config.platform,
        inputs=[
            TensorMetadata(name=s.name, datatype=s.datatype, shape=batch + list(s.dims))
            for s in model.config.inputs
        ],
        outputs=[
            TensorMetadata(name=s.name, datatype=s.datatype, shape=batch + list(s.dims))
            for s in model.config.outputs
        ],
        parameters={"task": model.config.task, "provider": model.provider},
    )


@router.get("/{model_name}", response_model=ModelMetadata, responses=ERRORS)
@router.get(
    "/{model_name}/versions/{model_version}", response_model=ModelMetadata, responses=ERRORS
)
async def model_metadata(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> ModelMetadata:
    """A model's inputs, outputs, versions and platform."""
    model = registry.get(model_name, model_version)
    return metadata(model, sorted(registry.models[model_name].versions))


@router.get("/{model_name}/ready", response_class=Response, responses=READY)
@router.get(
    "/{model_name}/versions/{model_version}/ready", response_class=Response, responses=READY
)
async def model_ready(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    """200 when the model (version) is loaded and ready."""
    registry.get(model_name, model_version)
    return Response(status_code=200)


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
