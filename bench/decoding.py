"""Language-model decoding in process, without the service: the ceiling the generation bench
measures the service against, and the reference the decode-engine tests compare it with.

The same `Decoder` (prefill, `feed_many`) and `Continuation` (sampler, text writer, stop strings,
token budget) as the service's decode engine, driven by a plain loop in the calling thread.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import onnxruntime as ort

from service.tasks.sampling import SamplingParams
from service.tasks.textgen import Context, Continuation, Decoder, GeneratedToken
from service.tasks.tokenizer import WordTokenizer


def decoder_of(model_dir: Path, version: int | None = None) -> Decoder:
    """The decoder of a language model's folder (its newest version by default), its step
    graph on onnxruntime's default session options."""
    config = json.loads((model_dir / "config.json").read_text())
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    folder = model_dir / str(version or versions[-1])
    session = ort.InferenceSession(
        str(folder / config["graphs"]["step"]), providers=["CPUExecutionProvider"]
    )
    tokenizer = WordTokenizer.load(folder / config["tokenizer"]["vocab"])
    return Decoder(session, config, tokenizer)


def continue_many(
    decoder: Decoder,
    contexts: Sequence[Context],
    max_tokens: int,
    params: Sequence[SamplingParams] | SamplingParams | None = None,
    stop: Sequence[str] = (),
    top_logprobs: int = 0,
) -> Generator[tuple[int, GeneratedToken], None, None]:
    """(sequence index, token) as each sequence gets its next token, one step for all at a
    time; the contexts are advanced in place. `top_logprobs` alternatives come with each."""
    if params is None or isinstance(params, SamplingParams):
        params = [params or SamplingParams()] * len(contexts)
    sequences = [
        Continuation(decoder, c, max_tokens, p, stop, top_logprobs)
        for c, p in zip(contexts, params, strict=True)
    ]
    while True:
        running = []
        for i, sequence in enumerate(sequences):
            if not sequence.done:
                yield i, sequence.next_token()
                if not sequence.done:
                    running.append(sequence)
        if not running:
            return
        decoder.feed_many([s.context for s in running], [s.chosen for s in running])


def generate(
    decoder: Decoder,
    prompt: str,
    max_tokens: int = 50,
    params: SamplingParams | None = None,
    stop: Sequence[str] = (),
) -> Iterator[GeneratedToken]:
    """Continue `prompt` token by token; stop after max_tokens or when a stop string appears (it
    is not included)."""
    for _, token in continue_many(decoder, [decoder.read(prompt)], max_tokens, params, stop):
        yield token


def generate_batch(
    decoder: Decoder,
    prompts: Sequence[str],
    max_tokens: int = 50,
    params: Sequence[SamplingParams] | SamplingParams | None = None,
    stop: Sequence[str] = (),
) -> list[list[GeneratedToken]]:
    """Several prompts at once, read together (`Decoder.read_many`, as the service's decode
    engine reads the prompts that arrive together): each step runs the sequences whose states
    fit together (all, for recurrent state or a cache graph with an attention mask; equal cache
    lengths for a key/value cache without) in one call."""
    results: list[list[GeneratedToken]] = [[] for _ in prompts]
    contexts = decoder.read_many(prompts)
    for i, token in continue_many(decoder, contexts, max_tokens, params, stop):
        results[i].append(token)
    return results
