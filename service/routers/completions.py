"""`POST /v1/completions`: OpenAI's completions API as vLLM serves it, so the official `openai`
client works unchanged, plain and streaming (server-sent events ending `data: [DONE]`).

Errors on this route use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
the statuses of every route (service/routers/http_errors.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.auth import InferenceAuth
from service.deps import JSON, DataPlaneDep, JsonBody, RegistryDep, SettingsDep
from service.errors import Cancelled, InvalidInput, ServiceError
from service.http_errors import OPENAI_ERRORS, OpenAIRoute, openai_error_body
from service.protocol.openai import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    FinishReason,
    Usage,
)
from service.sse import SSE_HEADERS, sse
from service.tasks.generation_jobs import (
    GenerationJob,
    SequenceTokens,
    check_generation,
    check_prompt,
    first_event,
    language_model,
    sampling_params,
    stop_strings,
    stream_generation,
)
from service.tasks.textgen import Context, GeneratedToken

router = APIRouter(tags=["openai"], dependencies=[InferenceAuth], route_class=OpenAIRoute)


def check_supported(body: CompletionRequest) -> None:
    """OpenAI parameters a word-level model cannot honour: refused unless at their neutral value."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0):
            raise InvalidInput(f"{name} is not supported; use repetition_penalty", param=name)
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidInput("best_of is not supported (it must equal n)", param="best_of")
    if body.logit_bias:
        raise InvalidInput("logit_bias is not supported", param="logit_bias")
    if body.suffix is not None:
        raise InvalidInput("suffix is not supported", param="suffix")


def finish(reason: str | None) -> FinishReason | None:
    return "stop" if reason == "stop" else "length" if reason == "length" else None


@dataclass
class Piece:
    """Text added to one choice, with its log-probabilities when they were asked for."""

    text: str
    logprobs: CompletionLogprobs | None = None


def alternatives(
    top: Sequence[tuple[str, float]] | None, token: str, logprob: float | None
) -> dict[str, float] | None:
    """vLLM's `top_logprobs` entry: the most likely tokens, and the token itself."""
    return None if top is None or logprob is None else {**dict(top), token: logprob}


def prompt_piece(context: Context, logprobs: bool) -> Piece:
    """The echoed prompt, exactly as typed; its tokens scored by the model, as generated tokens
    are, when asked (a token before the graph's window has no score: None)."""
    if not logprobs:
        return Piece(context.text)
    tokens = context.tokens
    scores = zip(tokens, context.prompt_logprobs, context.prompt_top, strict=True)
    return Piece(
        context.text,
        CompletionLogprobs(
            text_offset=[t.start for t in tokens],
            token_logprobs=list(context.prompt_logprobs),
            tokens=[t.text for t in tokens],
            top_logprobs=[alternatives(top, t.text, lp) for t, lp, top in scores],
        ),
    )


def token_piece(token: GeneratedToken, start: int, logprobs: bool) -> Piece:
    """A generated token's text; with logprobs, its word at `start` (the completion's start in
    the choice's text) + its own offset, so `text[text_offset[i]:]` begins with `tokens[i]`."""
    if not logprobs:
        return Piece(token.text)
    return Piece(
        token.text,
        CompletionLogprobs(
            text_offset=[start + token.offset],
            token_logprobs=[token.logprob],
            tokens=[token.word],
            top_logprobs=[alternatives(token.top, token.word, token.logprob)],
        ),
    )


