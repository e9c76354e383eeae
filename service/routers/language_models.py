"""Language models: next-word prediction, and text generation through the Open Inference
Protocol generate extension (`/v2/models/{name}/generate`, `/generate_stream`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.auth import InferenceAuth
from service.dataplane import DataPlane
from service.deps import DataPlaneDep, JsonBody, RegistryDep, SettingsDep
from service.errors import Cancelled, ServiceError
from service.protocol.text import (
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    GenerateStreamResponse,
    NextWordRequest,
    NextWordResponse,
)
from service.protocol.types import ErrorResponse
from service.runtimes import LanguageModel
from service.settings import Settings
from service.sse import SSE_HEADERS, sse
from service.tasks.generation_jobs import (
    Event,
    SequenceTokens,
    first_event,
    generation_job,
    language_model,
    next_word_answer,
    stream_generation,
)

# Every route here takes a JSON body.
router = APIRouter(tags=["language models"], dependencies=[InferenceAuth, JsonBody])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 503)
}
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "Server-sent events, one `data: {json}` per token.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}


@router.post("/v1/models/{model_name}/next-word", response_model=NextWordResponse, responses=ERRORS)
async def next_word(
    body: NextWordRequest,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
) -> NextWordResponse:
    """The most likely next words after a text, with their probabilities and token ids."""
    # well-formed requests are answered by service/fastpath.py, with the same function
    answer = await next_word_answer(
        registry, dataplane, settings, model_name, body.text, body.top_k
    )
    return NextWordResponse.model_validate(answer)


async def start_generation(
    request: Request,
    dataplane: DataPlane,
    settings: Settings,
    model: LanguageModel,
    body: GenerateRequest,
    each_step: bool,
) -> AsyncGenerator[Event, None]:
    job = generation_job(settings, model, body.text_input, body.parameters or GenerateParameters())
    events = stream_generation(dataplane, model, job, request.receive, each_step)
    await first_event(events)
    return events


@router.post("/v2/models/{model_name}/generate", response_model=GenerateResponse, responses=ERRORS)
@router.post(
    "/v2/models/{model_name}/versions/{model_version}/generate",
    response_model=GenerateResponse,
    responses=ERRORS,
)
async def generate(
    body: GenerateRequest,
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
    model_version: str | None = None,
) -> GenerateResponse:
    """Generate text from `text_input` (Open Inference Protocol generate extension)."""
    model = language_model(registry, model_name, model_version)
    events = await start_generation(request, dataplane, settings, model, body, False)
    pieces, reason = [], "length"
    async for event in events:
        if isinstance(event, SequenceTokens):
            for _, token in event.tokens:
                pieces.append(token.text)
                reason = token.finish_reason or reason
    return GenerateResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=body.id,
        text_output="".join(pieces),
        finish_reason="stop" if reason == "stop" else "length",
    )


@router.post(
    "/v2/models/{model_name}/generate_stream", response_class=Response, responses=EVENT_STREAM
)
@router.post(
    "/v2/models/{model_name}/versions/{model_version}/generate_stream",
    response_class=Response,
    responses=EVENT_STREAM,
)
async def generate_stream(
    body: GenerateRequest,
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
    model_name: str,
    model_version: str | None = None,
) -> StreamingResponse:
    """Generate text as server-sent events, one per token; the last has `done: true`."""
    model = language_model(registry, model_name, model_version)
    events = await start_generation(request, dataplane, settings, model, body, True)
    head = {"model_name": model.name, "model_version": str(model.version), "id": body.id}

    async def stream() -> AsyncIterator[bytes]:
        done = False
        try:
            async for event in events:
                if not isinstance(event, SequenceTokens):
                    continue
                for _, token in event.tokens:
                    reason = token.finish_reason
                    done = reason is not None
                    chunk = GenerateStreamResponse(
                        **head, text_output=token.text, done=done, finish_reason=reason
                    )
                    yield sse(chunk.model_dump())
            if not done:  # max_tokens 0: nothing was written
                yield sse({**head, "text_output": "", "done": True, "finish_reason": "length"})
        except Cancelled:
            return
        except ServiceError as exc:  # the status is already 200: the error travels as an event
            yield sse({"error": exc.message})
        finally:
            await events.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
