"""Helpers of the deployment checks: the repository's manifests, parsed, the app's route table,
and the tools that check them (found on PATH or where scripts/deploy_check.sh installs them,
build/deploy/).

A test that needs a missing tool skips with the reason, or fails when
SEEDSERVE_DEPLOY_TOOLS_REQUIRED=1 (scripts/deploy_check.sh sets it after installing them all).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Match

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DEPLOY_CACHE", ROOT / "build" / "deploy"))
K8S = ROOT / "k8s"
TOOL_DIRS = [CACHE / "venv" / "bin", CACHE / "prometheus-deb" / "usr" / "bin"]
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """Path of a command-line tool, or skip (fail when tools are required) naming how to get it."""
    override = os.environ.get(name.upper())
    found = override or shutil.which(
        name, path=os.pathsep.join([*map(str, TOOL_DIRS), os.environ.get("PATH", "")])
    )
    if found:
        return found
    missing(f"{name} is not installed")


def missing(what: str) -> NoReturn:
    """Skip for a missing tool, or fail when scripts/deploy_check.sh said they are all there."""
    reason = f"{what} (scripts/deploy_check.sh static installs it)"
    if os.environ.get("SEEDSERVE_DEPLOY_TOOLS_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def read_settings_env(path: Path) -> dict[str, str]:
    """A kustomize `envs:` file: KEY=VALUE lines, # comments."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            pairs[key] = value
    return pairs


def base_manifests() -> list[Manifest]:
    """k8s/base read file by file, without kustomize: the generated ConfigMap made from its env
    file, the `images:` tag applied, so the checks also run where kubectl is absent."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / "base" / resource).read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            data |= read_settings_env(K8S / "base" / env_file)
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
             "data": data}
        )  # fmt: skip
    tags = {i["name"]: i.get("newTag") for i in kustomization.get("images", [])}
    for doc in docs:
        for container in pod_spec(doc).get("containers", []) if doc["kind"] == "Deployment" else []:
            if container["image"] in tags:
                container["image"] = f"{container['image']}:{tags[container['image']]}"
    return docs


@functools.cache
def rendered(overlay: str) -> list[Manifest]:
    """`kubectl kustomize k8s/overlays/<overlay>`, parsed."""
    kubectl = tool("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_spec(deployment: Manifest) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


class RouteTable:
    """`path in table`: the app routes a GET of `path` to a handler (Starlette's own matching, so
    included routers, mounts and path parameters count as they do for a real request)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __contains__(self, path: object) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] == Match.FULL for route in self.app.router.routes)


def exported_metrics() -> set[str]:
    """Every series name service/metrics.py exports (counters end in _total, histograms have
    _bucket, _sum and _count)."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names
