"""Property-based fuzzing of every operation in the OpenAPI schema: no 5xx, and every response
matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from service.app import create_app
from service.settings import Settings


def test_every_operation_conforms(models_dir: Path) -> None:
    app = create_app(
        Settings(models_dir=models_dir, access_log=False, admin_api_key="admin-key-0123456789")
    )
    with TestClient(app):  # runs the lifespan: the models are loaded while schemathesis calls
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 10
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=30,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate()

            check()
