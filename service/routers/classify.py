"""`POST /v1/models/{name}/classify`: pictures in, top-k labels out."""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request

from service.auth import InferenceAuth
from service.deps import JSON, DataPlaneDep, RegistryDep, SettingsDep, require_media_type
from service.errors import InvalidInput
from service.protocol.types import ClassifyResponse, ErrorResponse, OodCheck, Prediction, Timing
from service.runtimes import Classifier
from service.settings import Settings
from service.tasks.class_scores import top_k
from service.tasks.graphs import GraphSpec, graphs_from_json, images_to_inputs
from service.tasks.image_preprocessing import Reframe, preprocess
from service.uploads import PICTURE_TYPES, pictures_body, read_images

router = APIRouter(prefix="/v1/models", tags=["classification"], dependencies=[InferenceAuth])

CLASSIFY_BODY = pictures_body(
    graph={
        "type": "object",
        "description": "Graph classifiers only: {nodes: [[intensity, row, column], ...], "
        "edges: [[source, target], ...]}.",
    },
    graphs={"type": "array", "items": {"type": "object"}},
)


@router.post(
    "/{model_name}/classify",
    response_model=ClassifyResponse,
    responses={
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
    },
    openapi_extra=CLASSIFY_BODY,
)
async def classify(
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
    top_k_: int = Query(5, alias="top_k", ge=1, description="How many classes per image."),
    reframe: Reframe = Query(
        "auto",
        description="Crop, scale and centre the object as in training: auto = unless the picture "
        "already has the model's size.",
    ),
    version: str | None = Query(None, description="Model version (default: the newest)."),
) -> ClassifyResponse:
    """Classify one or more pictures (multipart files, base64 JSON or pixel arrays), or graphs
    (JSON) for a graph classifier."""
    model = registry.get_runtime(Classifier, model_name, version, param="model_name")
    if top_k_ > settings.max_top_k:
        raise InvalidInput(f"top_k must be at most {settings.max_top_k}", param="top_k")
    async with dataplane.track(model):
        start = time.perf_counter()
        graph_spec = model.graph
        if graph_spec is None:
            feeds = await read_image_batch(request, settings, model, reframe)
        else:
            feeds = await read_graph_batch(request, settings, model, reframe, graph_spec)
        prepared = time.perf_counter()
        outputs = await dataplane.infer(model, feeds, None, internal=True)
        done = time.perf_counter()
        predictions = top_k(model.probabilities(outputs), model.config.labels, top_k_)
        checks = model.ood_checks(outputs, feeds)
    return ClassifyResponse(
        model_name=model.name,
        model_version=str(model.version),
        predictions=[[Prediction(**p) for p in row] for row in predictions],
        ood=None if checks is None else [OodCheck(**c) for c in checks],
        timing=Timing(
            preprocess_ms=(prepared - start) * 1e3,
            inference_ms=(done - prepared) * 1e3,
            total_ms=(time.perf_counter() - start) * 1e3,
        ),
    )


async def read_image_batch(
    request: Request, settings: Settings, model: Classifier, reframe: Reframe
) -> dict[str, np.ndarray]:
    """The pictures of the request, preprocessed as in training, as the model's one input."""
    images = await read_images(request, settings)
    spec = model.image
    batch = np.stack([preprocess(image, spec, reframe) for image in images])
    return {model.config.inputs[0].name: batch}


async def read_graph_batch(
    request: Request, settings: Settings, model: Classifier, reframe: Reframe, spec: GraphSpec
) -> dict[str, np.ndarray]:
    """A graph classifier's inputs: JSON graphs as given, or pictures converted as in training."""
    if require_media_type(request, PICTURE_TYPES) == JSON:
        try:
            obj = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}", param="body") from None
        if isinstance(obj, dict) and {"graph", "graphs"} & set(obj):
            return graphs_from_json(obj, spec, settings.max_images_per_request)
    images = await read_images(request, settings)
    return images_to_inputs([preprocess(image, model.image, reframe) for image in images], spec)
