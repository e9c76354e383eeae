"""Language models in the service: the decoder built at load, the limits a request must respect,
and generation in the model's `DecodeEngine` (prompts read together with other requests', then
continuous batching across requests), streamed back token by token with its metrics.

Routers (OpenAI completions, the Open Inference Protocol generate extension, next-word) translate
HTTP into a `GenerationJob` and read `stream_generation`'s events; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import InvalidInput
from service.protocol.text import GenerateParameters
from service.registry import Registry
from service.runtimes.language_model import LanguageModel
from service.scheduling.decode_engine import DecodeRequest, Prompts
from service.settings import Settings
from service.tasks.sampling import SamplingParams
from service.tasks.textgen import (
    Context,
    Continuation,
    Decoder,
    GeneratedToken,
    WordProbability,
)
from service.tasks.tokenizer import Token

if TYPE_CHECKING:
    from service.dataplane import DataPlane


def language_model(registry: Registry, name: str, version: str | None = None) -> LanguageModel:
    """The loaded model `name`, which must be a language model."""
    return registry.get_runtime(LanguageModel, name, version)


# a request's ASGI receive callable: what the engine's watcher waits on for a client gone away
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


# -- limits ----------------------------------------------------------------------------------------
def check_prompt(settings: Settings, decoder: Decoder, text: str, param: str) -> list[Token]:
    """The prompt's tokens, refusing a prompt over the character or token limit."""
    if len(text) > settings.max_prompt_chars:
        raise InvalidInput(
            f"{param} has {len(text)} characters; the limit is {settings.max_prompt_chars}",
            param=param,
        )
    tokens = decoder.tokenizer.tokenize(text)
    if len(tokens) > settings.max_prompt_tokens:
        raise InvalidInput(
            f"{param} has {len(tokens)} tokens; the limit is {settings.max_prompt_tokens}",
            param=param,
        )
    return tokens


def stop_strings(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    strings = [stop] if isinstance(stop, str) else stop
    if any(not s for s in strings):
        raise InvalidInput("stop strings must not be empty", param="stop")
    if any(len(s) > 200 for s in strings):
        raise InvalidInput("stop strings must be at most 200 characters", param="stop")
    return strings


def check_generation(
    settings: Settings, max_tokens: int, sequences: int, logprobs: int | None, stop: Sequence[str]
) -> None:
    if max_tokens > settings.max_new_tokens:
        raise InvalidInput(
            f"max_tokens must be at most {settings.max_new_tokens}, got {max_tokens}",
            param="max_tokens",
        )
    if sequences > settings.max_completion_choices:
        raise InvalidInput(
            f"n x prompts = {sequences} completions is over the limit of "
            f"{settings.max_completion_choices} per request",
            param="n",
        )
    if logprobs is not None and logprobs > settings.max_logprobs:
        raise InvalidInput(
            f"logprobs must be at most {settings.max_logprobs}, got {logprobs}", param="logprobs"
        )
    if len(stop) > settings.max_stop_sequences:
        raise InvalidInput(
            f"at most {settings.max_stop_sequences} stop strings, got {len(stop)}", param="stop"
        )


def sampling_params(
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float | None,
    seed: int | None,
    count: int,
) -> list[SamplingParams]:
    """One parameter set per sequence. Sequence 0 uses `seed` itself, sequence i > 0 a seed drawn
    from (seed, i); with no seed each sequence gets a fresh random one."""
    if seed is None:
        seeds = [secrets.randbits(63) for _ in range(count)]
    else:
        seeds = [seed] + [
            int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> 1)
            for i in range(1, count)
        ]
    try:
        return [
            SamplingParams(
                temperature=1.0 if temperature is None else temperature,
                top_k=0 if top_k is None or top_k < 0 else top_k,  # vLLM spells "off" as -1
                top_p=1.0 if top_p is None else top_p,
                repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
                seed=s,
            )
            for s in seeds
        ]
    except ValueError as exc:  # the schemas bound every field; this is the last line of defence
        raise InvalidInput(str(exc)) from None


