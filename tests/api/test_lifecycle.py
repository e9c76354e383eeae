"""Model lifecycle and access control: repository extension, hot reload, polling, API keys."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers.live_server import live_server
from helpers.onnx_builders import write_classifier

from service.app import create_app
from service.settings import Settings

ADMIN = "admin-key-0123456789"
USER = "user-key-0123456789ab"
PIXELS = {"pixels": [[0.0] * 28] * 28}


def client_for(root: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(models_dir=root, access_log=False, **settings)))  # type: ignore[arg-type]


def admin(client: TestClient, path: str, **kwargs: object) -> httpx.Response:
    return client.post(path, headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs)  # type: ignore[arg-type]


def test_repository_endpoints_are_off_without_an_admin_key(client: TestClient) -> None:
    response = client.post("/v2/repository/index")
    assert response.status_code == 403
    assert "SEEDSERVE_ADMIN_API_KEY" in response.json()["error"]


def test_keys_are_required_and_checked(models_dir: Path) -> None:
    with client_for(models_dir, api_key=USER, admin_api_key=ADMIN) as client:
        assert client.post("/v1/models/linear-test/classify", json=PIXELS).status_code == 401
        bad = {"Authorization": "Bearer wrong-key-000000000"}
        assert (
            client.post("/v1/models/linear-test/classify", json=PIXELS, headers=bad).status_code
            == 401
        )
        good = {"Authorization": f"Bearer {USER}"}
        assert (
            client.post("/v1/models/linear-test/classify", json=PIXELS, headers=good).status_code
            == 200
        )
        assert client.get("/v2/models/linear-test", headers=good).status_code == 200
        assert client.get("/v1/models").status_code == 401
        # health, server metadata and metrics stay open for probes and scrapers
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").status_code == 200
        assert client.get("/metrics").status_code == 200
        # the user key does not administer; the admin key does
        assert client.post("/v2/repository/index", headers=good).status_code == 401
        assert admin(client, "/v2/repository/index").status_code == 200


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        Settings(api_key="short")  # type: ignore[arg-type]


def test_index_load_unload(models_dir: Path) -> None:
    with client_for(models_dir, admin_api_key=ADMIN) as client:
        assert admin(client, "/v2/repository/index").json() == [
            {"name": "linear-test", "version": "1", "state": "READY", "reason": None}
        ]
        assert admin(client, "/v2/repository/models/linear-test/unload").status_code == 200
        assert client.get("/v2/models/linear-test/ready").status_code == 404
        (entry,) = admin(client, "/v2/repository/index").json()
        assert entry["state"] == "UNAVAILABLE"
        assert admin(client, "/v2/repository/index", json={"ready": True}).json() == []
        assert admin(client, "/v2/repository/models/linear-test/load").status_code == 200
        assert client.get("/v2/models/linear-test/ready").status_code == 200
        assert admin(client, "/v2/repository/models/nope/load").status_code == 404
        assert admin(client, "/v2/repository/models/nope/unload").status_code == 404
        assert admin(client, "/v2/repository/models/..%2Fetc/load").status_code == 404


def test_reload_picks_up_a_new_version_and_rejects_a_broken_one(models_dir: Path) -> None:
    with client_for(models_dir, admin_api_key=ADMIN) as client:
        write_classifier(models_dir, "linear-test", version=2, seed=5)
        assert admin(client, "/v2/repository/models/linear-test/load").status_code == 200
        answer = client.post("/v1/models/linear-test/classify", json=PIXELS).json()
        assert answer["model_version"] == "2"
        (models_dir / "linear-test" / "3").mkdir()
        (models_dir / "linear-test" / "3" / "model.onnx").write_bytes(b"corrupt")
        response = admin(client, "/v2/repository/models/linear-test/load")
        assert response.status_code == 400
        assert "model.onnx" in response.json()["error"]
        answer = client.post("/v1/models/linear-test/classify", json=PIXELS).json()
        assert answer["model_version"] == "2"  # the old version keeps serving
        assert client.get("/v2/models/linear-test/ready").status_code == 200


def test_no_request_fails_during_reloads(models_dir: Path) -> None:
    """Clients hammer the model while it is reloaded again and again: every answer is a 200."""
    with client_for(models_dir, admin_api_key=ADMIN) as client:
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(
                    client.post("/v1/models/linear-test/classify", json=PIXELS).status_code
                )

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for version in range(2, 6):
            write_classifier(models_dir, "linear-test", version=version, seed=version)
            assert admin(client, "/v2/repository/models/linear-test/load").status_code == 200
            seen = len(statuses)
            deadline = time.monotonic() + 10
            while len(statuses) < seen + 10 and time.monotonic() < deadline:
                time.sleep(0.01)  # let traffic flow against the new version before the next swap
        stop.set()
        for thread in threads:
            thread.join()
        assert len(statuses) > 20
        assert set(statuses) == {200}


def test_polling_loads_new_versions_and_drops_removed_models(tmp_path: Path) -> None:
    write_classifier(tmp_path, "a")
    with live_server(tmp_path, env={"SEEDSERVE_POLL_INTERVAL_S": "0.2"}) as server:
        write_classifier(tmp_path, "b")
        write_classifier(tmp_path, "a", version=2, seed=2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready_b = httpx.get(f"{server.url}/v2/models/b/ready").status_code == 200
            meta = httpx.get(f"{server.url}/v2/models/a").json()
            if ready_b and meta["versions"] == ["2"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the poller did not load model b and version a/2")
        shutil.rmtree(tmp_path / "b")
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/v2/models/b/ready").status_code != 404:
            assert time.monotonic() < deadline, "the poller did not unload the removed model"
            time.sleep(0.2)
