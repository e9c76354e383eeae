"""Prometheus: the config and alert rules pass promtool, every alert has a unit test, every
series a rule reads is one the service exports, and the live /metrics passes
`promtool check metrics`."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import ROOT, exported_metrics, tool

PROMETHEUS = ROOT / "deploy" / "prometheus"
# Issue 6's alerts, plus a down target.
REQUIRED_ALERTS = {
    "SeedserveHighErrorRate", "SeedserveHighP99Latency", "SeedserveModelNotReady",
    "SeedserveShedding", "SeedserveDown",
}  # fmt: skip


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_the_required_alerts_exist_with_severity_and_summary() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert set(alerts) >= REQUIRED_ALERTS, f"missing {REQUIRED_ALERTS - set(alerts)}"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "seedserve_model_ready == 0" in alerts["SeedserveModelNotReady"]["expr"]
    assert "rate(seedserve_inference_rejected_total" in alerts["SeedserveShedding"]["expr"]
    assert "> 0" in alerts["SeedserveShedding"]["expr"]


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]  # a test that expects the alert to fire, not only to stay quiet
    }
    untested = {rule["alert"] for rule in rules()} - tested
    assert not untested, f"alerts without a firing unit test: {untested}"


def test_rules_read_series_the_service_exports() -> None:
    known = exported_metrics()
    for rule in rules():
        used = set(re.findall(r"\bseedserve_[a-z_]+\b", rule["expr"]))
        assert used <= known, f"{rule['alert']}: unknown metrics {used - known}"


def test_compose_prometheus_scrapes_the_seedserve_service() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "seedserve"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"], f"{target}: no such compose service"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"SEEDSERVE_PORT={port}" in dockerfile, "the scrape port is not the image's port"
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).exists(), rule_file
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
    # the ServiceMonitor's job (the Service's name) is the job the alerts' up{} reads
    assert 'job="seedserve"' in {r["alert"]: r for r in rules()}["SeedserveDown"]["expr"]


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROMETHEUS)
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_metrics_on_live_metrics(models_dir: Path) -> None:
    from helpers.live_server import live_server

    promtool_path = tool("promtool")
    with (
        live_server(models_dir) as server,
        urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response,
    ):
        exposition = response.read().decode()
    assert "seedserve_models_loaded" in exposition
    result = subprocess.run(
        [promtool_path, "check", "metrics"], input=exposition, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
