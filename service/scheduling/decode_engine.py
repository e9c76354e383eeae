"""Continuous batching of language-model decode steps across concurrent requests.

One `DecodeEngine` per loaded language-model version owns every sequence being written by any
request, in ONE scheduler thread. Each iteration it

    1. admits waiting sequences (up to `max_batch` running at once; the others wait their turn)
       and drops the sequences of requests that were cancelled (their client went away),
    1b. reads the prompts of the requests that arrived since the last iteration, as many as
       there is room for (and up to `max_prefill_tokens`), in one step-graph call
       (`Decoder.read_many`), and admits their sequences,
    2. picks the next token of every running sequence (its own `Continuation`: sampler, text
       writer, stop strings, token budget — the same code as `Decoder.continue_many`),
    3. hands each request its new tokens (one `call_soon_threadsafe` per event loop; a request
       answered whole gets them all at its end), and
    4. advances every sequence that continues with ONE `Decoder.feed_many` call.

A streamed request whose reader has `max_unread` tokens still to read gets no token in an
iteration (it is held back: a slow client costs neither unbounded memory nor, with every token
sent at once later, the event loop's other requests); reading wakes the engine.

Sequences join and leave between iterations, whatever their length or start time: a request
never holds a thread while it waits for tokens, it awaits them on its event loop. A request
submits its prompts (`submit_prompts`: read in this thread, with the other newcomers', so no
other thread competes with the steps for the cores and the GIL) or sequences whose prompts it
read itself (`submit`). The same seed gives the same tokens alone or
batched, since each sequence samples from its own generator (the logits of a batched call equal
the lone call's up to float rounding).

Each step of traced requests is a `decode.step` span (service/tracing.py), each read of prompts
a `decode.prefill` span: a child of the span of the oldest request in it, linked to the span of
every request in it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry.trace import Span

from service import tracing
from service.errors import Cancelled
from service.metrics import Metrics, observe_many
from service.tasks.textgen import Context, Continuation, Decoder, GeneratedToken
from service.tasks.tokenizer import Token

Tokens = list[tuple[int, GeneratedToken]]  # (sequence index in its request, token)

HELD_BACK_WAIT_S = 0.1  # longest wait for a reader's wake-up (which should come first)


@dataclass(frozen=True)
class Prompts:
    """What a request submitted with `submit_prompts` asks the engine to read: its prompts
    (scored with `prompt_logprobs` alternatives when not None, as `Decoder.read`), the number
    of sequences it will write (for the room it needs in the batch), and `start`, which makes
    those sequences from the contexts read (called in the engine's thread). `tokens`: the
    texts' tokens, where the request has them already (else they are tokenized at submit)."""

    texts: Sequence[str]
    prompt_logprobs: int | None
    sequences: int
    start: Callable[[list[Context]], Sequence[Continuation]]
    tokens: Sequence[list[Token]] | None = None


class DecodeRequest:
    """One request's sequences inside the engine; its event loop reads their tokens.

    `cancel()` may be called from any thread: the request leaves at the engine's next iteration.
    When it has left (finished, cancelled or failed), `on_leave` runs on the request's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sequences: int,
        started: float,
        on_leave: Callable[[], None],
        each_step: bool = True,
    ) -> None:
        self.loop = loop
        # False: the tokens are handed over once, when the request ends (a plain answer reads
        # nothing before then), instead of waking its loop at every step
        self.each_step = each_step
        self.held: Tokens = []  # tokens not handed over yet (the scheduler thread's)
        self.remaining = sequences  # sequences not finished or dropped (the scheduler's count)
        self.started = started  # when the request arrived: time to first token counts from it
        self.on_leave = on_leave
        self.trace: Span | None = tracing.current()  # the span the request was submitted in
        self.cancelled = False
        self.error: BaseException | None = None
        self.first_token_at: float | None = None
        self.previous: dict[int, float] = {}  # sequence index -> when its last token came
        self._inbox: Tokens = []  # handed over, not read yet (the loop's)
        self._arrived = asyncio.Event()
        self._outcome: BaseException | None = None  # raised by next_tokens once the inbox is read
        self.left = False  # set on the loop when the end of the request was handed over
        # backpressure of a streamed request: tokens handed over (the scheduler's count) and
        # read (the loop's); the engine holds its sequences back while too many are unread
        self.delivered = 0
        self.read = 0
        self.held_back = False  # the engine waits for this reader (set by the scheduler)
        self.wake: Callable[[], None] = lambda: None  # the engine's, set at submit
        self.contexts: list[Context] | None = None  # the prompts read (`submit_prompts`)

    def cancel(self) -> None:
        self.cancelled = True
        self.wake()  # an engine that waits for readers must see it go

    def behind(self, max_unread: int) -> bool:
        """Whether its reader has `max_unread` or more tokens still to read."""
        return self.each_step and self.delivered - self.read >= max_unread

    async def prompts_read(self) -> list[Context]:
        """The contexts of the prompts once the engine read them (`submit_prompts`). Raises the
        engine's error, or Cancelled after `cancel()`, if the request left before that."""
        while self.contexts is None and not self.left:
            self._arrived.clear()
            await self._arrived.wait()
        if self.contexts is None:
            raise self._outcome or Cancelled("the request left before its prompts were read")
        return self.contexts

    async def next_tokens(self) -> Tokens:
        """Every token handed over since the last call (the tokens of one or more iterations);
        [] once every sequence is finished. Raises the engine's error, or Cancelled after
        `cancel()`, once the tokens before it were read.

        It always gives the event loop a turn: a reader whose tokens are already waiting would
        otherwise write a fast stream without ever letting the loop's other requests (nor the
        news that this client went away) in."""
        if self._inbox:
            await asyncio.sleep(0)
        while not self._inbox and not self.left:
            self._arrived.clear()
            await self._arrived.wait()
        if self._inbox:
            tokens, self._inbox = self._inbox, []
            self.read += len(tokens)
            if self.held_back:
                self.held_back = False
                self.wake()
            return tokens
        if self._outcome is not None:
            raise self._outcome
        return []

    def _hand_over(self, tokens: Tokens, end: bool, contexts: list[Context] | None = None) -> None:
        """On the request's loop: add the tokens to the inbox (and the prompts read, when they
        come), and the outcome if it left."""
        if contexts is not None:
            self.contexts = contexts
        self._inbox += tokens
        if end and not self.left:
            self.left = True
            if self.error is not None:
                self._outcome = self.error
            elif self.cancelled:
                self._outcome = Cancelled("the client went away; generation stopped")
            self.on_leave()
        self._arrived.set()


@dataclass
class _Running:
    request: DecodeRequest
    index: int
    sequence: Continuation


@dataclass(frozen=True)
class _Reading:
    """A request waiting for its prompts to be read: their tokens (tokenized at submit, not in
    the engine's thread) and how many the read costs (the windows' lengths)."""

    request: DecodeRequest
    prompts: Prompts
    tokens: list[list[Token]]
    size: int


class _StepTiming:
    """One step's tokens: how many, each request's time to its first token, and the gaps
    since the sequences' previous tokens, counted by when those came (the sequences of a step
    mostly share it: one histogram update for all of them)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.tokens = 0
        self.firsts: list[float] = []
        self.gaps: dict[float, int] = {}  # the previous token's time -> sequences

    def token(self, item: _Running) -> None:
        request, now = item.request, self.now
        self.tokens += 1
        if request.first_token_at is None:
            request.first_token_at = now
            self.firsts.append(now - request.started)
        else:
            previous = request.previous.get(item.index)
            if previous is not None:
                self.gaps[previous] = self.gaps.get(previous, 0) + 1
        request.previous[item.index] = now


@dataclass
class _Parcel:
    request: DecodeRequest
    tokens: Tokens
    end: bool
    contexts: list[Context] | None = None  # the request's prompts, when just read


class _EngineMetrics:
    """The engine's metric children, bound to its model's labels once."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str]) -> None:
        self.time_to_first_token = metrics.time_to_first_token.labels(*labels)
        self.inter_token_latency = metrics.inter_token_latency.labels(*labels)
        self.generated_tokens = metrics.generated_tokens.labels(*labels)
        self.decode_batch_size = metrics.decode_batch_size.labels(*labels)


class DecodeEngine:
    """The decode scheduler of one language-model version (see the module docstring)."""

    def __init__(
        self,
        decoder: Decoder,
        max_batch: int,
        metrics: Metrics | None = None,
        labels: tuple[str, str] = ("", ""),
        max_unread: int = 64,
        max_prefill_tokens: int = 1024,
    ) -> None:
        assert max_batch >= 1, "max_batch must be at least 1"
        assert max_unread >= 1, "max_unread must be at least 1"
        assert max_prefill_tokens >= 1, "max_prefill_tokens must be at least 1"
        self.decoder = decoder
        self.max_batch = max_batch
        self.max_unread = max_unread  # tokens a streamed request may be ahead of its reader
        self.max_prefill_tokens = max_prefill_tokens  # prompt tokens read in one iteration
        self.steps = 0  # feed_many calls made
        self.reads = 0  # read_many calls made
        self.tokens = 0  # tokens written
        self._labels = labels
        self._metrics = None if metrics is None else _EngineMetrics(metrics, labels)
        self._lock = threading.Condition()
        self._waiting: deque[_Running] = deque()
        self._reading: deque[_Reading] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False  # once set, the thread exits whenever it has nothing to do

    # -- the requests' side (their event loop) ---------------------------------------------------
    def submit(
        self,
        sequences: Sequence[Continuation],
        started: float,
        on_leave: Callable[[], None] = lambda: None,
        each_step: bool = True,
    ) -> DecodeRequest:
        """Queue a request's sequences (prefill done) and return the handle to read them with.
        Call from the request's event loop. `each_step` False: its tokens come all at once, at
        the end (for an answer that is not streamed)."""
        loop = asyncio.get_running_loop()
        live = [(i, s) for i, s in enumerate(sequences) if not s.done]
        request = DecodeRequest(loop, len(live), started, on_leave, each_step)
        request.wake = self._wake
        if not live:  # max_tokens 0: nothing to write
            request._hand_over([], end=True)
            return request
        with self._lock:
            self._waiting.extend(_Running(request, i, s) for i, s in live)
            self._start()
        return request

    def submit_prompts(
        self,
        prompts: Prompts,
        started: float,
        on_leave: Callable[[], None] = lambda: None,
        each_step: bool = True,
    ) -> DecodeRequest:
        """Queue a request whose prompts the engine reads (with other requests' prompts, see
        the module docstring) before writing its sequences; `await request.prompts_read()`
        gives the contexts read. Otherwise as `submit`."""
        loop = asyncio.get_running_loop()
        request = DecodeRequest(loop, 0, started, on_leave, each_step)
        request.wake = self._wake
        decoder = self.decoder
        tokens = (
            list(prompts.tokens)
            if prompts.tokens is not None
            else [decoder.tokenizer.tokenize(text) for text in prompts.texts]
        )
        size = sum(len(decoder.window(decoder.prompt_ids(t))) for t in tokens)
        with self._lock:
            self._reading.append(_Reading(request, prompts, tokens, size))
            self._start()
        return request

    def _start(self) -> None:
        """With the lock held: start the scheduler thread if it is not running, and wake it."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"decode-{self._labels[0]}", daemon=True
            )
            self._thread.start()
        self._lock.notify()

    async def close(self) -> None:
        """Let every running and waiting sequence finish, then stop the scheduler thread. A
        request that still arrives afterwards (it picked this version just before a swap)
        starts a thread that serves it and stops again."""
        with self._lock:
            self._closing = True
            thread = self._thread
            self._lock.notify()
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    # -- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        running: list[_Running] = []
        while True:
            with self._lock:
                while True:
                    while not running and not self._waiting and not self._reading:
                        if self._closing:
                            self._thread = None
                            return
                        self._lock.wait()
                    reading, gone = self._take_reading(len(running))
                    dropped = [r for r in self._waiting if r.request.cancelled]
                    if dropped:
                        self._waiting = deque(r for r in self._waiting if not r.request.cancelled)
                    while self._waiting and len(running) < self.max_batch:
                        running.append(self._waiting.popleft())
                    dropped += [r for r in running if r.request.cancelled]
                    running = [r for r in running if not r.request.cancelled]
                    if reading or gone or dropped or not self._all_held_back(running):
                        break
                    # every running stream is ahead of its reader: wait until one reads (its
                    # `wake`); the timeout only guards against a wake-up that never comes
                    self._lock.wait(HELD_BACK_WAIT_S)
            if gone:
                self._deliver([_Parcel(request, [], True) for request in gone])
            if reading:
                running += self._read(reading, self.max_batch - len(running))
            running = self._iterate(running, dropped)

    def _take_reading(self, running: int) -> tuple[list[_Reading], list[DecodeRequest]]:
        """With the lock held: the requests whose prompts to read now (in order of arrival,
        while the batch has room for their sequences and the prompt tokens stay within
        `max_prefill_tokens`; at least one when the batch has room), and the cancelled ones
        that never got read (to be ended)."""
        gone = [r.request for r in self._reading if r.request.cancelled]
        if gone:
            self._reading = deque(r for r in self._reading if not r.request.cancelled)
        room = self.max_batch - running - len(self._waiting)
        taken: list[_Reading] = []
        tokens = 0
        while self._reading and room > 0:
            first = self._reading[0]
            if taken and tokens + first.size > self.max_prefill_tokens:
                break
            taken.append(self._reading.popleft())
            tokens += first.size
            room -= first.prompts.sequences
        return taken, gone

    def _read(self, reading: list[_Reading], room: int) -> list[_Running]:
        """Read the prompts of `reading` in one `read_many`, hand each request its contexts and
        return their sequences to run (up to `room`; any others wait their turn). A failing
        read ends every request in it with the error."""
        texts = [text for r in reading for text in r.prompts.texts]
        scores = [r.prompts.prompt_logprobs for r in reading for _ in r.prompts.texts]
        tokens = [prompt for r in reading for prompt in r.tokens]
        parcels = []
        new: list[_Running] = []
        try:
            with self._span("decode.prefill", [r.request for r in reading], len(texts)):
                contexts = self.decoder.read_many(texts, scores, tokens)
            self.reads += 1
            for r in reading:
                count = len(r.prompts.texts)
                own, contexts = contexts[:count], contexts[count:]
                live = [(i, s) for i, s in enumerate(r.prompts.start(own)) if not s.done]
                r.request.remaining = len(live)
                parcels.append(_Parcel(r.request, [], not live, own))
                new += [_Running(r.request, i, s) for i, s in live]
        except Exception as exc:  # a failing step graph: every request read with it gets it
            for r in reading:
                r.request.error = exc
            self._deliver(_Parcel(r.request, [], True) for r in reading)
            return []
        self._deliver(parcels)
        if len(new) > room:
            with self._lock:
                self._waiting.extendleft(reversed(new[room:]))
        return new[:room]

    def _all_held_back(self, running: list[_Running]) -> bool:
        """Whether every running sequence waits for its reader; if so each of those readers
        is asked to wake the engine once it reads (then checked again: it may just have)."""
        if not all(r.request.behind(self.max_unread) for r in running):
            return False
        for item in running:
            item.request.held_back = True
        return all(r.request.behind(self.max_unread) for r in running)

    def _iterate(self, running: list[_Running], dropped: list[_Running]) -> list[_Running]:
        """One token for every running sequence, then one step for those that continue.
        Returns the sequences to run next time."""
        parcels: dict[DecodeRequest, _Parcel] = {}
        for item in dropped:
            self._count_down(item.request, parcels)
        continuing: list[_Running] = []
        held: list[_Running] = []  # streams ahead of their readers: no token this time
        now = time.perf_counter()
        timing = _StepTiming(now)
        try:
            for item in running:
                if item.request.behind(self.max_unread):
                    held.append(item)
                    continue
                token = item.sequence.next_token()
                timing.token(item)
                parcel = parcels.get(item.request)
                if parcel is None:
                    parcel = parcels[item.request] = _Parcel(item.request, [], False)
                parcel.tokens.append((item.index, token))
                if item.sequence.done:
                    self._count_down(item.request, parcels)
                else:
                    continuing.append(item)
        except Exception as exc:  # a bug in token picking: end the requests, keep serving
            self._observe(timing)
            self._deliver(parcels.values())
            return self._fail(running, exc)
        self._observe(timing)
        self._deliver(parcels.values())
        if not continuing:
            return held
        try:
            with self._span("decode.step", [c.request for c in continuing], len(continuing)):
                self.decoder.feed_many(
                    [c.sequence.context for c in continuing],
                    [c.sequence.chosen for c in continuing],
                )
        except Exception as exc:  # a failing step graph: every request in the step gets it
            return self._fail(continuing, exc) + held
        self.steps += 1
        if self._metrics is not None:
            self._metrics.decode_batch_size.observe(len(continuing))
        return continuing + held

    def _span(
        self, name: str, requests: list[DecodeRequest], sequences: int
    ) -> AbstractContextManager[Span | None]:
        """The span of one call for these requests' sequences (or prompts)."""
        if not tracing.on():
            return tracing.OFF
        model, version = self._labels
        attributes: tracing.Attributes = {
            "seedserve.model": model,
            "seedserve.model_version": version,
            "seedserve.sequences": sequences,
        }
        return tracing.batch_span(name, (r.trace for r in requests), attributes)

    @staticmethod
    def _fail(items: list[_Running], exc: Exception) -> list[_Running]:
        """The requests of `items` end with `exc`: their unfinished sequences are returned, to
        be dropped (and the requests ended) at the next iteration."""
        for item in items:
            item.request.error = exc
            item.request.cancel()
        return [item for item in items if not item.sequence.done]

    def _count_down(self, request: DecodeRequest, parcels: dict[DecodeRequest, _Parcel]) -> None:
        """One of the request's sequences finished or was dropped; the last one ends it."""
        request.remaining -= 1
        if request.remaining == 0:
            parcel = parcels.get(request)
            if parcel is None:
                parcel = parcels[request] = _Parcel(request, [], True)
            parcel.end = True

    def _observe(self, timing: _StepTiming) -> None:
        """The step's tokens in the metrics: one update per metric and distinct gap."""
        self.tokens += timing.tokens
        metrics = self._metrics
        if metrics is None or not timing.tokens:
            return
        for first in timing.firsts:
            metrics.time_to_first_token.observe(first)
        for previous, count in timing.gaps.items():
            observe_many(metrics.inter_token_latency, timing.now - previous, count)
        metrics.generated_tokens.inc(timing.tokens)

    @staticmethod
    def _deliver(parcels: Iterable[_Parcel]) -> None:
        """Hand every request its parcel (held back until its end where it reads them only
        then): one callback per event loop per iteration."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Parcel]] = {}
        for parcel in parcels:
            request = parcel.request
            if not request.each_step:
                request.held += parcel.tokens
                parcel.tokens = []
                if parcel.end:
                    parcel.tokens, request.held = request.held, []
                elif parcel.contexts is None:
                    continue
            request.delivered += len(parcel.tokens)
            by_loop.setdefault(request.loop, []).append(parcel)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_hand_over_all, batch)
            except RuntimeError:  # the loop is closed: nobody is left to read
                continue


def _hand_over_all(parcels: list[_Parcel]) -> None:
    for parcel in parcels:
        parcel.request._hand_over(parcel.tokens, parcel.end, parcel.contexts)
