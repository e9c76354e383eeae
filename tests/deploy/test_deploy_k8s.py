"""The Kubernetes manifests agree with each other and with the app: selectors select the pods,
probes hit real routes, ports line up, every ConfigMap key is a real setting with a valid value."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml
from deploy_support import CACHE, K8S, ROOT, Manifest, RouteTable, missing, one, pod_spec, rendered

from service.grpcapi.server import READINESS_SERVICES
from service.metrics import Metrics
from service.settings import Settings

PREFIX = "SEEDSERVE_"


def container(docs: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(one(docs, "Deployment"))["containers"]
    assert len(containers) == 1, "one server container per pod"
    return dict(containers[0])


def config_map(docs: list[Manifest]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap")["data"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the server would build from exactly these variables."""
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def image_uid() -> int:
    """The numeric USER of the Dockerfile's default (last) stage."""
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no numeric USER"
    return int(users[-1].split(":")[0])


def test_selectors_select_the_pods(manifests: list[Manifest]) -> None:
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(manifests, "Service")
    assert selects(service["spec"]["selector"], pod_labels), "the Service selects no pod"
    pdb = one(manifests, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "the PDB guards no pod"
    for spread in pod_spec(deployment).get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"], pod_labels)
    monitor = one(manifests, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]), (
        "the ServiceMonitor selects no Service"
    )
    hpa = one(manifests, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )


def container_ports(server: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in server["ports"]}


def probe_target(probe: dict[str, Any], ports: dict[str, int]) -> tuple[str, int, str]:
    """What a probe asks: ("http", port, path) or ("grpc", port, health service)."""
    if "grpc" in probe:
        return "grpc", probe["grpc"]["port"], probe["grpc"].get("service", "")
    port = probe["httpGet"]["port"]
    assert isinstance(port, int) or port in ports, f"{port} is no container port"
    return "http", ports[port] if isinstance(port, str) else port, probe["httpGet"]["path"]


