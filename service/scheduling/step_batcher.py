"""Step batching: the denoising steps of concurrent generations share onnxruntime calls.

Each image generation runs its own sampling loop in a task-pool thread. A `StepBatcher` (one per
model version) sits between those loops and the denoiser graph: each loop submits its step's
rows; the steps waiting together run as one call (rows concatenated along the batch axis, each
row with its own timestep and label), at most `slots` calls at once, and every loop gets its own
rows back. Results equal the unbatched run up to float rounding: the graph treats rows
independently.

When does a call start? At once when a call is already running and a slot is free (a free
core must not idle while steps wait), and otherwise as soon as every running generation that is
not inside a call has submitted its step (nobody else can join), when the rows waiting reach
`max_rows`, or when the oldest step has waited `max_delay_s` (a loop slow to come back must not
hold the others). A generation counts as running between `job()`'s entry and exit, so a lone
request never waits. A step that is due when it is submitted runs in its own thread (no
hand-off); steps that wait are run by the batcher's worker threads, which go from one call
straight to the next (a loop's thread would first have to be woken and get the GIL). Workers
start on demand and end after `idle_s` without work. Each call of traced generations is a
`denoise.step` span, child of its oldest step's request span and linked to every one's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import Span

from service import tracing

# runs the denoiser on stacked feeds (all sharing the batch axis) and returns its output
RunRows = Callable[[Mapping[str, np.ndarray]], np.ndarray]
# (rows, generations) of each call, for metrics
OnCall = Callable[[int, int], None]


@dataclass(eq=False)
class _Step:
    feeds: Mapping[str, np.ndarray]
    rows: int
    enqueued: float
    trace: Span | None  # the generation's request span (bound to its thread), when traced
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class StepBatcher:
    def __init__(
        self,
        run_rows: RunRows,
        max_rows: int,
        max_delay_s: float,
        slots: int = 1,
        on_call: OnCall | None = None,
        idle_s: float = 2.0,
    ) -> None:
        assert max_rows >= 1 and slots >= 1 and max_delay_s >= 0, "bad step-batching limits"
        self.run_rows = run_rows
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.slots = slots
        self.on_call = on_call
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._pending: deque[_Step] = deque()
        self._jobs = 0  # generations inside job()
        self._in_calls = 0  # steps inside a running call
        self._calls = 0  # calls running
        self._workers = 0
        self._idle_workers = 0

    @property
    def generations(self) -> int:
        """Generations running now (inside `job()`)."""
        return self._jobs

    @property
    def workers(self) -> int:
        """Worker threads alive now."""
        return self._workers

    @contextmanager
    def job(self) -> Iterator[None]:
        """Count one generation as running: its fellow steps wait for it (up to max_delay_s)."""
        with self._lock:
            self._jobs += 1
        try:
            yield
        finally:
            with self._lock:
                self._jobs -= 1
                self._work.notify()  # the others may have been waiting for this one

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """One step's rows in, the denoiser's output for those rows out (maybe shared a call)."""
        step = _Step(feeds, len(next(iter(feeds.values()))), time.perf_counter(), tracing.current())
        with self._lock:
            self._pending.append(step)
            batch = self._claim()
            if batch is None:
                self._wake_worker()
        if batch is not None:  # due now: run it in this thread, no hand-off
            try:
                self._execute(batch)
            finally:
                with self._lock:
                    self._calls -= 1
                    self._in_calls -= len(batch)
                    if self._pending:
                        self._wake_worker()
        step.done.wait()
        if step.error is not None:
            raise step.error
        assert step.result is not None
        return step.result

    # -- workers -------------------------------------------------------------------------------

    def _wake_worker(self) -> None:
        """Under the lock: an idle worker looks at the queue, or a new one starts."""
        if self._idle_workers:
            self._work.notify()
        elif self._workers < self.slots:
            self._workers += 1
            threading.Thread(target=self._serve, name="stepbatch", daemon=True).start()

    def _serve(self) -> None:
        with self._lock:
            idle_since = time.perf_counter()
            while True:
                batch = self._claim()
                if batch is not None:
                    self._lock.release()
                    try:
                        self._execute(batch)
                    finally:
                        self._lock.acquire()
                        self._calls -= 1
                        self._in_calls -= len(batch)
                    idle_since = time.perf_counter()
                    continue
                now = time.perf_counter()
                if not self._pending and now - idle_since >= self.idle_s:
                    self._workers -= 1
                    return
                timeout: float | None
                if self._calls >= self.slots:
                    timeout = None  # until a call ends
                elif self._pending:  # not due yet: until the oldest step's delay runs out
                    timeout = max(self._pending[0].enqueued + self.max_delay_s - now, 0.0)
                else:
                    timeout = max(idle_since + self.idle_s - now, 0.0)
                self._idle_workers += 1
                self._work.wait(timeout)
                self._idle_workers -= 1

    def _ready(self) -> bool:
        if not self._pending:
            return False
        if self._calls > 0:
            return True  # a free worker beside a running call: waiting would leave it idle
        if len(self._pending) >= self._jobs - self._in_calls:
            return True  # every generation that could join has joined
        if sum(s.rows for s in self._pending) >= self.max_rows:
            return True
        return time.perf_counter() - self._pending[0].enqueued >= self.max_delay_s

    def _claim(self) -> list[_Step] | None:
        """The steps of the next call, oldest first and at most max_rows (the first always),
        when one is due; under the lock."""
        if self._calls >= self.slots or not self._ready():
            return None
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_rows:
            rows += self._pending[0].rows
            batch.append(self._pending.popleft())
        self._calls += 1
        self._in_calls += len(batch)
        return batch

    def _execute(self, batch: list[_Step]) -> None:
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {k: np.concatenate([s.feeds[k] for s in batch]) for k in batch[0].feeds}
            rows = sum(s.rows for s in batch)
            with _call_span([s.trace for s in batch], rows) if tracing.on() else tracing.OFF:
                output = self.run_rows(feeds)
            if self.on_call is not None:
                self.on_call(rows, len(batch))
        except BaseException as exc:
            for s in batch:
                s.error = exc
                s.done.set()
            return
        offset = 0
        for s in batch:
            s.result = output[offset : offset + s.rows]
            offset += s.rows
            s.done.set()


def traced_alone(run_rows: RunRows) -> RunRows:
    """`run_rows` for steps that run as they come (no batcher): each call is a `denoise.step`
    span of its generation's request, as the batcher's shared calls are."""

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if not tracing.on():
            return run_rows(feeds)
        with _call_span([tracing.current()], len(next(iter(feeds.values())))):
            return run_rows(feeds)

    return run


def step_timing(
    run_rows: RunRows, step: Mapping[str, np.ndarray], generations: int = 8, repeats: int = 5
) -> tuple[float, float]:
    """Seconds a step costs alone, and in one call shared by `generations` steps (that call's
    time / generations): medians of `repeats` timed calls of each, after one untimed."""
    stacked = {name: np.concatenate([value] * generations) for name, value in step.items()}
    alone: list[float] = []
    together: list[float] = []
    run_rows(step)
    run_rows(stacked)
    for _ in range(repeats):  # interleaved: a busy moment slows both
        for feeds, times in ((step, alone), (stacked, together)):
            started = time.perf_counter()
            run_rows(feeds)
            times.append(time.perf_counter() - started)
    return float(np.median(alone)), float(np.median(together)) / generations


def _call_span(traces: list[Span | None], rows: int) -> AbstractContextManager[Span | None]:
    """The `denoise.step` span of one denoiser call for the generations whose request spans
    are `traces`."""
    attributes: tracing.Attributes = {
        "seedserve.batch.size": rows,
        "seedserve.batch.requests": len(traces),
    }
    return tracing.batch_span("denoise.step", traces, attributes)
