"""Dynamic batching in the spirit of Triton's dynamic batcher.

Requests for the same graph that arrive together are stacked along the batch axis into one
onnxruntime call, up to `max_batch_size`, waiting at most `max_queue_delay` for company after the
first one arrives (0: no waiting, but whatever is already queued still goes together). Results are
split back to each caller. Only requests whose non-batch shapes and dtypes agree are stacked.

The queue is bounded: when it is full a request is refused at once (503 + Retry-After) instead of
waiting behind work the server cannot finish in time, and a request whose deadline passes while
queued is dropped before inference.

Pipelined (`BatchPolicy.pipeline`, the service's default): the batches of a graph run one after
another, stacked and waiting in line behind the running one, and the thread that ran one runs
the next (no turn of the event loop, no other thread's wake-up in between); a small batch (under
`SMALL_BATCH` items, one core's work) that finds the line busy runs beside it instead, up to
`concurrency` batches at once. And a batch starts as soon as half the requests the process is
serving (`EARLY_START_MIN` at least) are queued, from the request that makes it half, without
waiting for the event loop to finish its turn. Under a closed loop of clients the requests then
travel in two or more groups instead of one: the event loop reads and answers one group while
another's batch runs, where in lock-step the loop read everyone's request, then idled through
the batch, then answered everyone (measured: docs/benchmarks.md, "Round two, fifth day").

Traced requests get a `queue` span each (arrival to batch start) and share one `batch` span
(child of the oldest one's span, linked to every member's) with the onnxruntime call under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from opentelemetry.trace import Span

from service import tracing
from service.errors import Overloaded
from service.metrics import Metrics
from service.stats import ModelStats

Signature = tuple[tuple[str, tuple[int, ...], str], ...]
# the share of recent requests that found others queued, running or in flight (a moving
# average over about the last 30): above this the batcher is under load and runs nothing inline,
# since a request on the loop would keep it from reading the next ones while a core idles
CROWDED = 0.1
# pipelined: a batch under this many items uses one core (WideBatches runs bigger ones on all of
# them), so it may run beside another batch of the graph; a bigger one waits its turn
SMALL_BATCH = 4
# pipelined: a batch starts from submit() once this many requests, or half of those in flight
# in the process if more, are queued (at 4, two groups of 4 at concurrency 8 cost a third more
# CPU per request than one batch of 8 and lost 3%; at 8, concurrency 16 gained 6%)
EARLY_START_MIN = 8
# pipelined: batches taken and not yet answered, beyond those running; the batches taken at
# the end of the loop's turn may use them only while batches start early (EARLY_SHARE of the
# recent ones): where requests trickle in (gRPC's server hands them over one by one), taking
# them early only made batches smaller (1.9 requests instead of 2.5) and cost 8%
STACKED = 2
EARLY_SHARE = 0.1
# pipelined: a thread runs at most this many batches of the line in a row before it puts the
# rest back on the executor's queue, behind other graphs' work
LINE_TURN = 8


class Runs(Protocol):
    """What a batcher runs: a graph (service.runtime.Graph), or a view of one."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # requests waiting, not items
    concurrency: int = 1  # batches of this graph running at once
    # a request that finds nothing queued or running runs on the event loop itself when calls
    # of this graph typically take at most this long (0 = never): no task, no thread hop
    inline_max_s: float = 0.0
    # batches in line, each handing its thread to the next, and started early (module docstring)
    pipeline: bool = False


@dataclass
class Pending:
    feeds: Mapping[str, np.ndarray]
    size: int
    signature: Signature
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float
    deadline: float | None
    trace: Span | None = None  # the request's span, when traced
    enqueued_ns: int = 0  # when it arrived on the tracing clock, when traced
    taken: bool = field(default=False)


