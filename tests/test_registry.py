"""Repository discovery, model loading and execution-provider selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_classifier

from service.app import create_app
from service.errors import ModelLoadError, ModelNotFound
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from service.runtime import CPU, CUDA, choose_providers
from service.settings import Settings


def registry_for(root: Path) -> Registry:
    return Registry(Repository(root), Settings(models_dir=root), Metrics())


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("cpu", [CUDA, CPU], [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [CPU], [CPU]),
        ("cuda", [CPU], [CPU]),  # asked for, not there: fall back, don't refuse to serve
    ],
)
def test_provider_selection(requested: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ValueError):
        choose_providers("tpu", [CPU])


def test_highest_version_is_default_and_load_versions_respected(tmp_path: Path) -> None:
    write_classifier(tmp_path, "m", version=1, seed=1)
    write_classifier(tmp_path, "m", version=3, seed=3)
    registry = registry_for(tmp_path)
    registry.load("m")
    assert registry.get("m").version == 3
    with pytest.raises(ModelNotFound):
        registry.get("m", "1")  # only the newest is loaded by default
    registry.settings = Settings(models_dir=tmp_path, load_versions=2)
    registry.load("m")
    assert registry.get("m", "1").version == 1


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda d: (d / "1" / "model.onnx").write_bytes(b"garbage"), "model.onnx"),
        (lambda d: (d / "1" / "model.onnx").unlink(), "no model.onnx"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
        (
            lambda d: _edit(
                d, inputs=[{"name": "pixels", "datatype": "FP32", "dims": [1, 28, 28]}]
            ),
            "pixels",
        ),
        (
            lambda d: _edit(
                d, inputs=[{"name": "image", "datatype": "INT64", "dims": [1, 28, 28]}]
            ),
            "INT64",
        ),
        (lambda d: _edit(d, inputs=[{"name": "image", "datatype": "FP32", "dims": [784]}]), "axes"),
        (lambda d: _edit(d, task="astrology"), "task"),
        (lambda d: _edit(d, graphs={"x": "../../etc/passwd"}), "graphs"),
        (lambda d: _edit(d, name="other"), "does not match"),
    ],
)
def test_broken_model_is_reported_and_others_serve(tmp_path: Path, breakage, reason: str) -> None:
    write_classifier(tmp_path, "good")
    breakage(write_classifier(tmp_path, "broken"))
    with TestClient(create_app(Settings(models_dir=tmp_path, access_log=False))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/good/ready").status_code == 200
        response = client.get("/v2/models/broken/ready")
        assert response.status_code == 503
        assert reason in response.json()["error"]
        entry = {m["id"]: m for m in client.get("/v1/models").json()["data"]}["broken"]
        assert entry["ready"] is False and reason in entry["reason"]
        assert (
            'seedserve_model_ready{model="broken",provider="",version=""} 0.0'
            in client.get("/metrics").text
        )


def test_strict_readiness_waits_for_every_model(tmp_path: Path) -> None:
    write_classifier(tmp_path, "good")
    (write_classifier(tmp_path, "broken") / "1" / "model.onnx").write_bytes(b"x")
    settings = Settings(models_dir=tmp_path, strict_readiness=True, access_log=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/health/ready").status_code == 503


def test_empty_repository_is_not_ready(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(models_dir=tmp_path, access_log=False))) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503


@pytest.mark.parametrize("name", ["..", "../models", "a/b", "", ".hidden", "x" * 200, "a\\b"])
def test_names_cannot_leave_the_repository(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelNotFound):
        Repository(tmp_path).model_dir(name)


def test_only_onnx_graphs_load(tmp_path: Path) -> None:
    model_dir = write_classifier(tmp_path, "m")
    _edit(model_dir, graphs={"x": "weights.pkl"})
    with pytest.raises(ModelLoadError):
        registry_for(tmp_path).load("m")


def _edit(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_a_model_without_config_serves_as_a_tensor_model(tmp_path: Path) -> None:
    (write_classifier(tmp_path, "bare") / "config.json").unlink()
    with TestClient(create_app(Settings(models_dir=tmp_path, access_log=False))) as client:
        assert client.get("/v2/models/bare/ready").status_code == 200
        config = client.get("/v2/models/bare/config").json()
        assert config["max_batch_size"] == 32  # every tensor has a dynamic leading axis
        assert [i["name"] for i in config["input"]] == ["image"]
        tensor = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
        answer = client.post("/v2/models/bare/infer", json={"inputs": [tensor]})
        assert answer.status_code == 200, answer.text
        refused = client.post("/v1/models/bare/classify", json={"pixels": [[0.0] * 28] * 28})
        assert refused.status_code == 400 and "tensor model" in refused.json()["error"]
