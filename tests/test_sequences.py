"""Implicit sequence state: one sequence's steps in order, limits, idle expiry, several workers."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput, Overloaded
from service.scheduling.sequence_batcher import (
    FileStore,
    MemoryStore,
    SequenceId,
    SequenceLimits,
    SequenceStore,
    sequence_request,
)

KEY = "m/1"
ROOMY = SequenceLimits(max_sequences=8, max_state_bytes=1 << 20, idle_s=60)
MakeStore = Callable[..., SequenceStore]


@pytest.fixture(params=["memory", "file"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    def make(limits: SequenceLimits = ROOMY) -> SequenceStore:
        return MemoryStore(limits) if request.param == "memory" else FileStore(tmp_path, limits)

    return make


async def add(
    store: SequenceStore, sid: SequenceId, x: int, *, start: bool = False, end: bool = False
) -> int:
    """One step of a running sum (a state of 4 int64): returns the sum after the step."""
    async with store.session(KEY, sid, start, end) as slot:
        total = slot.state["sum"] if slot.state is not None else np.zeros(4, np.int64)
        slot.state = {"sum": total + x}
        return int(slot.state["sum"][0])


def test_running_sum_over_five_steps(make_store: MakeStore) -> None:
    store = make_store()

    async def main() -> list[int]:
        steps = [3, 5, -2, 10, 7]
        return [await add(store, 42, x, start=i == 0) for i, x in enumerate(steps)]

    assert asyncio.run(main()) == [3, 8, 6, 16, 23]
    assert store.live(KEY) == 1
    assert store.state_bytes(KEY) == 32


def test_interleaved_sequences_do_not_mix(make_store: MakeStore) -> None:
    store = make_store()

    async def main() -> list[int]:
        await add(store, 1, 100, start=True)
        await add(store, "1", 5, start=True)  # a string id is another sequence
        return [await add(store, 1, 1), await add(store, "1", 2), await add(store, 1, 10)]

    assert asyncio.run(main()) == [101, 7, 111]
    assert store.live(KEY) == 2


def test_unknown_id_without_start_is_refused(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(InvalidInput, match="sequence 9 is not live") as caught:
        asyncio.run(add(store, 9, 1))
    assert caught.value.param == "sequence_id"
    assert store.live(KEY) == 0


def test_start_twice_restarts(make_store: MakeStore) -> None:
    store = make_store()

    async def main() -> list[int]:
        return [
            await add(store, 7, 50, start=True),
            await add(store, 7, 1),
            await add(store, 7, 4, start=True),  # the old state is dropped
            await add(store, 7, 1),
        ]

    assert asyncio.run(main()) == [50, 51, 4, 5]
    assert store.live(KEY) == 1


def test_end_frees_the_sequence(make_store: MakeStore) -> None:
    store = make_store()

    async def main() -> int:
        await add(store, 3, 1, start=True)
        return await add(store, 3, 2, end=True)

    assert asyncio.run(main()) == 3
    assert store.live(KEY) == 0
    assert store.state_bytes(KEY) == 0
    with pytest.raises(InvalidInput):
        asyncio.run(add(store, 3, 1))


def test_count_limit_then_room_after_an_end(make_store: MakeStore) -> None:
    store = make_store(SequenceLimits(max_sequences=2, max_state_bytes=1 << 20, idle_s=60))

    async def main() -> None:
        await add(store, 1, 1, start=True)
        await add(store, 2, 1, start=True)
        with pytest.raises(Overloaded, match="model m/1 has 2 live sequences, its limit"):
            await add(store, 3, 1, start=True)
        assert await add(store, 1, 1, start=True) == 1  # a restart is no new sequence
        await add(store, 1, 1, end=True)
        assert await add(store, 3, 5, start=True) == 5

    asyncio.run(main())
    assert store.live(KEY) == 2


def test_byte_limit_keeps_the_previous_state(make_store: MakeStore) -> None:
    store = make_store(SequenceLimits(max_sequences=8, max_state_bytes=80, idle_s=60))

    async def grow(sid: int, n: int, start: bool = False) -> None:
        async with store.session(KEY, sid, start, False) as slot:
            slot.state = {"x": np.arange(n, dtype=np.int64)}  # 8 bytes each

    async def main() -> None:
        await grow(1, 4, start=True)  # 32 bytes
        await grow(2, 5, start=True)  # 72
        with pytest.raises(Overloaded, match="would hold 88 bytes, over its limit of 80"):
            await grow(2, 7)
        with pytest.raises(Overloaded):
            await grow(3, 2, start=True)  # 88: not created
        await grow(2, 6)  # 80: fits exactly
        async with store.session(KEY, 2, False, False) as slot:
            assert slot.state is not None
            assert slot.state["x"].tolist() == [0, 1, 2, 3, 4, 5]
            slot.state = slot.state

    asyncio.run(main())
    assert store.live(KEY) == 2
    assert store.state_bytes(KEY) == 80


def test_idle_sequences_are_freed(make_store: MakeStore) -> None:
    store = make_store(SequenceLimits(max_sequences=8, max_state_bytes=1 << 20, idle_s=0.2))

    async def main() -> None:
        await add(store, 1, 1, start=True)
        await add(store, 2, 1, start=True)
        await asyncio.sleep(0.3)
        assert await add(store, 2, 1, start=True) == 1  # restarted, so fresh
        assert await store.sweep() == 1  # sequence 1
        assert store.live(KEY) == 1
        with pytest.raises(InvalidInput, match=r"idled out after 0\.2 s"):
            await add(store, 1, 1)
        await asyncio.sleep(0.3)
        with pytest.raises(InvalidInput):  # refused on access, before any sweep
            await add(store, 2, 1)

    asyncio.run(main())
    assert store.live(KEY) == 0


def test_a_busy_sequence_is_not_swept(make_store: MakeStore) -> None:
    store = make_store(SequenceLimits(max_sequences=8, max_state_bytes=1 << 20, idle_s=0.1))

    async def main() -> int:
        await add(store, 1, 1, start=True)
        async with store.session(KEY, 1, False, False) as slot:
            await asyncio.sleep(0.3)
            assert await store.sweep() == 0
            assert slot.state is not None
            slot.state = {"sum": slot.state["sum"] + 1}
        return await add(store, 1, 1)

    assert asyncio.run(main()) == 3


def test_a_failing_step_leaves_the_state(make_store: MakeStore) -> None:
    store = make_store()

    async def fail(sid: int, start: bool) -> None:
        async with store.session(KEY, sid, start, False) as slot:
            slot.state = {"sum": np.full(4, 1000, np.int64)}
            raise RuntimeError("the model failed")

    async def main() -> int:
        await add(store, 1, 10, start=True)
        with pytest.raises(RuntimeError):
            await fail(1, start=False)
        with pytest.raises(RuntimeError):
            await fail(2, start=True)  # not created
        with pytest.raises(InvalidInput):
            await add(store, 2, 1)
        return await add(store, 1, 1)

    assert asyncio.run(main()) == 11
    assert store.live(KEY) == 1


def test_requests_of_one_sequence_run_one_at_a_time_in_order(make_store: MakeStore) -> None:
    store = make_store()
    events: list[str] = []

    async def step(i: int) -> None:
        async with store.session(KEY, 5, i == 0, False) as slot:
            events.append(f"in {i}")
            await asyncio.sleep(0.02)
            seen = slot.state["seen"] if slot.state is not None else np.zeros(0, np.int64)
            slot.state = {"seen": np.append(seen, i)}
            events.append(f"out {i}")

    async def main() -> list[int]:
        await asyncio.gather(*(step(i) for i in range(5)))
        async with store.session(KEY, 5, False, True) as slot:
            assert slot.state is not None
            return list(slot.state["seen"])

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert events == [f"{way} {i}" for i in range(5) for way in ("in", "out")]


def test_different_sequences_run_at_once(make_store: MakeStore) -> None:
    store = make_store()

    async def hold(sid: int) -> None:
        async with store.session(KEY, sid, True, False) as slot:
            await asyncio.sleep(0.2)
            slot.state = {}

    async def main() -> float:
        begin = time.perf_counter()
        await asyncio.gather(*(hold(i) for i in range(1, 5)))
        return time.perf_counter() - begin

    assert asyncio.run(main()) < 0.6


def test_drop_frees_a_model_version(make_store: MakeStore) -> None:
    store = make_store()

    async def main() -> None:
        await add(store, 1, 1, start=True)
        await store.drop(KEY)
        assert store.live(KEY) == 0
        with pytest.raises(InvalidInput):
            await add(store, 1, 1)

    asyncio.run(main())


def test_configure_sets_limits_per_model_version(make_store: MakeStore) -> None:
    store = make_store()
    store.configure(KEY, SequenceLimits(max_sequences=1, max_state_bytes=1 << 20, idle_s=60))

    async def main() -> None:
        await add(store, 1, 1, start=True)
        with pytest.raises(Overloaded):
            await add(store, 2, 1, start=True)
        async with store.session("other/1", 2, True, False) as slot:  # the default limits
            slot.state = {}

    asyncio.run(main())


def test_two_file_stores_continue_each_others_sequence(tmp_path: Path) -> None:
    first, second = FileStore(tmp_path, ROOMY), FileStore(tmp_path, ROOMY)

    async def main() -> list[int]:
        return [
            await add(first, "abc", 1, start=True),
            await add(second, "abc", 2),
            await add(first, "abc", 3),
            await add(second, "abc", 4, end=True),
        ]

    assert asyncio.run(main()) == [1, 3, 6, 10]
    assert first.live(KEY) == second.live(KEY) == 0


def worker(folder: Path, todo: Any, done: Any) -> None:
    """A server worker process: runs the steps it is handed on a FileStore."""
    store = FileStore(folder, ROOMY)
    while (job := todo.get()) is not None:
        kind, x, start = job
        if kind == "step":
            done.put(asyncio.run(add(store, 77, x, start=start)))
        else:  # kind "race": x steps of +1 as fast as possible, alongside the other worker

            async def race(n: int) -> None:
                await asyncio.gather(*(add(store, 77, 1) for _ in range(n)))

            asyncio.run(race(x))
            done.put(None)


def test_two_processes_share_a_sequence(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    todos = [context.Queue(), context.Queue()]
    workers = [context.Process(target=worker, args=(tmp_path, q, done)) for q in todos]
    for process in workers:
        process.start()
    try:
        sums = []
        for i, x in enumerate([4, 9, 16, 25, 36, 49]):  # alternate steps
            todos[i % 2].put(("step", x, i == 0))
            sums.append(done.get(timeout=60))
        assert sums == [4, 13, 29, 54, 90, 139]
        for q in todos:  # both at once: no step may be lost
            q.put(("race", 20, False))
        done.get(timeout=60), done.get(timeout=60)
        assert asyncio.run(add(FileStore(tmp_path, ROOMY), 77, 0)) == 139 + 40
    finally:
        for q in todos:
            q.put(None)
        for process in workers:
            process.join(timeout=30)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({}, (None, False, False)),
        ({"sequence_id": 0}, (None, False, False)),
        ({"sequence_id": 12, "sequence_start": True}, (12, True, False)),
        ({"sequence_id": "a", "sequence_end": True}, ("a", False, True)),
    ],
)
def test_sequence_request_reads_parameters(
    parameters: dict[str, Any], expected: tuple[Any, bool, bool]
) -> None:
    assert sequence_request(parameters) == expected


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"sequence_id": -1}, "sequence_id"),
        ({"sequence_id": True}, "sequence_id"),
        ({"sequence_id": 1.5}, "sequence_id"),
        ({"sequence_id": ""}, "sequence_id"),
        ({"sequence_id": "x" * 257}, "sequence_id"),
        ({"sequence_id": 2**64}, "sequence_id"),
        ({"sequence_start": True}, "sequence_id"),
        ({"sequence_id": 0, "sequence_end": True}, "sequence_id"),
        ({"sequence_id": 1, "sequence_start": "yes"}, "sequence_start"),
        ({"sequence_id": 1, "sequence_end": 1}, "sequence_end"),
    ],
)
def test_sequence_request_refuses_bad_parameters(parameters: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        sequence_request(parameters)
    assert caught.value.param == param