# -- generation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationJob:
    """What to write: `n` continuations of each prompt, sequence index = prompt index * n + j."""

    prompts: Sequence[str]
    n: int
    max_tokens: int
    params: Sequence[SamplingParams]  # one per sequence
    stop: Sequence[str] = ()
    top_logprobs: int = 0  # alternatives reported with each token
    # score the prompts' own tokens too, with this many alternatives (OpenAI `echo` + `logprobs`)
    prompt_logprobs: int | None = None
    prompt_tokens: Sequence[list[Token]] | None = None  # the prompts', where checked already


def generation_job(
    settings: Settings, model: LanguageModel, text: str, parameters: GenerateParameters
) -> GenerationJob:
    p = parameters
    max_tokens = 20 if p.max_tokens is None else p.max_tokens
    stop = stop_strings(p.stop)
    tokens = check_prompt(settings, model.decoder, text, "text_input")
    check_generation(settings, max_tokens, 1, None, stop)
    params = sampling_params(p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.seed, 1)
    return GenerationJob([text], 1, max_tokens, params, stop, prompt_tokens=[tokens])


@dataclass(frozen=True)
class PromptsRead:
    """First event: every prompt after prefill (its tokens, and their log-probabilities if asked)."""

    contexts: list[Context]


@dataclass(frozen=True)
class SequenceTokens:
    """Tokens handed over together, in order: one step's for a stream, every one at the end for
    an answer sent whole (one event, not one per token: a completion's 64 tokens through an
    async generator one by one cost the event loop more than its HTTP response)."""

    tokens: list[tuple[int, GeneratedToken]]  # (the sequence, its token)


Event = PromptsRead | SequenceTokens


# -- next word -----------------------------------------------------------------------------------
PREFILL_BUCKET = 8  # prompts are padded to a multiple of this many tokens to share a call:
# every position is computed (its logits too), so a wider bucket costs compute


async def next_words(
    dataplane: DataPlane,
    model: LanguageModel,
    text: str,
    k: int,
    tokens: Sequence[Token] | None = None,
) -> list[WordProbability]:
    """The k most likely next words after `text`. Prompts of concurrent requests are read in
    one step-graph call (the model's dynamic batcher, policy as for its V2 graph): each is
    padded on the right to a multiple of PREFILL_BUCKET tokens, and requests whose padded
    lengths agree are stacked; a request alone (nothing queued or running, nothing else in
    flight) is not padded (a Transformer reads 16 tokens in 1.06 ms, 9 in 0.89). Without
    batching, or where the graph cannot read a prompt in one call, the prompt is read alone in
    the task pool. `tokens`: the text's, where the caller has them already."""
    decoder = model.decoder
    ids = (
        decoder.prompt_window(text)
        if tokens is None
        else decoder.window(decoder.prompt_ids(tokens))
    )
    batcher = model.prefill
    width = -(-len(ids) // PREFILL_BUCKET) * PREFILL_BUCKET
    if batcher is not None and batcher.idle():
        width = len(ids)
    if decoder.model.max_length is not None:
        width = min(width, decoder.model.max_length)
    feeds = decoder.padded_prefill(ids, width)
    if batcher is None or feeds is None:
        return await dataplane.run_task(model, lambda _: decoder.next_word_distribution(text, k))
    (logits,) = await batcher.submit(feeds, model.deadline())
    return decoder.top_words(logits[0, len(ids) - 1], k)


async def next_word_answer(
    registry: Registry,
    dataplane: DataPlane,
    settings: Settings,
    model_name: str,
    text: str,
    top_k: int,
) -> dict[str, Any]:
    """The answer of `POST /v1/models/{model_name}/next-word` (protocol.text.NextWordResponse's
    fields), for the route and for the fast path that answers it beside the framework."""
    model = language_model(registry, model_name)
    decoder = model.decoder
    if top_k > settings.max_next_words:
        raise InvalidInput(
            f"top_k must be at most {settings.max_next_words}, got {top_k}", param="top_k"
        )
    tokens = check_prompt(settings, decoder, text, "text")
    async with dataplane.track(model):
        words = await next_words(dataplane, model, text, top_k, tokens)
    unknown = [t.text for t in tokens if t.id == decoder.tokenizer.unk_id]
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "predictions": [
            {
                "word": w.word,
                "token_id": w.token_id,
                "probability": w.probability,
                "logprob": w.logprob,
            }
            for w in words
        ],
        "tokens": len(tokens),
        "unknown_words": list(dict.fromkeys(unknown)),
    }


