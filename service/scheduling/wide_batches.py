"""A batched graph's big batches on more onnxruntime threads, where that is measured faster.

Under load the dynamic batcher's requests arrive together and leave together: at concurrency 32
on cnn-mnist nearly every request is in one batch of about 31, which takes 2.7 ms of one core
while the event loop, with nothing left to read, waits for it and the other core idles. More
intra-op threads make such a call faster (1.6 ms on two threads in process) but a lone request
slower (0.098 -> 0.115 ms at batch 1), and a session's thread count is fixed when it is made.

So `WideBatches` keeps a second session of the graph with `SEEDSERVE_WIDE_BATCH_THREADS`
threads, made (in a thread of its own) when the first batch of `MIN_SIZE` or more items comes,
and runs each such batch on whichever session has been faster per item for batches of its size
class (powers of two) under the load that is actually there: a moving average of each, the
other session tried again every `EXPLORE_EVERY` calls of a class. Smaller batches, graphs over
`SEEDSERVE_WIDE_BATCH_MAX_MB` (the second session holds its own weights), CUDA graphs and models
that pin their threads keep one session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

MIN_SIZE = 4  # smaller batches always run on the graph's own session
EXPLORE_EVERY = 16  # calls of a size class between two tries of the session not chosen
MEMORY = 1 / 8  # weight of a new call in a session's moving time per item


class Session(Protocol):
    """What WideBatches runs (service.runtime.Graph)."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class _SizeClass:
    """One size class's moving times per item (narrow, wide; None until timed) and calls."""

    def __init__(self) -> None:
        self.per_item: list[float | None] = [None, None]
        self.calls = 0

    def pick(self) -> int:
        """0 (narrow) or 1 (wide): the faster so far, the other every EXPLORE_EVERY calls and
        until both were timed."""
        self.calls += 1
        narrow, wide = self.per_item
        if narrow is None:
            return 0
        if wide is None:
            return 1
        best = 1 if wide < narrow else 0
        return 1 - best if self.calls % EXPLORE_EVERY == 0 else best

    def record(self, which: int, per_item: float) -> None:
        old = self.per_item[which]
        self.per_item[which] = per_item if old is None else old + (per_item - old) * MEMORY


class WideBatches:
    """The batcher's graph: `narrow` (the graph) for small batches, and for big ones the session
    `make_wide()` returns where it is faster (see the module docstring)."""

    def __init__(
        self,
        narrow: Session,
        make_wide: Callable[[], Session],
        name: str,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.narrow = narrow
        self.wide: Session | None = None
        self.name = name  # for the log
        self._make_wide = make_wide
        self._clock = clock
        self._lock = threading.Lock()  # guards `_started`
        self._started = False  # the wide session was asked for (made, failed or in the making)
        self._classes: dict[int, _SizeClass] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        size = int(next(iter(feeds.values())).shape[0])
        if size < MIN_SIZE:
            return self.narrow.run(feeds)
        wide = self.wide
        if wide is None:
            self._start_making()
            return self.narrow.run(feeds)
        size_class = self._classes.setdefault(size.bit_length(), _SizeClass())
        which = size_class.pick()
        started = self._clock()
        outputs = (wide if which else self.narrow).run(feeds)
        size_class.record(which, (self._clock() - started) / size)
        return outputs

    def choices(self) -> dict[int, str]:
        """Each size class's (lowest size's) session now: 'narrow' or 'wide' (for tests, logs)."""
        chosen = {}
        for bits, size_class in sorted(self._classes.items()):
            narrow, wide = size_class.per_item
            faster = wide is not None and (narrow is None or wide < narrow)
            chosen[1 << (bits - 1)] = "wide" if faster else "narrow"
        return chosen

    def _start_making(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._make, name=f"wide-{self.name}", daemon=True).start()

    def _make(self) -> None:
        try:
            self.wide = self._make_wide()
            log.info("%s: a second session for batches of %d or more", self.name, MIN_SIZE)
        except Exception as exc:  # memory, most likely: the graph's own session serves on
            log.warning("%s: no second session for big batches: %s", self.name, exc)