def test_probes_hit_real_endpoints(
    manifests: list[Manifest], get_routes: RouteTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = container(manifests)
    settings = settings_from(config_map(manifests), monkeypatch)
    listening = {"http": settings.port, "grpc": settings.grpc_port}
    asked = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in server, f"no {probe}"
        kind, port, what = probe_target(server[probe], container_ports(server))
        assert port == listening[kind], (
            f"{probe}: {kind} on {port}, the server on {listening[kind]}"
        )
        if kind == "http":
            assert what in get_routes, f"{probe} asks {what}, which the app lacks"
        else:  # the live answer: tests/deploy/test_deploy_grpc.py
            assert what in READINESS_SERVICES, f"{probe} asks {what!r}, no readiness service"
        asked[probe] = (kind, what)
    # Open Inference Protocol health: start-up (models loaded, REST up) and liveness over REST,
    # readiness over gRPC, so each listener is proven (k8s/base/deployment.yaml says why).
    assert asked == {
        "startupProbe": ("http", "/v2/health/ready"),
        "readinessProbe": ("grpc", ""),
        "livenessProbe": ("http", "/v2/health/live"),
    }


def test_ports_line_up(
    manifests: list[Manifest], get_routes: RouteTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = container(manifests)
    data = config_map(manifests)
    assert f"{PREFIX}GRPC_PORT" in data, "stated, not left to the default: probes depend on it"
    settings = settings_from(data, monkeypatch)
    assert container_ports(server) == {"http": settings.port, "grpc": settings.grpc_port}, (
        "the container ports are not where the server listens (SEEDSERVE_PORT, _GRPC_PORT)"
    )
    assert settings.host == "0.0.0.0", "reachable from the kubelet"
    service_ports = {p["name"]: p for p in one(manifests, "Service")["spec"]["ports"]}
    assert set(service_ports) == {"http", "grpc"}
    for name, service_port in service_ports.items():
        assert service_port["targetPort"] in (name, container_ports(server)[name])
    # gateways and meshes speak HTTP/2 to it only when told (gRPC refuses HTTP/1.1)
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "http", "/metrics is served over REST"
    assert endpoint["path"] in get_routes, f"{endpoint['path']} is not a route of the app"


def test_config_map_holds_real_settings(
    manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_map(manifests)
    fields = set(Settings.model_fields)
    unknown = [
        k for k in data if not k.startswith(PREFIX) or k[len(PREFIX) :].lower() not in fields
    ]
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    settings = settings_from(data, monkeypatch)  # the values validate, as at server start
    assert str(settings.models_dir) == "/models", "the image's model repository"
    (source,) = [s for s in container(manifests)["envFrom"] if "configMapRef" in s]
    assert source["configMapRef"]["name"] == one(manifests, "ConfigMap")["metadata"]["name"]


def test_pods_are_locked_down(manifests: list[Manifest]) -> None:
    spec = pod_spec(one(manifests, "Deployment"))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == image_uid(), "the pod's user is not the image's"
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    security = container(manifests)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security["capabilities"].get("add")
    mounts = {m["mountPath"] for m in container(manifests).get("volumeMounts", [])}
    assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


def test_termination_is_graceful(
    manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = pod_spec(one(manifests, "Deployment"))
    pre_stop = container(manifests)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = settings_from(config_map(manifests), monkeypatch).shutdown_timeout_s
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain_s, (
        "the kubelet would SIGKILL the server before its drain ends"
    )
    strategy = one(manifests, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in {"", *units}, f"not a quantity: {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def test_resources_are_bounded(manifests: list[Manifest]) -> None:
    resources = container(manifests)["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert 0 < quantity(request) <= quantity(limit), (
            f"{name}: request {request} > limit {limit}"
        )


def test_gpu_overlay_asks_for_a_gpu_and_cuda() -> None:
    gpu = rendered("gpu")
    server = container(gpu)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["image"].endswith("-gpu"), "the GPU overlay runs the image of the gpu target"
    assert config_map(gpu)[f"{PREFIX}PROVIDER"] == "cuda"
    cpu = rendered("cpu")
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert config_map(cpu)[f"{PREFIX}PROVIDER"] == "cpu"


def test_autoscaler_metric_is_exported_and_adapted(manifests: list[Manifest]) -> None:
    hpa = one(manifests, "HorizontalPodAutoscaler")
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    # in-flight requests of both transports: a gRPC-only load scales out too
    assert sorted(pods) == [
        "seedserve_grpc_requests_in_flight",
        "seedserve_http_requests_in_flight",
    ]
    exported = {m.name for m in Metrics().registry.collect()}
    assert set(pods) <= exported, f"{pods} are not all metrics of service/metrics.py"
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert set(pods) <= served, "the Prometheus adapter does not serve the HPA's Pods metrics"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block drains"


# ---- KServe (k8s/kserve): optional, outside kustomize ------------------------------------------

KSERVE = sorted((K8S / "kserve").glob("*.yaml"))


def kserve_docs() -> dict[str, Manifest]:
    return {d["kind"]: d for path in KSERVE for d in yaml.safe_load_all(path.read_text()) if d}


def test_kserve_runtime_runs_this_server(
    get_routes: RouteTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = kserve_docs()
    runtime, isvc = docs["ServingRuntime"], docs["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (server,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in server["env"]}
    settings = settings_from(env, monkeypatch)
    assert str(settings.models_dir) == "/mnt/models", "where KServe puts the storageUri"
    # KServe's own model server listens there; the first port becomes the Service's port 80
    assert (settings.port, settings.grpc_port) == (8080, 8081)
    assert [(p["name"], p["containerPort"]) for p in server["ports"]] == [
        ("http1", settings.port),
        ("h2c", settings.grpc_port),  # the name KServe (and Knative) take for HTTP/2, gRPC
    ]
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] in get_routes
        assert server[probe]["httpGet"]["port"] == settings.port
    assert server["securityContext"]["runAsUser"] == image_uid()


def test_kserve_manifests_match_the_sdk() -> None:
    python = CACHE / "kserve-venv" / "bin" / "python"
    if not python.exists():
        missing(f"the kserve SDK venv {python.parent.parent} is not there")
    result = subprocess.run(
        [str(python), str(ROOT / "scripts" / "check_kserve.py"), *map(str, KSERVE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
