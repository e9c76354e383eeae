"""Fixtures chain: repository folder -> settings -> app -> client (the lifespan runs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

# In-process apps serve no gRPC unless a test asks (port 8001 may be a running server's);
# tests/helpers/live_server.py gives each server it starts a free gRPC port.
os.environ.setdefault("SEEDSERVE_GRPC_PORT", "0")

from helpers.onnx_builders import write_classifier

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_classifier(root, "linear-test")
    return root


@pytest.fixture
def settings(models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, access_log=False, max_body_bytes=2 * 1024 * 1024)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client
