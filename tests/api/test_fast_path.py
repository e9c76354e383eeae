"""The V2 infer route as the running app serves it (service/fastpath.py, its one implementation):
answers, errors, keys and metrics as every other route gives them."""

from __future__ import annotations

import dataclasses
import gc
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.fastpath import INFER_PATH
from service.settings import Settings

IMAGE = np.linspace(0, 1, 784, dtype=np.float32).reshape(1, 1, 28, 28)
BODY = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "data": IMAGE.ravel().tolist()}]}  # fmt: skip


def counted(client: TestClient, route: str, status: int) -> float:
    text = client.get("/metrics").text
    pattern = (
        r'seedserve_http_requests_total\{method="POST",route="'
        + re.escape(route)
        + rf'",status="{status}"\}} (\S+)'
    )
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/v2/models/m/infer", True),
        ("/v2/models/m/versions/3/infer", True),
        ("/v2/models/m/infer/", False),
        ("/v2/models/m/versions//infer", False),
        ("/v2/models/a/b/infer", False),
        ("/v2/models/m/ready", False),
    ],
)
def test_only_infer_paths_take_the_fast_path(path: str, matches: bool) -> None:
    assert bool(INFER_PATH.fullmatch(path)) is matches


def test_answers_and_metrics_match_the_documented_routes(client: TestClient) -> None:
    plain = client.post("/v2/models/linear-test/infer", json=BODY)
    versioned = client.post("/v2/models/linear-test/versions/1/infer", json=BODY)
    assert plain.status_code == versioned.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    assert len(plain.headers["x-request-id"]) == 32
    assert plain.json()["outputs"] == versioned.json()["outputs"]
    assert counted(client, "/v2/models/{model_name}/infer", 200) == 1
    assert counted(client, "/v2/models/{model_name}/versions/{model_version}/infer", 200) == 1
    missing = client.post("/v2/models/nope/infer", json=BODY)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert counted(client, "/v2/models/{model_name}/infer", 404) == 1
    # other methods on the path are FastAPI's: 405, not an inference
    assert client.get("/v2/models/linear-test/infer").status_code == 405


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
    original = dataplane.infer_request

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(dataplane, "infer_request", broken)
    answer = client.post("/v2/models/linear-test/infer", json=BODY)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal server error"}
    assert "injected" not in answer.text  # internals stay in the log
    monkeypatch.setattr(dataplane, "infer_request", original)
    assert client.post("/v2/models/linear-test/infer", json=BODY).status_code == 200


def test_api_key_is_checked_on_the_fast_path(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, access_log=False, api_key="k" * 24)
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v2/models/linear-test/infer", json=BODY)
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        good = {"Authorization": "Bearer " + "k" * 24}
        assert client.post("/v2/models/linear-test/infer", json=BODY, headers=good).is_success


def test_overloaded_answers_carry_retry_after(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, access_log=False)
    with TestClient(create_app(settings)) as client:
        app = client.app
        model = app.state.registry.get("linear-test", None)  # type: ignore[attr-defined]
        batcher = model.batcher
        assert batcher is not None, "linear-test batches by default"
        batcher.policy = dataclasses.replace(batcher.policy, max_queue_size=0)
        answer = client.post("/v2/models/linear-test/infer", json=BODY)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert "queued" in answer.json()["error"]


def test_start_up_objects_are_frozen_while_serving_and_released_after(models_dir: Path) -> None:
    before = gc.get_freeze_count()
    with TestClient(create_app(Settings(models_dir=models_dir, access_log=False))) as client:
        assert gc.get_freeze_count() > before  # the loaded model among them
        assert client.post("/v2/models/linear-test/infer", json=BODY).status_code == 200
    assert gc.get_freeze_count() == 0
    off = Settings(models_dir=models_dir, access_log=False, gc_freeze=False)
    with TestClient(create_app(off)):
        assert gc.get_freeze_count() == 0
