"""Big batches on a second session with more threads: made on the first big batch, chosen per
size class by measured time per item, small batches never on it; and on the shipped CNN the
wide session answers what the narrow one does."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.runtime import Graph
from service.scheduling.wide_batches import EXPLORE_EVERY, MIN_SIZE, WideBatches
from service.settings import Settings

MODELS = Path(__file__).resolve().parent.parent / "models"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """Takes `per_item` seconds of the fake clock per item; counts its calls by batch size."""

    def __init__(self, clock: Clock, per_item: float) -> None:
        self.clock = clock
        self.per_item = per_item
        self.sizes: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        size = len(feeds["x"])
        self.sizes.append(size)
        self.clock.now += self.per_item * size
        return [feeds["x"] * 2]


def batch(size: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(size, dtype=np.float32)}


def wide_batches(narrow_s: float, wide_s: float) -> tuple[WideBatches, FakeSession, FakeSession]:
    clock = Clock()
    narrow, wide = FakeSession(clock, narrow_s), FakeSession(clock, wide_s)
    runs = WideBatches(narrow, lambda: wide, "m", clock=clock)
    runs.run(batch(MIN_SIZE))  # the first big batch: made in a thread, narrow meanwhile
    deadline = time.monotonic() + 10
    while runs.wide is None:
        assert time.monotonic() < deadline, "the wide session was never made"
        time.sleep(0.001)
    return runs, narrow, wide


def test_small_batches_stay_on_the_narrow_session_and_make_nothing() -> None:
    clock = Clock()
    made: list[FakeSession] = []

    def make() -> FakeSession:
        made.append(FakeSession(clock, 0.1))
        return made[-1]

    runs = WideBatches(FakeSession(clock, 1.0), make, "m")
    for size in range(1, MIN_SIZE):
        assert runs.run(batch(size))[0].tolist() == (np.arange(size) * 2).tolist()
    assert made == [] and runs.wide is None


def test_the_faster_session_takes_the_big_batches_and_the_other_is_tried_again() -> None:
    runs, narrow, wide = wide_batches(narrow_s=1.0, wide_s=0.5)
    narrow.sizes.clear()
    for _ in range(4 * EXPLORE_EVERY):
        runs.run(batch(32))
    assert runs.choices() == {32: "wide"}
    assert narrow.sizes.count(32) == 1 + 4  # timed once, then once every EXPLORE_EVERY calls
    assert wide.sizes.count(32) == 4 * EXPLORE_EVERY - 5


def test_a_slower_wide_session_serves_only_its_tries() -> None:
    runs, _, wide = wide_batches(narrow_s=1.0, wide_s=1.5)
    for _ in range(4 * EXPLORE_EVERY):
        runs.run(batch(16))
    assert runs.choices() == {16: "narrow"}
    assert wide.sizes.count(16) == 1 + 4


def test_size_classes_choose_apart() -> None:
    """A session faster for big batches only (a fixed cost per call): each class its own."""
    clock = Clock()

    class FixedCost(FakeSession):
        def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            self.clock.now += 6.0  # then per item, less than narrow's
            return super().run(feeds)

    narrow, wide = FakeSession(clock, 1.0), FixedCost(clock, 0.5)
    runs = WideBatches(narrow, lambda: wide, "m", clock=clock)
    runs.wide = wide  # made already
    for _ in range(3 * EXPLORE_EVERY):
        runs.run(batch(4))  # narrow 4, wide 8 a call
        runs.run(batch(32))  # narrow 32, wide 22
    assert runs.choices() == {4: "narrow", 32: "wide"}


def test_a_failing_wide_session_leaves_the_narrow_one_serving() -> None:
    clock = Clock()
    narrow = FakeSession(clock, 1.0)

    def fail() -> FakeSession:
        raise MemoryError("no room")

    runs = WideBatches(narrow, fail, "m", clock=clock)
    for _ in range(3):
        runs.run(batch(8))
        time.sleep(0.01)
    assert runs.wide is None and narrow.sizes == [8, 8, 8]


def test_the_shipped_cnn_answers_the_same_on_two_threads() -> None:
    graph = Graph(MODELS / "cnn-mnist" / "1" / "model.onnx", Settings())
    wide = graph.with_threads(2)
    images = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    for narrow_out, wide_out in zip(
        graph.run({"image": images}), wide.run({"image": images}), strict=True
    ):
        np.testing.assert_allclose(narrow_out, wide_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_service_batches_on_the_wide_session_only_when_asked(
    tmp_path: Path, threads: int
) -> None:
    shutil.copytree(MODELS / "cnn-mnist", tmp_path / "cnn-mnist")
    settings = Settings(models_dir=tmp_path, access_log=False, wide_batch_threads=threads)
    images = np.random.default_rng(1).random((32, 1, 28, 28), dtype=np.float32)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [32, 1, 28, 28],
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    with TestClient(create_app(settings)) as client:
        model = client.app.state.registry.get("cnn-mnist")  # type: ignore[attr-defined]
        runs = model.batcher.graph
        answers = []
        for _ in range(3):
            response = client.post("/v2/models/cnn-mnist/infer", json=body)
            assert response.status_code == 200, response.text
            answers.append(np.array(response.json()["outputs"][0]["data"]))
            time.sleep(0.2)  # the wide session is made in the background
    expected = Graph(MODELS / "cnn-mnist" / "1" / "model.onnx", Settings()).run({"image": images})[
        1
    ]
    for answer in answers:
        np.testing.assert_allclose(answer, expected.ravel(), rtol=1e-5, atol=1e-6)
    if threads == 1:
        assert isinstance(runs, Graph)  # off: the batcher runs the graph itself
    else:
        assert isinstance(runs, WideBatches) and runs.wide is not None