async def cancel_when_disconnected(
    receive: Receive, request: DecodeRequest, every_s: float = 0.1
) -> None:
    """Take the request out of the engine once its client goes away (a plain answer notices it
    no other way): `receive` is the request's ASGI receive, its body already read, which waits
    for the server's `http.disconnect` message. Waiting costs the event loop nothing until then
    (polling every 0.1 s with Starlette's `is_disconnected` took 5% of the loop's time per
    completion); a server that answers with anything else is asked again every `every_s`."""
    while not request.left:
        message = await receive()
        if message.get("type") == "http.disconnect":
            request.cancel()
            return
        await asyncio.sleep(every_s)


async def stream_generation(
    dataplane: DataPlane,
    model: LanguageModel,
    job: GenerationJob,
    receive: Receive | None = None,
    each_step: bool = True,
) -> AsyncGenerator[Event, None]:
    """Write `job` in the model's decode engine, which reads its prompts (with other requests'
    prompts) and continues them (continuous batching with every other request), yielding the
    events as they happen; with
    `each_step` False (an answer sent whole), the tokens come all together at the end.

    Closing the iterator (a client that went away, a cancelled request) takes the sequences out
    of the engine before its next step; the generation's slot (`max_concurrent_generations`,
    the in-flight gauge) is freed when they are out. Errors raised before the first event reach
    the caller before anything was sent, so they can still become an HTTP status.
    """
    decoder = model.decoder
    metrics = dataplane.metrics
    labels = (model.name, str(model.version))
    started = time.perf_counter()

    def start(prompts: list[Context]) -> list[Continuation]:
        """The job's sequences, once the engine read its prompts: n of each."""
        contexts = [
            c for first in prompts for c in [first, *(first.copy() for _ in range(job.n - 1))]
        ]
        return [
            Continuation(decoder, c, job.max_tokens, p, job.stop, job.top_logprobs)
            for c, p in zip(contexts, job.params, strict=True)
        ]

    prompts = Prompts(
        job.prompts, job.prompt_logprobs, len(job.prompts) * job.n, start, job.prompt_tokens
    )

    async with dataplane.track(model):
        release = dataplane.start_generation(model)
        request: DecodeRequest | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            request = model.decode_engine().submit_prompts(prompts, started, release, each_step)
            if receive is not None:
                watcher = asyncio.create_task(cancel_when_disconnected(receive, request))
            contexts = await request.prompts_read()
            metrics.prompt_tokens.labels(*labels).inc(sum(len(c.tokens) for c in contexts))
            yield PromptsRead(contexts)
            while tokens := await request.next_tokens():
                yield SequenceTokens(tokens)
            metrics.generation_duration.labels(*labels).observe(time.perf_counter() - started)
        finally:
            if watcher is not None:
                watcher.cancel()
            if request is None:
                release()
            else:
                request.cancel()  # no-op once it left; its slot is freed when it has


async def first_event(events: AsyncGenerator[Event, None]) -> PromptsRead:
    """Wait for the prompts to be read: errors up to here can still be answered with a status."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    assert isinstance(first, PromptsRead), "the first event is always the prompts read"
    return first