def joined(pieces: Sequence[Piece]) -> CompletionLogprobs | None:
    parts = [p.logprobs for p in pieces if p.logprobs is not None]
    if not parts:
        return None
    return CompletionLogprobs(
        text_offset=[o for p in parts for o in p.text_offset],
        token_logprobs=[x for p in parts for x in p.token_logprobs],
        tokens=[t for p in parts for t in p.tokens],
        top_logprobs=[t for p in parts for t in p.top_logprobs],
    )


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    dependencies=[JsonBody],
    responses={
        **OPENAI_ERRORS,
        200: {
            "description": "The completions; with `stream: true`, server-sent events of the "
            "same shape carrying the new text, ending `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def completions(
    body: CompletionRequest,
    request: Request,
    registry: RegistryDep,
    dataplane: DataPlaneDep,
    settings: SettingsDep,
) -> Response:
    """Complete one prompt or several (OpenAI completions API, vLLM's extra `top_k` and
    `repetition_penalty` included)."""
    model = language_model(registry, body.model)
    check_supported(body)
    decoder = model.decoder
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidInput("prompt must be a text or a non-empty list of texts", param="prompt")
    tokens = [check_prompt(settings, decoder, prompt, "prompt") for prompt in prompts]
    n = body.n or 1
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    stop = stop_strings(body.stop)
    check_generation(settings, max_tokens, n * len(prompts), body.logprobs, stop)
    # each prompt's choices get the same seeds, so a prompt completes alike alone or in a list
    seeded = sampling_params(
        body.temperature, body.top_p, body.top_k, body.repetition_penalty, body.seed, n
    )
    logprobs = body.logprobs is not None
    job = GenerationJob(
        prompts, n, max_tokens, seeded * len(prompts), stop, body.logprobs or 0,
        prompt_logprobs=body.logprobs if body.echo else None, prompt_tokens=tokens,
    )  # fmt: skip
    events = stream_generation(dataplane, model, job, request.receive, bool(body.stream))
    read = await first_event(events)
    echo = [prompt_piece(c, logprobs) if body.echo else Piece("") for c in read.contexts]
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model.name,
    }
    prompt_tokens = sum(len(c.tokens) for c in read.contexts)
    count = n * len(prompts)
    finished: list[str | None] = [None] * count

    def add(index: int, token: GeneratedToken) -> Piece:
        piece = token_piece(token, len(echo[index // n].text), logprobs)
        finished[index] = token.finish_reason
        return piece

    def usage(completion_tokens: int) -> dict[str, int]:
        total = prompt_tokens + completion_tokens
        return Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total
        ).model_dump()

    if not body.stream:
        pieces: list[list[Piece]] = [[echo[i // n]] for i in range(count)]
        generated = 0
        async for event in events:
            if isinstance(event, SequenceTokens):
                for index, token in event.tokens:
                    pieces[index].append(add(index, token))
                generated += len(event.tokens)
        choices = [
            CompletionChoice(
                index=i,
                text="".join(p.text for p in pieces[i]),
                logprobs=joined(pieces[i]),
                finish_reason=finish(finished[i]) or "length",
            )
            for i in range(count)
        ]
        answer = {**head, "choices": [c.model_dump() for c in choices], "usage": usage(generated)}
        return Response(orjson.dumps(answer), media_type=JSON)

    options = body.stream_options
    include_usage = bool(options and options.include_usage)
    continuous = bool(options and options.continuous_usage_stats)

    def chunk(index: int, piece: Piece, reason: str | None, generated: int) -> bytes:
        choice = CompletionChoice(
            index=index, text=piece.text, logprobs=piece.logprobs, finish_reason=finish(reason)
        )
        extra = {"usage": usage(generated) if continuous else None} if include_usage else {}
        return sse({**head, "choices": [choice.model_dump()], **extra})

    async def stream() -> AsyncIterator[bytes]:
        generated = 0
        try:
            for i in range(count) if body.echo else ():
                yield chunk(i, echo[i // n], None, generated)
            async for event in events:
                if isinstance(event, SequenceTokens):
                    for index, token in event.tokens:
                        generated += 1
                        yield chunk(index, add(index, token), token.finish_reason, generated)
            for i in range(count):  # max_tokens 0: nothing was written, but every choice ends
                if finished[i] is None:
                    yield chunk(i, Piece(""), "length", generated)
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(generated)})
        except Cancelled:
            return  # the client went away: nobody to tell
        except ServiceError as exc:  # the status is already 200: the error travels as an event
            yield sse(openai_error_body(exc.status_code, exc.message, exc.param))
        finally:
            await events.aclose()
        yield sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
