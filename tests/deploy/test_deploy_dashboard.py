"""The Grafana dashboard: its structure, its datasource, the metrics it plots; and, with
SEEDSERVE_PROMETHEUS_URL set (scripts/deploy_check.sh sets it while its Prometheus runs), every
query accepted by a live Prometheus."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import ROOT, exported_metrics

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "seedserve.json"
# What the dashboard must show (issue 6), by a word of each panel's title.
REQUIRED_PANELS = [
    "request rate", "error rate", "latency p50 / p99", "queue time", "batch size", "tokens/s",
    "images/s", "models loaded",
]  # fmt: skip
# Grafana's own variables, replaced as Grafana would before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def provisioned_datasource() -> dict[str, Any]:
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (datasource,) = provisioning["datasources"]
    return dict(datasource)


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and templating query, variables substituted."""
    board = dashboard()
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in board["panels"]
        for t in p["targets"]
    ]
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: only label_values(metric, label) is checked"
        found.append((f"variable {variable['name']}", match.group(1)))
    substituted = []
    for where, expr in found:
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        for variable in board["templating"]["list"]:
            expr = expr.replace(f"${variable['name']}", variable.get("allValue") or ".*")
        assert "$" not in expr, f"{where}: unknown variable in {expr}"
        substituted.append((where, expr))
    return substituted


def test_panels_are_complete_and_laid_out() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, f"{panel['title']} overflows"
        assert panel["targets"], f"{panel['title']} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    titles = " | ".join(p["title"].lower() for p in panels)
    missing = [word for word in REQUIRED_PANELS if word not in titles]
    assert not missing, f"no panel for {missing}"


def test_every_query_uses_the_provisioned_datasource() -> None:
    uid = provisioned_datasource()["uid"]
    board = dashboard()
    users = [(p["title"], p["datasource"]) for p in board["panels"]]
    users += [
        (f"{p['title']} {t['refId']}", t["datasource"])
        for p in board["panels"]
        for t in p["targets"]
    ]
    users += [(v["name"], v["datasource"]) for v in board["templating"]["list"]]
    wrong = [(where, ds) for where, ds in users if ds != {"type": "prometheus", "uid": uid}]
    assert not wrong, f"not the provisioned datasource {uid!r}: {wrong}"


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    datasource = provisioned_datasource()
    host, port = urllib.parse.urlsplit(datasource["url"]).netloc.split(":")
    assert host in compose["services"], f"datasource url names no compose service: {host}"
    assert f"--web.listen-address=:{port}" in compose["services"]["prometheus"]["command"]
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "seedserve.yml").read_text()
    )
    (folder,) = [p["options"]["path"] for p in provider["providers"]]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{folder}:ro" in mounts


def test_queries_plot_metrics_the_service_exports() -> None:
    known = exported_metrics()
    for where, expr in queries():
        used = set(re.findall(r"\bseedserve_[a-z_]+\b", expr))
        assert used, f"{where}: plots no seedserve metric: {expr}"
        assert used <= known, f"{where}: unknown metrics {used - known}"


@pytest.mark.skipif(
    not os.environ.get("SEEDSERVE_PROMETHEUS_URL"),
    reason="needs a live Prometheus: SEEDSERVE_PROMETHEUS_URL (scripts/deploy_check.sh docker)",
)
def test_live_prometheus_accepts_every_query() -> None:
    base = os.environ["SEEDSERVE_PROMETHEUS_URL"].rstrip("/")
    assert urllib.parse.urlsplit(base).hostname in {"127.0.0.1", "localhost"}, "loopback only"
    for where, expr in queries():
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query is a 400 with the reason
            answer = {"status": error.code, "body": error.read().decode()}
        assert answer["status"] == "success", f"{where}: {expr}: {answer}"


def test_dashboard_file_is_formatted() -> None:
    text = Path(DASHBOARD).read_text()
    assert text == json.dumps(dashboard(), indent=2) + "\n", "keep it `json.dumps(indent=2)`"
