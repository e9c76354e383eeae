"""Continuous batching through the API: concurrent completions share decode steps (the
`seedserve_decode_batch_size` histogram counts fewer steps than tokens), each still gets the
text it gets alone for its seed, and every slot is free afterwards."""

from __future__ import annotations

from collections.abc import Iterator

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
