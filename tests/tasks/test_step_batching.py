"""Step batching (service/scheduling/step_batcher.py): concurrent generations share denoiser calls, get their
own rows back, and draw the same images as when run alone; a lone one never waits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import Cancelled
from service.runtime import Graph
from service.scheduling.step_batcher import StepBatcher, step_timing
from service.settings import Settings
from service.tasks import imagegen

MODELS = Path(__file__).resolve().parents[2] / "models"


class Recorder:
    """run_rows for tests: out = 2 x + t per row, and a record of every call's rows."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[int] = []
        self.seconds = seconds

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        self.calls.append(len(feeds["x"]))
        time.sleep(self.seconds)
        return 2 * feeds["x"] + feeds["t"][:, None]


def step(rows: int, value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 3), value, np.float32), "t": np.arange(rows, dtype=np.float32)}


def run_jobs(batcher: StepBatcher, jobs: list[Callable[[], Any]]) -> list[Any]:
    def in_job(fn: Callable[[], Any]) -> Any:
        with batcher.job():
            return fn()

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(in_job, jobs))


def test_a_lone_step_runs_at_once_even_with_a_long_delay() -> None:
    recorder = Recorder()
    batcher = StepBatcher(recorder, max_rows=64, max_delay_s=30.0)
    started = time.perf_counter()
    with batcher.job():
        out = batcher.run(step(2, 1.0))
    assert time.perf_counter() - started < 1.0
    np.testing.assert_array_equal(out, 2 * step(2, 1.0)["x"] + np.array([[0.0], [1.0]]))
    assert recorder.calls == [2] and batcher.generations == 0


def test_concurrent_steps_share_calls_and_get_their_own_rows() -> None:
    recorder = Recorder(seconds=0.01)
    calls: list[tuple[int, int]] = []
    batcher = StepBatcher(recorder, 64, 30.0, on_call=lambda r, g: calls.append((r, g)))
    barrier = threading.Barrier(4)

    def loop(job: int) -> list[np.ndarray]:
        barrier.wait()  # all four are running before the first step
        return [batcher.run(step(job + 1, 10.0 * job + i)) for i in range(5)]

    results = run_jobs(batcher, [lambda j=j: loop(j) for j in range(4)])  # type: ignore[misc]
    for job, outs in enumerate(results):
        for i, out in enumerate(outs):
            expected = step(job + 1, 10.0 * job + i)
            np.testing.assert_array_equal(out, 2 * expected["x"] + expected["t"][:, None])
    # every generation waits for the others (the delay is 30 s): 5 calls of all 4 jobs' rows
    assert calls == [(10, 4)] * 5 and recorder.calls == [10] * 5


def test_max_rows_splits_a_call() -> None:
    recorder = Recorder()
    batcher = StepBatcher(recorder, max_rows=5, max_delay_s=30.0)
    barrier = threading.Barrier(3)

    def one(value: float) -> np.ndarray:
        barrier.wait()
        return batcher.run(step(2, value))

    outs = run_jobs(batcher, [lambda v=v: one(v) for v in (1.0, 2.0, 3.0)])  # type: ignore[misc]
    assert sorted(recorder.calls) == [2, 4]  # 2 + 2 fit in 5, the third goes alone
    for value, out in zip((1.0, 2.0, 3.0), outs, strict=True):
        np.testing.assert_array_equal(out[:, 0], [2 * value, 2 * value + 1])


def test_a_generation_that_does_not_come_back_holds_the_others_only_max_delay() -> None:
    recorder = Recorder()
    batcher = StepBatcher(recorder, max_rows=64, max_delay_s=0.05)
    release = threading.Event()

    def idle() -> None:
        release.wait(10)  # running (inside job()), never submitting a step

    def stepping() -> float:
        started = time.perf_counter()
        for _ in range(3):
            batcher.run(step(1, 1.0))
        release.set()
        return time.perf_counter() - started

    _, seconds = run_jobs(batcher, [idle, stepping])
    assert 0.15 <= seconds < 2.0  # three steps, each held the 50 ms delay, not longer
    assert recorder.calls == [1, 1, 1]


