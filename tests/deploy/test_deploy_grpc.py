"""gRPC as deployed, against a real server (`python -m service`) with the shipped digit classifier:
the Kubernetes readiness probe's health service answers SERVING, and deploy/ci/grpc_probe.py
(what scripts/deploy_check.sh runs through the image) passes, or fails where gRPC is absent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from deploy_support import ROOT, base_manifests, one, pod_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.live_server import Server, free_port, live_server
from helpers.shipped_models import copy_models

PROBE = ROOT / "deploy" / "ci" / "grpc_probe.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = copy_models(["cnn-mnist"], tmp_path_factory.mktemp("deploy-grpc") / "models")
    with live_server(root) as running:
        yield running


def health_status(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status)


def test_readiness_probe_asks_a_service_that_answers_serving(server: Server) -> None:
    (container,) = pod_spec(one(base_manifests(), "Deployment"))["containers"]
    probe = container["readinessProbe"]["grpc"]
    # an unknown service would fail the Check with NOT_FOUND: the kubelet would never see ready
    assert (
        health_status(server.grpc, probe.get("service", ""))
        == health_pb2.HealthCheckResponse.SERVING
    )


def run_probe(address: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE), address, url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_grpc_probe_passes_against_a_live_server(server: Server) -> None:
    result = run_probe(server.grpc, server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING for ''" in result.stdout
    assert "cnn-mnist" in result.stdout and "infer -> 7" in result.stdout, result.stdout


def test_grpc_probe_fails_where_grpc_is_absent(server: Server) -> None:
    result = run_probe(f"127.0.0.1:{free_port()}", server.url)  # nothing listens there
    assert result.returncode != 0
    assert "grpc probe:" in result.stderr and "UNAVAILABLE" in result.stderr, result.stderr
