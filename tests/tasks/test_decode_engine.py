"""The decode engine (continuous batching): requests that run together share step calls and
still write exactly what `Decoder.generate` writes alone for the same seeds, whatever their
prompt lengths, token budgets and start times; the prompts of requests that arrive together are
read in one call; cancelled requests leave at the next step, a failing step ends only its own
requests, and closing drains the engine.

Tiny real ONNX bigram models (tests/helpers/onnx_builders.py), and the shipped LSTM for real weights.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from helpers.onnx_builders import write_language_model

from bench.decoding import decoder_of, generate
from service.errors import Cancelled
from service.metrics import Metrics
from service.scheduling import decode_engine
from service.scheduling.decode_engine import DecodeEngine, DecodeRequest, Prompts
from service.tasks.sampling import SamplingParams
from service.tasks.textgen import Context, Continuation, Decoder, GeneratedToken

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
KINDS = ("recurrent", "cache", "short")  # hidden state; growing cache; a 4-position graph
PROMPTS = ("the", "a dog ran home .", "the cat sat on the mat , a", "")
BUDGETS = (12, 5, 9, 7)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine-models")
    return {
        "recurrent": write_language_model(root, "lm-test"),
        "cache": write_language_model(root, "kv-test", cache=True),
        "short": write_language_model(root, "short-test", cache=True, max_length=4),
    }


@pytest.fixture
def decoders(model_dirs: dict[str, Path]) -> dict[str, Decoder]:
    """A fresh decoder of each kind per test (StepLog wraps one in place)."""
    return {kind: decoder_of(path) for kind, path in model_dirs.items()}


def params(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.2, top_k=8, repetition_penalty=1.1, seed=seed)


class StepLog:
    """Wraps `decoder.feed_many` to record the batch of each step."""

    def __init__(self, decoder: Decoder) -> None:
        self.batches: list[int] = []
        feed_many = decoder.feed_many

        def recording(contexts: Sequence[Context], ids: Sequence[int]) -> None:
            self.batches.append(len(contexts))
            feed_many(contexts, ids)

        decoder.feed_many = recording  # type: ignore[method-assign]


def sequences(
    decoder: Decoder, prompt: str, budget: int, seed: int, n: int = 1, stop: bool = True
) -> list[Continuation]:
    first = decoder.read(prompt)
    contexts = [first] + [first.copy() for _ in range(n - 1)]
    stops = (" home",) if stop else ()
    return [
        Continuation(decoder, c, budget, params(seed + i), stops) for i, c in enumerate(contexts)
    ]


async def collect(request: DecodeRequest) -> dict[int, list[GeneratedToken]]:
    out: dict[int, list[GeneratedToken]] = {}
    while tokens := await request.next_tokens():
        for index, token in tokens:
            out.setdefault(index, []).append(token)
    return out


def alone(decoder: Decoder, prompt: str, budget: int, seed: int) -> list[GeneratedToken]:
    return list(generate(decoder, prompt, budget, params(seed), stop=(" home",)))


def same(got: list[GeneratedToken], want: list[GeneratedToken]) -> None:
    assert [t.token_id for t in got] == [t.token_id for t in want]
    assert "".join(t.text for t in got) == "".join(t.text for t in want)
    assert [t.finish_reason for t in got] == [t.finish_reason for t in want]
    np.testing.assert_allclose([t.logprob for t in got], [t.logprob for t in want], atol=1e-5)


def closing(engine: DecodeEngine, main: Callable[[], Awaitable[T]]) -> T:
    """Run `main` on a fresh event loop, then close the engine whatever happened."""

    async def run() -> T:
        try:
            return await main()
        finally:
            await engine.close()

    return asyncio.run(run())


async def run_together(engine: DecodeEngine, jobs: Sequence[tuple[str, int, int]]) -> list:
    """Every job submitted before the engine's next step (so they share it), then read."""
    prepared = [sequences(engine.decoder, p, b, s) for p, b, s in jobs]
    with engine._lock:  # the scheduler cannot admit any until all are queued
        requests = [engine.submit(s, time.perf_counter()) for s in prepared]
    return list(await asyncio.gather(*(collect(r) for r in requests)))


