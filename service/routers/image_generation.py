"""Image generation: the OpenAI images API shape, PNG endpoints for browsers and curl, and VAE
reconstruction. Sampling runs in the task pool and stops when the client goes away."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth import InferenceAuth
from service.dataplane import DataPlane
from service.deps import DataPlaneDep, JsonBody, RegistryDep, SettingsDep
from service.errors import Cancelled, InvalidInput
from service.http_errors import OPENAI_ERRORS, OpenAIRoute
from service.protocol.types import MAX_SEED, ErrorResponse
from service.registry import Registry
from service.runtimes import ImageGenerator
from service.settings import Settings
from service.tasks import imagegen
from service.tasks.image_preprocessing import ImageSpec, preprocess
from service.tasks.labels import label_from_prompt, resolve_label
from service.uploads import pictures_body, read_images

router = APIRouter(tags=["image generation"], dependencies=[InferenceAuth])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
PNG: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"content": {"image/png": {}}, "description": "A PNG: one image, or a grid of them."},
}
Sampler = Literal["ddim", "ddpm"]


class ImageGenerationRequest(BaseModel):
    """OpenAI's images request; a class label stands in for the free-text prompt."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A generator, e.g. `diffusion-mnist`.")
    prompt: str | None = Field(None, max_length=1000, description="Text naming a class.")
    label: int | str | None = Field(None, description="Class index or name for every image.")
    labels: list[int | str] | None = Field(None, description="One class per image.")
    n: int | None = Field(None, ge=1, description="Images to generate (default 1).")
    size: str | None = Field(None, description="Must be the model's size, e.g. `28x28`.")
    response_format: Literal["b64_json", "png"] = Field(
        "b64_json", description="`b64_json` (OpenAI) or `png`: one PNG grid as the body."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed, same images.")
    steps: int | None = Field(None, ge=1, description="Denoising steps (diffusion only).")
    guidance: float | None = Field(
        None, ge=0, le=50, description="Classifier-free guidance (diffusion only)."
    )
    sampler: Sampler | None = Field(None, description="`ddim` or `ddpm` (diffusion only).")
    user: str | None = Field(None, description="Accepted for compatibility; unused.")


class GeneratedImage(BaseModel):
    b64_json: str
    revised_prompt: str = Field(description="The class that was drawn.")


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[GeneratedImage]
    model: str
    seed: int
    labels: list[str]


def generator(registry: Registry, name: str, version: str | None = None) -> ImageGenerator:
    return registry.get_runtime(ImageGenerator, name, version)


def class_ids(
    model: ImageGenerator,
    label: int | str | None,
    labels: list[int | str] | None,
    prompt: str | None,
    n: int | None,
) -> list[int]:
    names = model.config.labels
    if labels is not None:
        if label is not None:
            raise InvalidInput("give label or labels, not both", param="labels")
        if n is not None and n != len(labels):
            raise InvalidInput(f"n = {n} but {len(labels)} labels were given", param="n")
        if not labels:
            raise InvalidInput("labels must not be empty", param="labels")
        return [resolve_label(x, names, f"labels[{i}]") for i, x in enumerate(labels)]
    if label is not None:
        index = resolve_label(label, names)
    elif prompt:
        index = label_from_prompt(prompt, names)
    else:
        index = 0
    return [index] * (n or 1)


def check_count(settings: Settings, count: int) -> None:
    """Refuse too many images before building anything per image (n may be 10**30)."""
    if count > settings.max_images_per_generation:
        raise InvalidInput(
            f"n must be at most {settings.max_images_per_generation}, got {count}", param="n"
        )


def check_work(
    model: ImageGenerator,
    settings: Settings,
    count: int,
    steps: int | None,
    guidance: float | None,
    sampler: str | None,
) -> None:
    check_count(settings, count)
    generation = model.generation
    if generation.get("kind") == "decoder":
        imagegen.refuse_diffusion_options(steps, guidance, sampler)
        return
    defaults = generation.get("defaults", {})
    steps = int(defaults.get("steps", 1) if steps is None else steps)
    guidance = float(defaults.get("guidance", 1.0) if guidance is None else guidance)
    if steps > settings.max_diffusion_steps:
        raise InvalidInput(f"steps must be at most {settings.max_diffusion_steps}", param="steps")
    work = count * steps * (1 if guidance in (0.0, 1.0) else 2)
    if work > settings.max_denoising_work:
        raise InvalidInput(
            f"n x steps{' x 2 (guidance)' if guidance not in (0.0, 1.0) else ''} = {work} is over "
            f"the limit of {settings.max_denoising_work} image-steps per request",
            param="n",
        )


async def generate_images(
    request: Request,
    dataplane: DataPlane,
    settings: Settings,
    model: ImageGenerator,
    ids: list[int],
    seed: int,
    steps: int | None,
    guidance: float | None,
    sampler: str | None,
) -> np.ndarray:
    check_work(model, settings, len(ids), steps, guidance, sampler)
    sessions = model.sessions
    labels = model.labels
    metrics = dataplane.metrics
    config = model.config.raw
    step_batcher = model.step_batcher

    def work(cancel: threading.Event) -> np.ndarray:
        def on_step(done: int, total: int) -> None:
            metrics.denoising_steps.labels(*labels).inc()
            if cancel.is_set():
                raise Cancelled("the client went away; generation stopped")

        return imagegen.generate(
            config, sessions, ids, None, seed, steps, guidance, sampler, on_step, step_batcher
        )

    async with dataplane.track(model):
        start = time.perf_counter()
        images: np.ndarray = await dataplane.run_task(model, work, request.is_disconnected)
        metrics.generation_duration.labels(*labels).observe(time.perf_counter() - start)
        metrics.generated_images.labels(*labels).inc(len(images))
    return images


def check_size(model: ImageGenerator, size: str | None) -> None:
    if size is None:
        return
    height, width = model.image_size
    if size not in {f"{width}x{height}"}:
        raise InvalidInput(f"size must be {width}x{height} for this model", param="size")


async def images_generations(
    body: ImageGenerationRequest,
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
) -> Any:
    """Generate class-conditional images (OpenAI images API shape)."""
    model = generator(registry, body.model)
    check_size(model, body.size)
    check_count(settings, body.n or 1)
    ids = class_ids(model, body.label, body.labels, body.prompt, body.n)
    seed = secrets.randbits(31) if body.seed is None else body.seed
    images = await generate_images(
        request, dataplane, settings, model, ids, seed, body.steps, body.guidance, body.sampler
    )
    names = [model.config.labels[i] for i in ids]
    if body.response_format == "png":
        return png_response(images, len(images), seed)
    return ImageGenerationResponse(
        created=int(time.time()),
        data=[
            GeneratedImage(
                b64_json=base64.b64encode(imagegen.to_png(image)).decode(), revised_prompt=name
            )
            for image, name in zip(images, names, strict=True)
        ],
        model=model.name,
        seed=seed,
        labels=names,
    )


# OpenAI's images API answers errors in OpenAI's shape, as /v1/completions does, so that the
# `openai` client raises BadRequestError (and the like) carrying our message.
router.add_api_route(
    "/v1/images/generations",
    images_generations,
    methods=["POST"],
    response_model=ImageGenerationResponse,
    responses={**OPENAI_ERRORS, 200: {"content": {"image/png": {}}}},
    dependencies=[JsonBody],
    route_class_override=OpenAIRoute,
)


def png_response(images: np.ndarray, nrow: int, seed: int, scale: int = 1) -> Response:
    if len(images) == 1 and scale == 1:
        content = imagegen.to_png(images[0])
    else:
        content = imagegen.grid_png(images, min(nrow, len(images)), scale=scale)
    return Response(content, media_type="image/png", headers={"X-Seed": str(seed)})


@router.get(
    "/v1/models/{model_name}/generate-image",
    response_class=Response,
    responses=PNG,
    operation_id="generate_image_get",
)
@router.post(
    "/v1/models/{model_name}/generate-image",
    response_class=Response,
    responses=PNG,
    operation_id="generate_image_post",
)
async def generate_image(
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
    label: str | None = Query(None, description="Class index or name (default: the first class)."),
    n: int = Query(1, ge=1, description="Images; more than one come back as a grid."),
    per_class: bool = Query(False, description="n images of every class, one row per class."),
    seed: int | None = Query(None, ge=0, le=MAX_SEED),
    steps: int | None = Query(None, ge=1, description="Denoising steps (diffusion only)."),
    guidance: float | None = Query(None, ge=0, le=50, description="Diffusion only."),
    sampler: Sampler | None = Query(None, description="`ddim` or `ddpm` (diffusion only)."),
    nrow: int | None = Query(None, ge=1, le=256, description="Images per grid row (default n)."),
    scale: int = Query(1, ge=1, le=16, description="Enlarge every pixel this many times."),
    version: str | None = Query(None),
) -> Response:
    """Generate and return a PNG (one image, or a grid), for browsers and curl."""
    model = generator(registry, model_name, version)
    if per_class:
        ids = per_class_ids(settings, model, n, label)
    else:
        check_count(settings, n)
        ids = class_ids(model, None if label is None else _label_value(label), None, None, n)
    seed = secrets.randbits(31) if seed is None else seed
    images = await generate_images(
        request, dataplane, settings, model, ids, seed, steps, guidance, sampler
    )
    return png_response(images, nrow or n, seed, scale)


def per_class_ids(
    settings: Settings, model: ImageGenerator, n: int, label: str | None
) -> list[int]:
    """n images of every class, class by class; the limit counts every image asked for."""
    if label is not None:
        raise InvalidInput("give label or per_class=true, not both", param="label")
    classes = len(model.config.labels)
    total = n * classes
    if total > settings.max_images_per_generation:
        raise InvalidInput(
            f"per_class=true with n={n} asks for {total} images ({n} for each of {classes} "
            f"classes): at most {settings.max_images_per_generation} per request",
            param="n",
        )
    return [c for c in range(classes) for _ in range(n)]


def _label_value(label: str) -> int | str:
    # isascii: '²'.isdigit() is true, but int('²') fails
    return int(label) if label.isascii() and label.isdigit() else label


@router.post(
    "/v1/models/{model_name}/reconstruct",
    response_class=Response,
    responses={**PNG, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
    openapi_extra=pictures_body(),
)
async def reconstruct(
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
    label: str = Query(..., description="The picture's class (the VAE is class-conditional)."),
    version: str | None = Query(None),
) -> Response:
    """Upload pictures (as for classify); get the VAE's reconstructions back as one PNG."""
    model = generator(registry, model_name, version)
    if "encoder" not in model.generation:
        raise InvalidInput(
            f"model {model_name!r} has no encoder: only VAEs reconstruct", param="model"
        )
    pictures = await read_images(request, settings)
    height, width = model.image_size
    spec = ImageSpec(
        height=height, width=width, center=model.config.preprocessing.get("center", "mass")
    )
    pixels = np.stack([preprocess(p, spec)[0] for p in pictures])
    index = resolve_label(_label_value(label), model.config.labels)
    sessions = model.sessions
    async with dataplane.track(model):
        images = await dataplane.run_task(
            model,
            lambda cancel: imagegen.reconstruct(
                model.config.raw, sessions, pixels, [index] * len(pixels)
            ),
        )
    return png_response(images, len(images), 0)
