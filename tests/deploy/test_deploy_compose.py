"""docker-compose.yml: real settings, loopback-only ports, the Kubernetes pod's hardening, pinned
images, and `docker compose config` accepts it (with CI's override too)."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import yaml
from deploy_support import ROOT, tool

from service.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
CI_OVERRIDE = ROOT / "deploy" / "ci" / "compose.ci.yml"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_seedserve_is_configured_by_real_settings() -> None:
    environment = services()["seedserve"]["environment"]
    unknown = [
        k for k in environment if k.removeprefix("SEEDSERVE_").lower() not in Settings.model_fields
    ]
    assert not unknown, f"not settings of service/settings.py: {unknown}"


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_seedserve_publishes_the_image_rest_and_grpc_ports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    environment = services()["seedserve"]["environment"]
    listening = [
        environment.get(name) or re.findall(rf"\b{name}=(\d+)", dockerfile)[-1]
        for name in ("SEEDSERVE_PORT", "SEEDSERVE_GRPC_PORT")
    ]
    published = [port.rsplit(":", 1)[1] for port in services()["seedserve"]["ports"]]
    assert published == listening, f"publishes {published}, the server listens on {listening}"


def test_seedserve_is_locked_down_like_the_pod() -> None:
    seedserve = services()["seedserve"]
    assert seedserve["read_only"] is True and "/tmp" in seedserve["tmpfs"]
    assert seedserve["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in seedserve["security_opt"]
    assert "user" not in seedserve, "the image's non-root user"


def test_stop_waits_for_the_drain() -> None:
    seedserve = services()["seedserve"]
    grace = seedserve["stop_grace_period"]
    assert grace.endswith("s"), f"stop_grace_period {grace!r}: give it in seconds"
    drain = seedserve["environment"].get(
        "SEEDSERVE_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default
    )
    assert int(grace[:-1]) > int(drain), "docker would SIGKILL the server before its drain ends"


def test_images_are_pinned() -> None:
    for name, service in services().items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_prometheus_waits_for_a_healthy_server() -> None:
    depends = services()["prometheus"]["depends_on"]
    assert depends["seedserve"]["condition"] == "service_healthy", "uses the image's HEALTHCHECK"


def test_ci_override_changes_only_networking_and_the_prometheus_image() -> None:
    override = yaml.safe_load(
        CI_OVERRIDE.read_text().replace("!reset", "").replace("!override", "")
    )
    allowed = {
        "build",
        "pull_policy",
        "network_mode",
        "ports",
        "environment",
        "image",
        "command",
        "volumes",
    }
    for name, service in override["services"].items():
        assert set(service) <= allowed, f"{name}: the CI override changes {set(service) - allowed}"
        assert service["network_mode"] == "host"
    environment = override["services"]["seedserve"]["environment"]
    assert environment["SEEDSERVE_HOST"] == "127.0.0.1", "CI listens on loopback only"
    # on the host's network, the image's fixed ports would collide with whatever holds them
    assert {"SEEDSERVE_PORT", "SEEDSERVE_GRPC_PORT"} <= set(environment)


def test_docker_compose_config_accepts_it() -> None:
    compose = tool("docker-compose")
    env = {
        **os.environ,
        "SEEDSERVE_CI_PORT": "1",
        "SEEDSERVE_GRPC_CI_PORT": "3",
        "PROMETHEUS_CI_PORT": "2",
        "DEPLOY_CI_CONFIG": "/tmp",
    }
    for files in ([COMPOSE], [COMPOSE, CI_OVERRIDE]):
        args = [a for f in files for a in ("-f", str(f))]
        result = subprocess.run(
            [compose, *args, "config", "-q"], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
