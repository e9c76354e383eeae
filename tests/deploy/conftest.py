"""Fixtures of the deployment checks (their helpers are in deploy_support.py)."""

from __future__ import annotations

import pytest
from deploy_support import OVERLAYS, Manifest, RouteTable, base_manifests, rendered


@pytest.fixture(params=["base", *OVERLAYS])
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    """Each deployable variant: the base read directly, then every overlay as kustomize renders
    it (kubectl needed)."""
    return base_manifests() if request.param == "base" else rendered(request.param)


@pytest.fixture(scope="session")
def get_routes() -> RouteTable:
    """The app's route table (create_app only: nothing is loaded)."""
    from service.app import create_app

    return RouteTable(create_app())