class Batcher:
    def __init__(
        self,
        graph: Runs,
        policy: BatchPolicy,
        executor: Executor,
        metrics: Metrics,
        labels: tuple[str, str],
        stats: ModelStats | None = None,
    ) -> None:
        self.graph = graph
        self.policy = policy
        self.executor = executor
        self.metrics = metrics
        self.labels = labels
        self.stats = stats if stats is not None else ModelStats()  # its model's (extension)
        self._queue: deque[Pending] = deque()
        self._arrived = asyncio.Event()
        self._slots = Slots(policy.concurrency + (STACKED if policy.pipeline else 0))
        # pipelined: batches stacked and waiting to run, and how many threads run them
        self._line: deque[Staged] = deque()
        self._line_lock = threading.Lock()
        self._line_running = False  # a thread is running the line
        self._beside = 0  # small batches running beside the line
        self._early = 0.0  # moving share of recent batches that started early (EARLY_SHARE)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._running: set[asyncio.Task[None]] = set()
        self._busy = 0  # batches taken and not yet answered
        # the metric children this batcher updates, looked up once
        self._depth = metrics.queue_depth.labels(*labels)
        self._queue_duration = metrics.queue_duration.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self._inference_count = metrics.inference_count.labels(*labels)
        self._compute_duration = metrics.compute_duration.labels(*labels)
        self._typical_s = float("inf")  # moving average of a call's run time, once measured
        self._crowded = 0.0  # moving share of requests that arrived with company (CROWDED)

    async def submit(
        self, feeds: Mapping[str, np.ndarray], deadline: float | None = None
    ) -> list[np.ndarray]:
        """Queue one request (its own batch axis first) and wait for its slice of the outputs."""
        if len(self._queue) >= self.policy.max_queue_size:
            self.metrics.rejected.labels(*self.labels, "queue_full").inc()
            raise Overloaded(
                f"model {self.labels[0]!r} has {len(self._queue)} requests queued, its limit; retry later",
                retry_after_s=1.0,
            )
        first = next(iter(feeds.values()))
        loop = asyncio.get_running_loop()
        trace = tracing.current()
        pending = Pending(
            feeds=feeds,
            size=int(first.shape[0]),
            signature=tuple((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()),
            future=loop.create_future(),
            enqueued=time.perf_counter(),
            deadline=deadline,
            trace=trace,
            enqueued_ns=0 if trace is None else tracing.now_ns(),
        )
        self._queue.append(pending)
        if self._may_run_inline(trace):
            # Requests the server has already read reach this queue within two turns of the
            # loop (their first step runs after this one's): wait those turns for company.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if len(self._queue) == 1 and self._queue[0] is pending and not self._busy:
                self._queue.pop()
                return self._run_inline(feeds, pending.size)
            # company came, or the dispatcher took this request with it: batch as usual
            self._crowded += (1.0 - self._crowded) / 8
        self._depth.set(len(self._queue))
        if self.policy.pipeline and self._half_queued() and self._slots.take_now():
            self._start_now(early=True)
        self._arrived.set()
        if self._task is None or self._task.done():
            # in a context of its own: the dispatcher outlives this request (and its span)
            self._task = loop.create_task(self._dispatch_forever(), context=contextvars.Context())
        return await pending.future

    def _half_queued(self) -> bool:
        """Pipelined: whether enough requests are queued to start a batch without waiting for
        the loop's turn to end (EARLY_START_MIN, or half of those in flight)."""
        queued = len(self._queue)
        return (
            queued >= EARLY_START_MIN
            and queued >= self.metrics.requests_in_flight // 2
            and self.policy.max_queue_delay_s <= 0  # a configured wait for company is kept
            and not tracing.on()
        )

    def idle(self) -> bool:
        """Whether a request submitted now would be alone: nothing queued or running for the
        graph, and no other request in flight in the process."""
        return self.metrics.requests_in_flight <= 1 and not self._queue and not self._busy

    def _may_run_inline(self, trace: Span | None) -> bool:
        """Whether this request, just queued, may run on the loop itself if no company comes
        (the naive handler's way, without the hop to an inference thread and back): it is alone
        (the only request the process is serving, nothing else queued or running for the
        graph), few of the batcher's recent requests had company, and the graph is cheap.
        Traced requests keep the batcher's spans. Keeps the moving share of crowded arrivals."""
        alone = self.metrics.requests_in_flight <= 1 and len(self._queue) == 1 and not self._busy
        self._crowded += ((0.0 if alone else 1.0) - self._crowded) / 32
        return (
            alone
            and self._crowded < CROWDED
            and self._typical_s <= self.policy.inline_max_s
            and not self._closing
            and trace is None
        )

    def _run_inline(self, feeds: Mapping[str, np.ndarray], size: int) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs, infer_s = self._run(feeds)
        self._record([0.0], size, 1, started, started, started + infer_s, infer_s)
        return outputs

    def _record(
        self,
        waits: list[float],
        total: int,
        requests: int,
        started: float,
        stacked: float,
        returned: float,
        infer_s: float,
    ) -> None:
        """Metrics and statistics of one batch: each request's queue time, then the call."""
        for waited in waits:
            self._queue_duration.observe(waited)
            self.stats.queued(int(waited * 1e9))
        self._batch_size.observe(total)
        self._inference_count.inc(total)
        self.stats.executed(
            total,
            requests,
            input_ns=int((stacked - started) * 1e9),
            infer_ns=int(infer_s * 1e9),
            output_ns=int((time.perf_counter() - returned) * 1e9),
        )

    async def close(self) -> None:
        """Finish every queued and running request, then stop the dispatcher. A request that
        still arrives afterwards (it picked this model version just before a swap) restarts it."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _dispatch_forever(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                # Take a slot first: while every slot is busy, requests keep queueing and the
                # next batch grows, and the queue counts only what has not started.
                await self._slots.take(self._reserved())
                await self._wait_for_company()
                if self.policy.pipeline and not tracing.on():
                    self._start_now()
                    continue
                batch = self._take_busy()
                if not batch:
                    continue
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._closing:
                return

    async def _wait_for_company(self) -> None:
        """Hold the first request up to max_queue_delay while the batch is not yet worth running."""
        delay = self.policy.max_queue_delay_s
        if delay <= 0:
            await asyncio.sleep(0)  # let requests already in flight on the loop join
            return
        until = self._queue[0].enqueued + delay
        while (
            self._queued_items() < self._target() and (remaining := until - time.perf_counter()) > 0
        ):
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break

    def _target(self) -> int:
        preferred = self.policy.preferred_batch_sizes
        return max(preferred) if preferred else self.policy.max_batch_size

    def _queued_items(self) -> int:
        return sum(p.size for p in self._queue)

    def _take_busy(self) -> list[Pending]:
        """A batch to run, its slot taken already (given back when there is none)."""
        batch = self._take()
        self._depth.set(len(self._queue))
        if batch:
            self._busy += 1
        else:
            self._slots.give()
        return batch

    def _take(self) -> list[Pending]:
        """Requests for one batch: same signature as the oldest, at most max_batch_size items,
        cut at the largest preferred size reachable. Drops cancelled and expired requests."""
        now = time.perf_counter()
        head: Pending | None = None
        batch: list[Pending] = []
        total = 0
        limit = self.policy.max_batch_size
        keep: deque[Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # the client went away
                continue
            if item.deadline is not None and now > item.deadline:
                self.metrics.rejected.labels(*self.labels, "deadline").inc()
                item.future.set_exception(
                    Overloaded(
                        "the request's deadline passed while it was queued", retry_after_s=1.0
                    )
                )
                continue
            if head is None:
                head = item
            if item.signature == head.signature and (total + item.size <= limit or not batch):
                batch.append(item)
                total += item.size
            else:
                keep.append(item)
        self._queue = keep
        preferred = [p for p in self.policy.preferred_batch_sizes if p <= total]
        if preferred and total not in preferred:
            batch, total = self._trim(batch, max(preferred))
        return batch

    def _trim(self, batch: list[Pending], size: int) -> tuple[list[Pending], int]:
        taken: list[Pending] = []
        left: list[Pending] = []
        total = 0
        for item in batch:
            if not left and (total + item.size <= size or not taken):
                taken.append(item)
                total += item.size
            else:
                left.append(item)
        self._queue.extendleft(reversed(left))  # back at the front, in arrival order
        return taken, total

    async def _execute(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        feeds = self._stacked(batch)
        if feeds is None:
            return
        total = sum(item.size for item in batch)
        stacked = time.perf_counter()
        outcome: Awaitable[tuple[list[np.ndarray], float]]
        if tracing.on():
            outcome = self._run_traced(batch, feeds, total)
        else:
            outcome = asyncio.get_running_loop().run_in_executor(self.executor, self._run, feeds)
        await self._answer(batch, outcome, total, started, stacked)

    def _stacked(self, batch: list[Pending]) -> dict[str, np.ndarray] | None:
        """The batch's inputs, its requests' stacked along the batch axis; None when that
        failed (memory), which every request of the batch gets, its slot freed."""
        try:
            if len(batch) == 1:
                return dict(batch[0].feeds)
            names = [k for k, _, _ in batch[0].signature]
            return {k: np.concatenate([item.feeds[k] for item in batch]) for k in names}
        except Exception as exc:
            _fail(batch, exc)
            self._busy -= 1
            self._slots.give()
            return None

    def _reserved(self) -> int:
        """Slots the loop's end-of-turn batches leave to early starts (STACKED, EARLY_SHARE)."""
        pipelined = self.policy.pipeline and not tracing.on()
        return STACKED if pipelined and self._early < EARLY_SHARE else 0

    def _start_now(self, early: bool = False) -> None:
        """Pipelined: take a batch (its slot is taken) and put it in line to run, now."""
        batch = self._take_busy()
        if not batch:
            return
        self._early += ((1.0 if early else 0.0) - self._early) / 16
        started = time.perf_counter()
        feeds = self._stacked(batch)
        if feeds is None:
            return
        stacked = time.perf_counter()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[list[np.ndarray], float]] = loop.create_future()
        size = sum(item.size for item in batch)
        staged = Staged(feeds, done)
        with self._line_lock:
            beside = (
                self._line_running
                and size < SMALL_BATCH
                and self._beside + 1 < self.policy.concurrency
            )
            if beside:
                self._beside += 1
            else:
                self._line.append(staged)
                start_line = not self._line_running
                self._line_running = True
        if beside:
            self._submit(self._run_beside, staged)
        elif start_line:
            self._submit(self._run_line)
        task = loop.create_task(self._answer(batch, done, size, started, stacked))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _submit(self, run: Callable[..., None], *args: Any) -> None:
        try:
            self.executor.submit(run, *args)
        except RuntimeError:  # the executor is shut down (the server is stopping): run here
            run(*args)

    def _run_line(self) -> None:
        """On an inference thread: run the batches in line, handing each one's outcome to the
        loop, until the line is empty, or for LINE_TURN batches and then put the rest back on
        the executor's queue."""
        for _ in range(LINE_TURN):
            with self._line_lock:
                if not self._line:
                    self._line_running = False
                    return
                staged = self._line.popleft()
            self._run_staged(staged)
        self._submit(self._run_line)

    def _run_beside(self, staged: Staged) -> None:
        try:
            self._run_staged(staged)
        finally:
            with self._line_lock:
                self._beside -= 1

    def _run_staged(self, staged: Staged) -> None:
        outcome: tuple[list[np.ndarray], float] | BaseException
        try:
            outcome = self._run(staged.feeds)
        except Exception as exc:
            outcome = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it
            staged.done.get_loop().call_soon_threadsafe(_settle, staged.done, outcome)

    async def _answer(
        self,
        batch: list[Pending],
        outcome: Awaitable[tuple[list[np.ndarray], float]],
        total: int,
        started: float,
        stacked: float,
    ) -> None:
        """Each request's slice of its batch's outputs (or the batch's failure), once they come;
        then the batch's slot is free."""
        try:
            try:
                outputs, infer_s = await outcome
            except Exception as exc:
                _fail(batch, exc)
                return
            self._deliver(batch, outputs, total, started, stacked, infer_s)
        finally:
            self._busy -= 1
            self._slots.give()

    def _deliver(
        self,
        batch: list[Pending],
        outputs: list[np.ndarray],
        total: int,
        started: float,
        stacked: float,
        infer_s: float,
    ) -> None:
        """Each request's slice of the outputs, then the batch's metrics."""
        returned = time.perf_counter()
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result([out[offset : offset + item.size] for out in outputs])
            offset += item.size
        waits = [started - item.enqueued for item in batch]
        self._record(waits, total, len(batch), started, stacked, returned, infer_s)

    async def _run_traced(
        self, batch: list[Pending], feeds: Mapping[str, np.ndarray], total: int
    ) -> tuple[list[np.ndarray], float]:
        """`_run` in a `batch` span, after each traced request's `queue` span."""
        model, version = self.labels
        now = tracing.now_ns()
        for item in batch:
            if item.trace is not None:
                attributes = {"seedserve.model": model, "seedserve.model_version": version}
                tracing.record("queue", item.trace, item.enqueued_ns, now, attributes)
        batch_attributes: tracing.Attributes = {
            "seedserve.model": model,
            "seedserve.model_version": version,
            "seedserve.batch.size": total,
            "seedserve.batch.requests": len(batch),
        }
        with tracing.batch_span("batch", (item.trace for item in batch), batch_attributes):
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, tracing.bind(self._run), feeds
            )

    def _run(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
        """The graph's outputs and its run time in seconds (on an inference thread: the
        statistics are recorded back on the event loop)."""
        started = time.perf_counter()
        outputs = self.graph.run(feeds)
        took = time.perf_counter() - started
        self._compute_duration.observe(took)
        # a short memory (1/8): a model that gets slower (bigger inputs) leaves the loop soon
        typical = self._typical_s
        self._typical_s = took if typical == float("inf") else typical + (took - typical) / 8
        return outputs, took


@dataclass
class Staged:
    """A pipelined batch in line: its stacked inputs and where its outcome goes (a future of
    the event loop that waits for it)."""

    feeds: Mapping[str, np.ndarray]
    done: asyncio.Future[tuple[list[np.ndarray], float]]


class Slots:
    """Batches that may be taken and not yet answered: a semaphore that can also be taken
    without waiting (from submit(), in the middle of the loop's turn)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._given = asyncio.Event()

    def take_now(self, reserve: int = 0) -> bool:
        """Take one if more than `reserve` are free."""
        if self.free <= reserve:
            return False
        self.free -= 1
        return True

    async def take(self, reserve: int = 0) -> None:
        while not self.take_now(reserve):
            self._given.clear()
            await self._given.wait()

    def give(self) -> None:
        self.free += 1
        self._given.set()


def _fail(batch: list[Pending], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)


def _settle(
    done: asyncio.Future[tuple[list[np.ndarray], float]],
    outcome: tuple[list[np.ndarray], float] | BaseException,
) -> None:
    if done.done():
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
