"""The dynamic batcher: stacks concurrent requests, splits results back, sheds load when full."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.onnx_builders import write_classifier

from service.errors import Overloaded
from service.metrics import Metrics
from service.runtime import Graph
from service.scheduling.dynamic_batcher import Batcher, BatchPolicy
from service.settings import Settings


class SlowGraph:
    """A real graph whose runs are recorded (and can be held) to observe batching."""

    def __init__(self, graph: Graph, hold: threading.Event | None = None) -> None:
        self.graph = graph
        self.output_names = graph.output_names
        self.batch_sizes: list[int] = []
        self.hold = hold

    def run(self, feeds, output_names=None):
        if self.hold is not None:
            self.hold.wait(5)
        self.batch_sizes.append(int(feeds["image"].shape[0]))
        return self.graph.run(feeds, output_names)


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    model_dir = write_classifier(tmp_path, "m")
    return Graph(model_dir / "1" / "model.onnx", Settings())


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def make(
    graph, policy: BatchPolicy, hold: threading.Event | None = None
) -> tuple[Batcher, SlowGraph, Metrics]:
    slow = SlowGraph(graph, hold)
    metrics = Metrics()
    return Batcher(slow, policy, ThreadPoolExecutor(2), metrics, ("m", "1")), slow, metrics  # type: ignore[arg-type]


def test_concurrent_requests_share_runs_and_get_their_own_answers(graph: Graph) -> None:
    batcher, slow, _ = make(graph, BatchPolicy(max_batch_size=64, max_queue_delay_s=0.05))
    inputs = [images(1 + i % 3, seed=i) for i in range(20)]

    async def main() -> list[list[np.ndarray]]:
        return await asyncio.gather(*(batcher.submit({"image": x}) for x in inputs))

    results = asyncio.run(main())
    assert sum(slow.batch_sizes) == sum(len(x) for x in inputs)
    assert len(slow.batch_sizes) < 5  # 20 requests, a handful of runs
    for x, (logits, probabilities) in zip(inputs, results, strict=True):
        want = graph.run({"image": x})
        np.testing.assert_allclose(logits, want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probabilities, want[1], rtol=1e-5, atol=1e-6)


def test_max_batch_size_is_respected(graph: Graph) -> None:
    batcher, slow, _ = make(graph, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.05))

    async def main() -> None:
        await asyncio.gather(*(batcher.submit({"image": images(1, i)}) for i in range(10)))

    asyncio.run(main())
    assert max(slow.batch_sizes) <= 4
    assert sum(slow.batch_sizes) == 10


def test_preferred_batch_size_cuts_the_batch(graph: Graph) -> None:
    hold = threading.Event()
    batcher, slow, _ = make(
        graph, BatchPolicy(max_batch_size=64, preferred_batch_sizes=(4,), concurrency=1), hold
    )

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(11)]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sum(slow.batch_sizes) == 11
    assert 4 in slow.batch_sizes
    assert max(slow.batch_sizes) <= 4


def test_zero_delay_still_batches_what_is_queued(graph: Graph) -> None:
    hold = threading.Event()
    batcher, slow, _ = make(graph, BatchPolicy(max_batch_size=64, concurrency=1), hold)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit({"image": images(1, 0)}))
        await asyncio.sleep(0.02)  # the first run is held; the rest queue behind it
        rest = [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(1, 9)]
        await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert slow.batch_sizes == [1, 8]


def test_full_queue_is_refused_at_once(graph: Graph) -> None:
    hold = threading.Event()
    batcher, _, metrics = make(
        graph, BatchPolicy(max_batch_size=1, max_queue_size=3, concurrency=1), hold
    )

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.submit({"image": images(1, 0)}))]
        await asyncio.sleep(0.02)  # running, held
        tasks += [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(1, 4)]
        await asyncio.sleep(0.02)  # three queued behind it: the limit
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit({"image": images(1, 9)})
        assert time.perf_counter() - started < 0.05
        assert refused.value.retry_after_s > 0
        hold.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert metrics.rejected.labels("m", "1", "queue_full")._value.get() == 1


def test_expired_requests_are_dropped_before_inference(graph: Graph) -> None:
    hold = threading.Event()
    batcher, slow, metrics = make(graph, BatchPolicy(max_batch_size=8, concurrency=1), hold)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit({"image": images(1, 0)}))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(
            batcher.submit({"image": images(1, 1)}, deadline=time.perf_counter() + 0.01)
        )
        await asyncio.sleep(0.05)
        hold.set()
        await first
        with pytest.raises(Overloaded, match="deadline"):
            await late

    asyncio.run(main())
    assert slow.batch_sizes == [1]
    assert metrics.rejected.labels("m", "1", "deadline")._value.get() == 1


def test_cancelled_request_is_skipped(graph: Graph) -> None:
    hold = threading.Event()
    batcher, slow, _ = make(graph, BatchPolicy(max_batch_size=8, concurrency=1), hold)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit({"image": images(1, 0)}))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit({"image": images(2, 1)}))
        kept = asyncio.create_task(batcher.submit({"image": images(1, 2)}))
        await asyncio.sleep(0.01)
        gone.cancel()
        hold.set()
        await asyncio.gather(first, kept)

    asyncio.run(main())
    assert slow.batch_sizes == [1, 1]


def test_different_shapes_are_not_stacked(graph: Graph) -> None:
    hold = threading.Event()
    batcher, slow, _ = make(graph, BatchPolicy(max_batch_size=8, concurrency=1), hold)

    class TwoShapes(SlowGraph):
        def run(self, feeds, output_names=None):
            self.hold.wait(5)
            self.batch_sizes.append(feeds["image"].shape)
            return [feeds["image"][:, :1, 0, 0]]

    shapes = TwoShapes(graph, hold)
    batcher.graph = shapes  # type: ignore[assignment]

    async def main() -> None:
        a = [
            asyncio.create_task(batcher.submit({"image": np.zeros((1, 1, 28, 28), np.float32)}))
            for _ in range(3)
        ]
        b = [
            asyncio.create_task(batcher.submit({"image": np.zeros((1, 1, 14, 14), np.float32)}))
            for _ in range(2)
        ]
        await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(*a, *b)

    asyncio.run(main())
    assert sorted((s[0], s[2]) for s in shapes.batch_sizes) == [(2, 14), (3, 28)]
    assert not slow.batch_sizes


class ThreadRecordingGraph(SlowGraph):
    """Records which thread ran each call, and can take longer than the graph itself."""

    def __init__(self, graph: Graph, extra_s: float = 0.0) -> None:
        super().__init__(graph)
        self.threads: list[int] = []
        self.extra_s = extra_s

    def run(self, feeds, output_names=None):
        self.threads.append(threading.get_ident())
        if self.extra_s:
            time.sleep(self.extra_s)
        return super().run(feeds, output_names)


def test_a_lone_request_of_a_cheap_model_runs_on_the_event_loop(graph: Graph) -> None:
    recording = ThreadRecordingGraph(graph)
    metrics = Metrics()
    policy = BatchPolicy(max_batch_size=64, inline_max_s=0.05)
    batcher = Batcher(recording, policy, ThreadPoolExecutor(2), metrics, ("m", "1"))  # type: ignore[arg-type]
    x = images(2, seed=1)

    async def main() -> tuple[int, list[list[np.ndarray]]]:
        return threading.get_ident(), [await batcher.submit({"image": x}) for _ in range(3)]

    loop_thread, answers = asyncio.run(main())
    # the first call measures the graph on an inference thread; the next ones stay on the loop
    assert recording.threads[0] != loop_thread
    assert recording.threads[1:] == [loop_thread, loop_thread]
    expected = graph.run({"image": x})
    for answer in answers:
        assert all(np.allclose(a, e) for a, e in zip(answer, expected, strict=True))
    assert batcher.stats.inference_count == 6  # counted like any batch
    assert metrics.inference_count.labels("m", "1")._value.get() == 6


def test_concurrent_requests_still_batch_with_the_inline_path_on(graph: Graph) -> None:
    recording = ThreadRecordingGraph(graph)
    policy = BatchPolicy(max_batch_size=64, max_queue_delay_s=0.02, inline_max_s=0.05)
    metrics = Metrics()
    batcher = Batcher(recording, policy, ThreadPoolExecutor(2), metrics, ("m", "1"))  # type: ignore[arg-type]

    async def main() -> int:
        await batcher.submit({"image": images(1, seed=0)})  # measured
        await batcher.submit({"image": images(1, seed=0)})  # alone: inline
        # 16 at once, as a server that has read 16 requests starts them: the first waits two
        # turns of the loop for company, finds it, and they all batch off the loop
        await asyncio.gather(*(batcher.submit({"image": images(1, seed=i)}) for i in range(16)))
        metrics.requests_in_flight = 2  # another request in flight (the transports count them)
        await batcher.submit({"image": images(1, seed=0)})  # not alone: no inline attempt
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert recording.threads[1] == loop_thread
    assert loop_thread not in recording.threads[2:] and max(recording.batch_sizes[2:]) > 1
    assert sum(recording.batch_sizes) == 19


def test_a_slow_model_never_runs_on_the_event_loop(graph: Graph) -> None:
    recording = ThreadRecordingGraph(graph, extra_s=0.01)
    policy = BatchPolicy(max_batch_size=64, inline_max_s=0.001)
    batcher = Batcher(recording, policy, ThreadPoolExecutor(2), Metrics(), ("m", "1"))  # type: ignore[arg-type]

    async def main() -> int:
        for _ in range(3):
            await batcher.submit({"image": images(1, seed=0)})
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert loop_thread not in recording.threads


class OverlapGraph(SlowGraph):
    """Records each call's thread and the most calls that ran at once; a call of a batch
    `held_from` items or bigger waits for `hold`."""

    def __init__(self, graph: Graph, hold: threading.Event, held_from: int = 1) -> None:
        super().__init__(graph)
        self.gate = hold
        self.held_from = held_from
        self.threads: list[int] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def run(self, feeds, output_names=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if feeds["image"].shape[0] >= self.held_from:
                self.gate.wait(5)
            self.threads.append(threading.get_ident())
            return super().run(feeds, output_names)
        finally:
            with self.lock:
                self.running -= 1


def pipelined(graph, policy: BatchPolicy, executor_threads: int = 2) -> tuple[Batcher, Metrics]:
    metrics = Metrics()
    batcher = Batcher(graph, policy, ThreadPoolExecutor(executor_threads), metrics, ("m", "1"))
    return batcher, metrics


def test_pipelined_batches_start_at_half_the_requests_in_flight(graph: Graph) -> None:
    """Sixteen requests read in one turn of the loop, sixteen in flight: the batch starts from
    the eighth request's submit and the next from the sixteenth's, where the classic batcher
    takes all sixteen at the end of the turn, and a configured queue delay is kept (the batch
    waits for company as configured). Every request gets its own answer each way."""
    inputs = [images(1, seed=i) for i in range(16)]
    for pipeline, delay_s, expected in (
        (True, 0.0, [8, 8]),
        (False, 0.0, [16]),
        (True, 0.02, [16]),
    ):
        slow = SlowGraph(graph)
        policy = BatchPolicy(max_batch_size=64, max_queue_delay_s=delay_s, pipeline=pipeline)
        batcher, metrics = pipelined(slow, policy)
        metrics.requests_in_flight = 16

        async def main(batcher: Batcher = batcher) -> list[list[np.ndarray]]:
            return await asyncio.gather(*(batcher.submit({"image": x}) for x in inputs))

        results = asyncio.run(main())
        assert slow.batch_sizes == expected
        for x, (logits, probabilities) in zip(inputs, results, strict=True):
            want = graph.run({"image": x})
            np.testing.assert_allclose(logits, want[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(probabilities, want[1], rtol=1e-5, atol=1e-6)


def test_pipelined_big_batches_run_in_line_on_one_thread(graph: Graph) -> None:
    """Batches of 4 or more wait in line behind the running one, even with two runs allowed,
    and the thread that ran one runs the next."""
    hold = threading.Event()
    recording = OverlapGraph(graph, hold)
    batcher, metrics = pipelined(
        recording, BatchPolicy(max_batch_size=4, concurrency=2, pipeline=True), executor_threads=4
    )
    metrics.requests_in_flight = 12

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(12)]
        await asyncio.sleep(0.05)
        assert recording.running == 1  # one batch held, two waiting in line
        hold.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert recording.batch_sizes == [4, 4, 4]
    assert recording.most == 1
    assert len(set(recording.threads)) == 1


def test_pipelined_small_batches_run_beside_the_line(graph: Graph) -> None:
    """A batch under 4 items that finds the line busy runs beside it (up to `concurrency`)."""
    hold = threading.Event()
    recording = OverlapGraph(graph, hold, held_from=4)
    batcher, _ = pipelined(recording, BatchPolicy(max_batch_size=64, concurrency=2, pipeline=True))

    async def main() -> None:
        big = asyncio.create_task(batcher.submit({"image": images(4, 0)}))
        await asyncio.sleep(0.02)  # the big batch is running, held
        small = await asyncio.wait_for(batcher.submit({"image": images(1, 1)}), 2)
        np.testing.assert_allclose(small[0], graph.run({"image": images(1, 1)})[0], rtol=1e-5)
        assert not big.done()
        hold.set()
        await big

    asyncio.run(main())
    assert recording.batch_sizes == [1, 4]
    assert recording.most == 2


def test_pipelined_failure_reaches_its_batch_only_and_the_line_goes_on(graph: Graph) -> None:
    class FailsOnce(SlowGraph):
        def run(self, feeds, output_names=None):
            if not self.batch_sizes:
                self.batch_sizes.append(0)
                raise RuntimeError("onnxruntime says no")
            return super().run(feeds, output_names)

    failing = FailsOnce(graph)
    batcher, metrics = pipelined(failing, BatchPolicy(max_batch_size=4, pipeline=True))
    metrics.requests_in_flight = 8

    async def main() -> list[list[np.ndarray] | BaseException]:
        return await asyncio.gather(
            *(batcher.submit({"image": images(1, i)}) for i in range(8)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert [isinstance(r, RuntimeError) for r in results] == [True] * 4 + [False] * 4
    assert failing.batch_sizes == [0, 4]


def test_pipelined_batches_run_after_the_executor_is_shut_down(graph: Graph) -> None:
    """While a server stops, a batch still queued runs on the thread that starts it."""
    batcher, _ = pipelined(SlowGraph(graph), BatchPolicy(max_batch_size=8, pipeline=True))
    batcher.executor.shutdown()

    async def main() -> list[np.ndarray]:
        answer = await asyncio.wait_for(batcher.submit({"image": images(2, 0)}), 2)
        await batcher.close()
        return answer

    answer = asyncio.run(main())
    np.testing.assert_allclose(answer[0], graph.run({"image": images(2, 0)})[0], rtol=1e-5)


def test_pipelined_requests_that_trickle_in_wait_for_a_free_runner(graph: Graph) -> None:
    """Where nothing starts early (requests arrive one by one, as gRPC's server hands them
    over), the batches taken at the end of the loop's turn leave the stacked slots alone: what
    queues while the graph's batch runs goes together, as with pipelining off."""
    hold = threading.Event()
    slow = SlowGraph(graph, hold)
    batcher, _ = pipelined(slow, BatchPolicy(max_batch_size=64, concurrency=1, pipeline=True))

    async def main() -> None:
        first = asyncio.create_task(batcher.submit({"image": images(1, 0)}))
        await asyncio.sleep(0.02)  # running, held
        rest = [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(1, 5)]
        await asyncio.sleep(0.02)
        rest += [asyncio.create_task(batcher.submit({"image": images(1, i)})) for i in range(5, 9)]
        await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert slow.batch_sizes == [1, 8]