@pytest.mark.parametrize("kind", KINDS)
def test_one_request_writes_what_generate_writes(decoders: dict[str, Decoder], kind: str) -> None:
    decoder = decoders[kind]
    engine = DecodeEngine(decoder, max_batch=8)

    async def main() -> dict[int, list[GeneratedToken]]:
        return await collect(engine.submit(sequences(decoder, PROMPTS[1], 20, 3), 0.0))

    got = closing(engine, main)
    same(got[0], alone(decoder, PROMPTS[1], 20, 3))


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_requests_share_steps_and_write_what_each_writes_alone(
    decoders: dict[str, Decoder], kind: str
) -> None:
    decoder = decoders[kind]
    log = StepLog(decoder)
    engine = DecodeEngine(decoder, max_batch=8)
    jobs = [(p, b, 10 + i) for i, (p, b) in enumerate(zip(PROMPTS, BUDGETS, strict=True))]

    async def main() -> list:
        return await run_together(engine, jobs)

    results = closing(engine, main)
    batches = list(log.batches)  # the engine's steps (`alone` below feeds the same decoder)
    for (prompt, budget, seed), got in zip(jobs, results, strict=True):
        same(got[0], alone(decoder, prompt, budget, seed))
    written = sum(len(r[0]) for r in results)
    assert engine.tokens == written
    assert batches[0] == len(jobs)  # the first step advances every request at once
    assert engine.steps == len(batches) < written - len(jobs)


def test_the_metrics_count_every_token_once(decoders: dict[str, Decoder]) -> None:
    """Counted a step at a time: every token, a first-token time per request, a gap per token
    after a sequence's first (the gaps of a step's sequences observed together)."""
    decoder = decoders["cache"]
    metrics = Metrics()
    engine = DecodeEngine(decoder, max_batch=8, metrics=metrics, labels=("m", "1"))
    jobs = [(p, b, 20 + i) for i, (p, b) in enumerate(zip(PROMPTS, BUDGETS, strict=True))]

    async def main() -> list:
        return await run_together(engine, jobs)

    results = closing(engine, main)
    written = sum(len(r[0]) for r in results)
    sample = metrics.registry.get_sample_value
    labels = {"model": "m", "version": "1"}
    assert sample("seedserve_generated_tokens_total", labels) == written
    assert sample("seedserve_time_to_first_token_seconds_count", labels) == len(jobs)
    gaps = sample("seedserve_inter_token_latency_seconds_count", labels)
    assert gaps == written - len(jobs)
    assert 0 < (sample("seedserve_inter_token_latency_seconds_sum", labels) or 0) < 60 * gaps
    assert sample("seedserve_inter_token_latency_seconds_bucket", {**labels, "le": "+Inf"}) == gaps


def test_a_request_read_whole_gets_every_token_in_one_hand_over(
    decoders: dict[str, Decoder],
) -> None:
    """each_step=False (an answer that is not streamed): the same tokens, handed over once at
    the end instead of waking the request's loop at every step, and never held back for its
    reader; a streamed request beside it gets its tokens step by step (with max_unread 1, one
    token per read)."""
    decoder = decoders["cache"]
    engine = DecodeEngine(decoder, max_batch=8, max_unread=1)

    async def main() -> tuple[list, list]:
        hand_overs: tuple[list, list] = ([], [])
        whole = engine.submit(sequences(decoder, PROMPTS[2], 9, 4, n=2), 0.0, each_step=False)
        streamed = engine.submit(sequences(decoder, PROMPTS[1], 12, 7), 0.0)
        for request, seen in zip((streamed, whole), hand_overs[::-1], strict=True):
            while tokens := await request.next_tokens():
                seen.append(tokens)
        return hand_overs

    whole, streamed = closing(engine, main)
    assert len(whole) == 1 and len(streamed) == len(alone(decoder, PROMPTS[1], 12, 7))
    for i in range(2):
        same([t for index, t in whole[0] if index == i], alone(decoder, PROMPTS[2], 9, 4 + i))
    same([t for tokens in streamed for _, t in tokens], alone(decoder, PROMPTS[1], 12, 7))


def test_a_request_that_joins_later_writes_the_same(decoders: dict[str, Decoder]) -> None:
    decoder = decoders["cache"]
    engine = DecodeEngine(decoder, max_batch=8, max_unread=2)  # the first waits for its reader

    async def main() -> tuple[dict, dict]:
        first = engine.submit(sequences(decoder, PROMPTS[2], 40, 1), 0.0)
        early = await first.next_tokens()  # the first request is running already
        second = engine.submit(sequences(decoder, PROMPTS[0], 6, 2, n=3), 0.0)
        rest, other = await asyncio.gather(collect(first), collect(second))
        for index, token in reversed(early):  # early holds one or two steps' tokens
            rest.setdefault(index, []).insert(0, token)
        return rest, other

    first, second = closing(engine, main)
    same(first[0], alone(decoder, PROMPTS[2], 40, 1))
    for i in range(3):  # n = 3: one prefill, three continuations with their own seeds
        same(second[i], alone(decoder, PROMPTS[0], 6, 2 + i))


