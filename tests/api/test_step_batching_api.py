"""Image generations sent at once through the real app share denoiser calls (step batching) and
answer exactly what each would answer alone; the metrics say how many shared each call."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_diffusion_generator
from helpers.scrape import model_metric

from service.app import create_app
from service.settings import Settings

GEN = "/v1/images/generations"
# 100 steps each (the whole schedule of the test model): long enough for four to overlap
BODIES = [
    {"model": "diffusion-test", "labels": [i, 9 - i], "seed": i, "steps": 100} for i in range(4)
]
LABELS = 'model="diffusion-test",version="1"'


def client_for(tmp_path: Path, **overrides: object) -> TestClient:
    write_diffusion_generator(tmp_path / "models", "diffusion-test")
    settings = Settings(models_dir=tmp_path / "models", access_log=False, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def gen(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(
        tmp_path,
        max_step_delay_ms=50.0,
        step_batching_min_saving_ms=-1000,
        step_batching_min_gain=-1000,
    ) as client:
        yield client


def metric(text: str, name: str) -> float:
    return model_metric(text, name, "diffusion-test")


def pngs(client: TestClient, body: dict) -> list[bytes]:
    response = client.post(GEN, json=body)
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


def test_concurrent_generations_share_steps_and_match_running_alone(gen: TestClient) -> None:
    alone = [pngs(gen, body) for body in BODIES]
    before = gen.get("/metrics").text
    with ThreadPoolExecutor(len(BODIES)) as pool:
        together = list(pool.map(lambda body: pngs(gen, body), BODIES))
    assert together == alone  # same PNG bytes: same pixels

    text = gen.get("/metrics").text
    name = "seedserve_step_batch_generations"
    calls = metric(text, f"{name}_count") - metric(before, f"{name}_count")
    generations = metric(text, f"{name}_sum") - metric(before, f"{name}_sum")
    assert generations == 4 * 100  # every step of every generation went through the batcher
    assert calls < generations  # and some calls carried several generations' steps
    assert metric(text, "seedserve_denoising_steps_total") == 8 * 100
    assert metric(text, "seedserve_generation_tasks_in_flight") == 0


def test_step_batching_off_runs_each_generation_alone(tmp_path: Path) -> None:
    with client_for(tmp_path, step_batching=False) as client:
        assert len(pngs(client, BODIES[0])) == 2
        text = client.get("/metrics").text
    assert metric(text, "seedserve_step_batch_generations_count") == 0
    assert metric(text, "seedserve_denoising_steps_total") == 100


def test_a_denoiser_that_gains_nothing_from_sharing_runs_each_step_alone(tmp_path: Path) -> None:
    """Where the load-time timing finds a smaller saving than SEEDSERVE_STEP_BATCHING_MIN_SAVING_MS
    (here an impossible second), steps run as they come: same images, no shared calls."""
    with client_for(
        tmp_path, step_batching_min_saving_ms=-1000, step_batching_min_gain=-1000
    ) as client:
        batched = pngs(client, BODIES[0])
    with client_for(tmp_path, step_batching_min_saving_ms=1000) as client:
        model = client.app.state.registry.get("diffusion-test")
        assert model.step_batcher is None and model.step_batching_saving_ms < 1000
        assert pngs(client, BODIES[0]) == batched
        text = client.get("/metrics").text
    assert metric(text, "seedserve_step_batch_generations_count") == 0
