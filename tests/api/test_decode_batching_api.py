"""Continuous batching through the API: concurrent completions share decode steps (the
`seedserve_decode_batch_size` histogram counts fewer steps than tokens), each still gets the
text it gets alone for its seed, and every slot is free afterwards."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_language_model
from helpers.scrape import model_metric

from service.app import create_app
from service.settings import Settings

TOKENS = 400  # long enough that requests started together overlap


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("batching") / "models"
    write_language_model(root, "lm-test")
    write_language_model(root, "kv-test", cache=True)
    with TestClient(create_app(Settings(models_dir=root, access_log=False))) as test_client:
        yield test_client


def scrape(client: TestClient, name: str, model: str) -> float:
    return model_metric(client.get("/metrics").text, name, model)


def body(model: str, i: int) -> dict[str, Any]:
    prompts = ["the", "a dog ran", "the cat sat on the mat ,"]
    return {"model": model, "prompt": prompts[i % 3], "max_tokens": TOKENS - 37 * i, "seed": i}


@pytest.mark.parametrize("model", ["lm-test", "kv-test"])
def test_concurrent_completions_share_decode_steps(client: TestClient, model: str) -> None:
    alone = [client.post("/v1/completions", json=body(model, i)).json() for i in range(4)]
    steps_before = scrape(client, "seedserve_decode_batch_size_count", model)
    tokens_before = scrape(client, "seedserve_generated_tokens_total", model)
    answers: dict[int, Any] = {}
    start = threading.Barrier(4)

    def send(i: int) -> None:
        start.wait()
        answers[i] = client.post("/v1/completions", json=body(model, i)).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i in range(4):
        assert answers[i]["choices"][0]["text"] == alone[i]["choices"][0]["text"]
    tokens = scrape(client, "seedserve_generated_tokens_total", model) - tokens_before
    steps = scrape(client, "seedserve_decode_batch_size_count", model) - steps_before
    assert tokens == sum(a["usage"]["completion_tokens"] for a in answers.values())
    assert steps < tokens - 4  # one step per token each, were they not batched
    assert scrape(client, "seedserve_generation_tasks_in_flight", model) == 0


def test_n_choices_are_one_batch(client: TestClient) -> None:
    steps_before = scrape(client, "seedserve_decode_batch_size_count", "lm-test")
    sizes_before = scrape(client, "seedserve_decode_batch_size_sum", "lm-test")
    answer = client.post(
        "/v1/completions", json={"model": "lm-test", "prompt": "the", "max_tokens": 9, "n": 5}
    ).json()
    assert [c["finish_reason"] for c in answer["choices"]] == ["length"] * 5
    # 8 steps (the 9th token of each is not fed back), all 5 sequences in each
    assert scrape(client, "seedserve_decode_batch_size_count", "lm-test") - steps_before == 8
    assert scrape(client, "seedserve_decode_batch_size_sum", "lm-test") - sizes_before == 40


def test_engine_is_stopped_with_the_model(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_language_model(root, "lm-test")
    app = create_app(Settings(models_dir=root, access_log=False))
    with TestClient(app) as test_client:
        done = test_client.post(
            "/v1/completions", json={"model": "lm-test", "prompt": "the", "max_tokens": 3}
        )
        assert done.status_code == 200
        engine = app.state.registry.get("lm-test").engine
        assert engine._thread is not None  # the scheduler waits for the next request
    assert engine._thread is None  # shutdown drained and stopped it