def test_max_batch_bounds_every_step(decoders: dict[str, Decoder]) -> None:
    decoder = decoders["recurrent"]
    log = StepLog(decoder)
    engine = DecodeEngine(decoder, max_batch=2)
    jobs = [("the", 8, 20 + i) for i in range(5)]

    async def main() -> list:
        return await run_together(engine, jobs)

    results = closing(engine, main)
    assert max(log.batches) == 2  # 5 requests, 2 at a time
    for (prompt, budget, seed), got in zip(jobs, results, strict=True):
        same(got[0], alone(decoder, prompt, budget, seed))


def test_cancelled_requests_leave_at_the_next_step(decoders: dict[str, Decoder]) -> None:
    decoder = decoders["recurrent"]
    engine = DecodeEngine(decoder, max_batch=1)
    left: list[str] = []

    async def main() -> None:
        running = engine.submit(
            sequences(decoder, "the", 10**9, 1, stop=False), 0.0, lambda: left.append("running")
        )
        waiting = engine.submit(
            sequences(decoder, "a", 10**9, 2, stop=False), 0.0, lambda: left.append("waiting")
        )
        assert await running.next_tokens()
        waiting.cancel()  # it never got a place: it leaves without a token
        with pytest.raises(Cancelled):
            await waiting.next_tokens()
        running.cancel()
        with pytest.raises(Cancelled):
            while await running.next_tokens():
                pass
        assert left == ["waiting", "running"] and not engine._waiting
        tokens = engine.tokens
        await asyncio.sleep(0.05)
        assert engine.tokens == tokens  # nothing is written for anybody any more
        # the engine serves the next request
        after = await collect(engine.submit(sequences(decoder, "the", 4, 3), 0.0))
        same(after[0], alone(decoder, "the", 4, 3))

    closing(engine, main)


