"""The fault suite's in-process service: the real app on a tiny classifier, admin endpoints on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fault_tools import ADMIN

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def served(models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(models_dir=models_dir, access_log=False, admin_api_key=ADMIN)
    with TestClient(create_app(settings)) as client:
        yield client