def test_an_error_reaches_every_step_of_the_call() -> None:
    def broken(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.01)
        raise RuntimeError("onnxruntime failed")

    batcher = StepBatcher(broken, 64, 30.0)
    barrier = threading.Barrier(2)

    def one() -> str:
        barrier.wait()
        try:
            batcher.run(step(1, 1.0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert run_jobs(batcher, [one, one]) == ["onnxruntime failed"] * 2
    assert batcher.generations == 0


# -- the shipped diffusion models, run as the service runs them --------------------------------


def load_model(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    model_dir = MODELS / name
    version = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    config = json.loads((model_dir / "config.json").read_text())
    files = {"model": "model.onnx", **config.get("graphs", {})}
    settings = Settings()
    sessions = {role: Graph(version / file, settings).session for role, file in files.items()}
    return config, sessions


REQUESTS: list[dict[str, Any]] = [
    {"labels": [3], "seed": 1, "steps": 6, "guidance": 3.0, "sampler": "ddim"},
    {"labels": [0, 7], "seed": 2, "steps": 4, "guidance": 1.0, "sampler": "ddim"},
    {"labels": [9], "seed": 3, "steps": 6, "guidance": 2.0, "sampler": "ddpm"},
    {"labels": [5, 5, 1], "seed": 4, "steps": 5, "guidance": 0.0, "sampler": "ddim"},
]


@pytest.mark.parametrize("name", ["diffusion-mnist", "latent-diffusion-mnist"])
def test_shipped_diffusion_draws_the_same_images_batched_as_alone(name: str) -> None:
    config, sessions = load_model(name)
    alone = [imagegen.generate(config, sessions, **r) for r in REQUESTS]

    run_rows = imagegen.denoiser_call(config, sessions)
    assert run_rows is not None
    calls: list[tuple[int, int]] = []

    def first_waits_for_all(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        # the first call holds until every generation runs, so the next steps meet
        while not calls and batcher.generations < len(REQUESTS):
            time.sleep(0.001)
        return run_rows(feeds)

    batcher = StepBatcher(
        first_waits_for_all, imagegen.DENOISER_ROWS_PER_CALL, 30.0, 1, lambda *c: calls.append(c)
    )

    def together(request: dict[str, Any]) -> np.ndarray:
        return imagegen.generate(config, sessions, **request, step_batcher=batcher)

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        batched = list(pool.map(together, REQUESTS))
    for one, other in zip(alone, batched, strict=True):
        assert one.shape == other.shape and one.dtype == np.uint8
        assert np.abs(one.astype(int) - other.astype(int)).max() <= 1
    assert max(g for _, g in calls) == len(REQUESTS)  # from the second step on
    assert sum(g for _, g in calls) == sum(r["steps"] for r in REQUESTS)
    assert batcher.generations == 0


def test_a_stopped_generation_leaves_the_batcher_at_once() -> None:
    config, sessions = load_model("diffusion-mnist")
    run_rows = imagegen.denoiser_call(config, sessions)
    assert run_rows is not None
    batcher = StepBatcher(run_rows, imagegen.DENOISER_ROWS_PER_CALL, 30.0)

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled("the client went away")

    with pytest.raises(Cancelled):
        imagegen.generate(
            config, sessions, 1, steps=8, on_step=stop_after_two, step_batcher=batcher
        )
    assert batcher.generations == 0  # nobody waits 30 s for it
    started = time.perf_counter()
    imagegen.generate(config, sessions, 1, steps=3, step_batcher=batcher)
    assert time.perf_counter() - started < 5.0


def test_step_timing_is_measured_from_the_calls() -> None:
    """A call that costs the same per row saves nothing when shared (the pixel U-Net on a
    CPU); one dominated by a fixed cost per call saves most of that cost at each step."""

    def per_row(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.001 * len(feeds["x"]))
        return feeds["x"]

    def per_call(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        time.sleep(0.004 + 0.0001 * len(feeds["x"]))
        return feeds["x"]

    alone, shared = step_timing(per_row, step(2, 1.0))
    assert 0.002 <= alone < 0.003 and abs(alone - shared) < 0.0005
    # alone 4.2 ms for 2 rows; shared, 5.6 ms for 16 = 0.7 ms a step
    alone, shared = step_timing(per_call, step(2, 1.0))
    assert 0.0042 <= alone < 0.0052 and 0.0007 <= shared < 0.0012