def breakable(healthy: Decoder, model_dir: Path) -> tuple[Decoder, dict[str, bool]]:
    """A decoder of the same graph whose every call fails while the switch's "on" is set."""
    broken = {"on": False}

    def run(feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> Sequence[np.ndarray]:
        if broken["on"]:
            raise RuntimeError("the step graph failed")
        return healthy.model.run_graph(feeds, names)

    config = json.loads((model_dir / "config.json").read_text())
    return Decoder(run, config, healthy.tokenizer), broken


def test_a_failing_step_ends_only_its_requests(
    decoders: dict[str, Decoder], model_dirs: dict[str, Path]
) -> None:
    healthy = decoders["recurrent"]
    decoder, broken = breakable(healthy, model_dirs["recurrent"])
    engine = DecodeEngine(decoder, max_batch=4)
    ended: list[int] = []

    async def main() -> None:
        doomed = engine.submit(
            sequences(decoder, "the", 10**9, 1, stop=False), 0.0, lambda: ended.append(1)
        )
        assert await doomed.next_tokens()
        broken["on"] = True
        with pytest.raises(RuntimeError, match="step graph failed"):
            while await doomed.next_tokens():
                pass
        assert ended == [1]
        broken["on"] = False
        fine = await collect(engine.submit(sequences(decoder, "a", 6, 2), 0.0))
        same(fine[0], alone(healthy, "a", 6, 2))

    closing(engine, main)


def test_close_lets_running_requests_finish_and_stops_the_thread(
    decoders: dict[str, Decoder],
) -> None:
    decoder = decoders["cache"]
    engine = DecodeEngine(decoder, max_batch=4)

    async def main() -> None:
        request = engine.submit(sequences(decoder, "the", 30, 5), 0.0)
        reading = asyncio.create_task(collect(request))
        await engine.close()
        assert engine._thread is None
        same((await reading)[0], alone(decoder, "the", 30, 5))
        # a request that picked this version just before a reload is still served
        late = await collect(engine.submit(sequences(decoder, "a", 3, 6), 0.0))
        same(late[0], alone(decoder, "a", 3, 6))
        await engine.close()

    closing(engine, main)


def test_nothing_to_write_ends_at_once(decoders: dict[str, Decoder]) -> None:
    engine = DecodeEngine(decoders["recurrent"], max_batch=4)
    left: list[bool] = []

    async def main() -> dict:
        request = engine.submit(
            sequences(decoders["recurrent"], "the", 0, 1), 0.0, lambda: left.append(True)
        )
        return await collect(request)

    assert closing(engine, main) == {} and left == [True] and engine._thread is None


async def settled(request: DecodeRequest, count: int) -> None:
    """Wait until the engine has handed `request` `count` tokens, then a little longer."""
    async with asyncio.timeout(10):
        while request.delivered < count:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


def test_a_stream_ahead_of_its_reader_waits_for_it(
    decoders: dict[str, Decoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed request whose reader does not read gets `max_unread` tokens and then waits
    (its client is slow: memory and the event loop stay bounded); a request beside it goes on
    unhindered; reading wakes the engine (no timed polling: the fallback wait is an hour here),
    and the held request then writes exactly what it writes alone."""
    monkeypatch.setattr(decode_engine, "HELD_BACK_WAIT_S", 3600.0)
    decoder = decoders["cache"]
    engine = DecodeEngine(decoder, max_batch=8, max_unread=5)

    async def main() -> tuple[dict, dict, int]:
        slow = engine.submit(sequences(decoder, PROMPTS[2], 40, 1, stop=False), 0.0)
        other = await collect(engine.submit(sequences(decoder, PROMPTS[1], 30, 2), 0.0))
        await settled(slow, 5)
        held = slow.delivered
        async with asyncio.timeout(10):
            return await collect(slow), other, held

    slow, other, held = closing(engine, main)
    assert held == 5
    same(other[0], alone(decoder, PROMPTS[1], 30, 2))
    want = list(generate(decoder, PROMPTS[2], 40, params(1)))
    same(slow[0], want)


def test_a_held_back_stream_that_is_cancelled_leaves(
    decoders: dict[str, Decoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode_engine, "HELD_BACK_WAIT_S", 3600.0)
    decoder = decoders["recurrent"]
    engine = DecodeEngine(decoder, max_batch=8, max_unread=3)
    left: list[bool] = []

    async def main() -> list:
        slow = engine.submit(
            sequences(decoder, "the", 10**9, 1, stop=False), 0.0, lambda: left.append(True)
        )
        await settled(slow, 3)
        assert slow.delivered == 3 and slow.held_back  # the engine waits for this reader
        slow.cancel()
        got: list = []
        async with asyncio.timeout(10):
            with pytest.raises(Cancelled):
                while tokens := await slow.next_tokens():
                    got += tokens
        return got

    assert len(closing(engine, main)) == 3 and left == [True]
    assert engine._thread is None or not engine._waiting


def test_shipped_lstm_batched_greedy_equals_alone() -> None:
    decoder = decoder_of(ROOT / "models" / "lstm-austen")
    engine = DecodeEngine(decoder, max_batch=8)
    prompts = ["It is a truth universally acknowledged, that", "Mr. Darcy", "She"]
    greedy = SamplingParams(temperature=0)

    async def main() -> list:
        prepared = [[Continuation(decoder, decoder.read(p), 24, greedy)] for p in prompts]
        with engine._lock:
            requests = [engine.submit(s, 0.0) for s in prepared]
        return list(await asyncio.gather(*(collect(r) for r in requests)))

    for prompt, got in zip(prompts, closing(engine, main), strict=True):
        want = list(generate(decoder, prompt, 24, greedy))
        assert [t.token_id for t in got[0]] == [t.token_id for t in want]
        np.testing.assert_allclose(
            [t.logprob for t in got[0]], [t.logprob for t in want], atol=1e-4
        )


def prompts(decoder: Decoder, prompt: str, budget: int, seed: int, n: int = 1) -> Prompts:
    """`sequences`, with the prompt read by the engine."""

    def start(contexts: list[Context]) -> list[Continuation]:
        (first,) = contexts
        each = [first] + [first.copy() for _ in range(n - 1)]
        return [
            Continuation(decoder, c, budget, params(seed + i), (" home",))
            for i, c in enumerate(each)
        ]

    return Prompts([prompt], None, n, start)


class ReadLog:
    """Wraps `decoder.read_many` to record the prompts of each call."""

    def __init__(self, decoder: Decoder) -> None:
        self.reads: list[int] = []
        read_many = decoder.read_many

        def recording(texts: Sequence[str], *rest: Any) -> list:
            self.reads.append(len(texts))
            return read_many(texts, *rest)

        decoder.read_many = recording  # type: ignore[method-assign]


async def submit_together(
    engine: DecodeEngine, jobs: Sequence[tuple[str, int, int]], n: int = 1
) -> list:
    """Every job's prompts submitted before the engine's next iteration, then read."""
    with engine._lock:
        requests = [
            engine.submit_prompts(prompts(engine.decoder, p, b, s, n), 0.0) for p, b, s in jobs
        ]
    read = [await r.prompts_read() for r in requests]
    assert [c.text for contexts in read for c in contexts] == [p for p, _, _ in jobs]
    return list(await asyncio.gather(*(collect(r) for r in requests)))


@pytest.mark.parametrize("kind", KINDS)
def test_prompts_that_arrive_together_are_read_in_one_call(
    decoders: dict[str, Decoder], kind: str
) -> None:
    decoder = decoders[kind]
    log = ReadLog(decoder)
    engine = DecodeEngine(decoder, max_batch=16)
    jobs = [(p, b, 30 + i) for i, (p, b) in enumerate(zip(PROMPTS * 2, BUDGETS * 2, strict=True))]

    results = closing(engine, lambda: submit_together(engine, jobs, n=2))
    assert log.reads == [len(jobs)] and engine.reads == 1
    for (prompt, budget, seed), got in zip(jobs, results, strict=True):
        for i in range(2):
            same(got[i], alone(decoder, prompt, budget, seed + i))


def test_prompt_reads_respect_the_batch_and_the_token_budget(
    decoders: dict[str, Decoder],
) -> None:
    """Prompts are read only for requests the batch has room for (the others are read when
    sequences leave), and at most max_prefill_tokens tokens at once (a longer prompt alone)."""
    decoder = decoders["cache"]
    log, steps = ReadLog(decoder), StepLog(decoder)
    engine = DecodeEngine(decoder, max_batch=3, max_prefill_tokens=6)
    # windows (with <s>): 2, 6, 10, 2, 2 tokens
    jobs = [
        (p, 6, 40 + i) for i, p in enumerate(["the", "a dog ran home .", PROMPTS[2], "a", "the"])
    ]

    results = closing(engine, lambda: submit_together(engine, jobs))
    assert max(steps.batches) <= 3
    assert log.reads[:3] == [1, 1, 1]  # 2 + 6 > 6; 6 + 10 > 6; the third alone (10 > 6)
    assert sum(log.reads) == len(jobs) and engine.reads == len(log.reads)
    for (prompt, budget, seed), got in zip(jobs, results, strict=True):
        same(got[0], alone(decoder, prompt, budget, seed))


def test_a_request_cancelled_before_its_prompt_is_read_leaves(
    decoders: dict[str, Decoder],
) -> None:
    decoder = decoders["recurrent"]
    log = ReadLog(decoder)
    engine = DecodeEngine(decoder, max_batch=1)
    left: list[str] = []

    async def main() -> None:
        endless = Prompts(
            ["the"], None, 1, lambda c: [Continuation(decoder, c[0], 10**9, params(1))]
        )
        running = engine.submit_prompts(endless, 0.0, lambda: left.append("running"))
        try:  # a failed check must not leave it running forever (close waits for it)
            assert await running.next_tokens()
            waiting = engine.submit_prompts(
                prompts(decoder, "a", 5, 2), 0.0, lambda: left.append("waiting")
            )
            await asyncio.sleep(0.02)
            assert waiting.contexts is None  # no room: its prompt is not read
            waiting.cancel()
            with pytest.raises(Cancelled):
                await waiting.prompts_read()
        finally:
            running.cancel()
        with pytest.raises(Cancelled):
            while await running.next_tokens():
                pass
        assert left == ["waiting", "running"] and log.reads == [1]
        after = engine.submit_prompts(prompts(decoder, "the", 4, 3), 0.0)
        same((await collect(after))[0], alone(decoder, "the", 4, 3))

    closing(engine, main)


def test_a_failing_read_ends_only_its_requests(
    decoders: dict[str, Decoder], model_dirs: dict[str, Path]
) -> None:
    healthy = decoders["cache"]
    decoder, broken = breakable(healthy, model_dirs["cache"])
    engine = DecodeEngine(decoder, max_batch=4)
    ended: list[int] = []

    async def main() -> None:
        broken["on"] = True
        doomed = engine.submit_prompts(prompts(decoder, "the", 5, 1), 0.0, lambda: ended.append(1))
        with pytest.raises(RuntimeError, match="step graph failed"):
            await doomed.prompts_read()
        assert ended == [1]
        broken["on"] = False
        fine = engine.submit_prompts(prompts(decoder, "a", 6, 2), 0.0)
        same((await collect(fine))[0], alone(healthy, "a", 6, 2))

    closing(engine, main)
