"""Image generations sent at once through the real app share denoiser calls (step batching) and
answer exactly what each would answer alone; the metrics say how many shared each call."""

from __future__ import annotations

from collections.abc import Iterator
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
    with client_for(tmp_path, max_step_delay_ms=50.0) as client:
        yield client


def metric(text: str, name: str) -> float:
    return model_metric(text, name, "diffusion-test")
