"""Model files deleted from the repository while the service serves them.

What must happen: the session already in memory keeps answering, identically; the repository
index says the files are gone; a reload is refused with a clear error instead of dropping the
working version; with polling, a deleted version folder does not stop the poller (it loads the
next good version), and a deleted model is unloaded cleanly: every request gets its answer or a
clear 404, never a 5xx.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from fault_tools import ADMIN, ADMIN_HEADERS, probabilities, traffic, v2_body, wait_until
from helpers.live_server import live_server
from helpers.onnx_builders import write_classifier

INFER = "/v2/models/linear-test/infer"


def index(client: httpx.Client | TestClient) -> dict[str, dict]:
    entries = client.post("/v2/repository/index", headers=ADMIN_HEADERS).json()
    return {e["name"]: e for e in entries}


@pytest.mark.parametrize("deleted", ["graph file", "version folder", "model folder"])
def test_deleted_files_keep_serving_from_memory(
    served: TestClient, models_dir: Path, deleted: str
) -> None:
    model_dir = models_dir / "linear-test"
    before = probabilities(served.post(INFER, json=v2_body()))
    with traffic(lambda: served.post(INFER, json=v2_body())) as record:
        if deleted == "graph file":
            (model_dir / "1" / "model.onnx").unlink()
        else:
            shutil.rmtree(model_dir / "1" if deleted == "version folder" else model_dir)
        record.wait_for(10)
    assert record.errors == [] and set(record.statuses) == {200}
    assert all(np.array_equal(probabilities(r), before) for r in record.bodies)
    entry = index(served)["linear-test"]
    assert entry["state"] == "READY"
    assert "model.onnx no longer in the repository" in entry["reason"]
    reload = served.post("/v2/repository/models/linear-test/load", headers=ADMIN_HEADERS)
    words = {
        "graph file": "has no model.onnx",
        "version folder": "has no version folder",
        "model folder": "is not in the repository",
    }[deleted]
    assert reload.status_code in (400, 404) and words in reload.json()["error"], reload.text
    np.testing.assert_array_equal(probabilities(served.post(INFER, json=v2_body())), before)
    # the operator decides when it goes: unload, then a clear 404
    assert (
        served.post("/v2/repository/models/linear-test/unload", headers=ADMIN_HEADERS).status_code
        == 200
    )
    gone = served.post(INFER, json=v2_body())
    assert gone.status_code == 404 and "linear-test" in gone.json()["error"]


def test_poller_survives_deletions(tmp_path: Path) -> None:
    write_classifier(tmp_path, "linear-test")
    write_classifier(tmp_path, "doomed", seed=2)
    env = {"SEEDSERVE_POLL_INTERVAL_S": "0.1", "SEEDSERVE_ADMIN_API_KEY": ADMIN}
    with live_server(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as client:
        before = probabilities(client.post(INFER, json=v2_body()))

        def send() -> httpx.Response:
            with httpx.Client(base_url=server.url) as own:  # one connection per client thread
                return own.post(INFER, json=v2_body())

        with traffic(send) as record:
            shutil.rmtree(tmp_path / "linear-test" / "1")  # the poller's reload must fail
            record.wait_for(10)
            time.sleep(0.5)  # several poll rounds: the loaded version still answers
            record.wait_for(10)
        reason = index(client)["linear-test"]["reason"]
        assert "model.onnx no longer in the repository" in reason
        assert record.errors == [] and set(record.statuses) == {200}
        assert all(np.array_equal(probabilities(r), before) for r in record.bodies)

        # the poller is still alive: a new good version is picked up
        write_classifier(tmp_path, "linear-test", version=2, seed=5)
        wait_until(
            lambda: client.post(INFER, json=v2_body()).json().get("model_version") == "2",
            "the poller to load version 2",
        )

        # a model folder removed under traffic: answers until unloaded, then a clear 404
        def send_doomed() -> httpx.Response:
            return httpx.post(f"{server.url}/v2/models/doomed/infer", json=v2_body())

        with traffic(send_doomed) as record:
            shutil.rmtree(tmp_path / "doomed")
            wait_until(lambda: 404 in record.statuses, "the poller to unload the removed model")
            record.wait_for(3)
        assert record.errors == [] and set(record.statuses) <= {200, 404}
        gone = client.post("/v2/models/doomed/infer", json=v2_body())
        assert gone.status_code == 404 and "doomed" in gone.json()["error"]
        assert "doomed" not in index(client)
        assert client.get("/v2/health/ready").status_code == 200
    assert server.returncode == 0
    log = server.process.stdout.read().decode() if server.process.stdout else ""
    assert "has no version folder" in log  # the poller tried, was refused, and kept going
    assert "Traceback" not in log
