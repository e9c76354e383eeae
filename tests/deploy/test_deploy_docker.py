"""The Dockerfile, its helpers in deploy/docker/ and the build context, read without a Docker
engine (scripts/deploy_check.sh builds and runs the image for real)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from deploy_support import ROOT, RouteTable, tool

from service.settings import Settings

DOCKERFILE = ROOT / "Dockerfile"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load(ROOT / "deploy" / "docker" / "healthcheck.py")
dependencies = load(ROOT / "deploy" / "docker" / "dependencies.py")


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I):
            current = found.setdefault(match.group(2) or f"stage{len(found)}", [])
        if current is not None:
            current.append(line)
    return found


def instruction(stage: list[str], keyword: str) -> list[str]:
    return [
        line[len(keyword) :].strip() for line in stage if line.upper().startswith(keyword + " ")
    ]


def env_of(stage: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for env in instruction(stage, "ENV"):
        pairs |= dict(re.findall(r"(\w+)=(\S+)", env))
    return pairs


RUNTIMES = ["runtime", "gpu"]


def test_the_default_target_is_the_cpu_runtime() -> None:
    names = list(stages())
    assert names[-1] == "runtime", "`docker build .` builds the last stage: the CPU runtime"
    assert instruction(stages()["runtime"], "FROM")[0].startswith("debian:bookworm-slim")
    assert {"build", "gpu-build", "gpu"} <= set(names)


@pytest.mark.parametrize("name", RUNTIMES)
def test_runtime_stage_runs_as_its_own_user_with_exec_form(name: str) -> None:
    stage = stages()[name]
    (user,) = instruction(stage, "USER")
    uid = int(user.split(":")[0])
    assert uid >= 1000, "non-root, and numeric so Kubernetes' runAsNonRoot can verify it"
    (cmd,) = instruction(stage, "CMD")
    assert json.loads(cmd) == ["python", "-m", "service"], "exec form: the server is PID 1"
    assert not instruction(stage, "ENTRYPOINT"), "no shell or wrapper between docker and the server"
    (health,) = instruction(stage, "HEALTHCHECK")
    exec_form = json.loads(health[health.index("CMD") + 3 :])
    assert exec_form == ["python", "/opt/seedserve/healthcheck.py"]
    assert any(
        "deploy/docker/healthcheck.py /opt/seedserve/healthcheck.py" in c
        for c in instruction(stage, "COPY")
    )


@pytest.mark.parametrize("name", RUNTIMES)
def test_runtime_stage_is_configured_by_real_settings(name: str) -> None:
    stage = stages()[name]
    env = env_of(stage)
    settings = {k: v for k, v in env.items() if k.startswith("SEEDSERVE_")}
    unknown = [k for k in settings if k[len("SEEDSERVE_") :].lower() not in Settings.model_fields]
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    exposed = " ".join(instruction(stage, "EXPOSE")).split()
    assert exposed == [settings["SEEDSERVE_PORT"], settings["SEEDSERVE_GRPC_PORT"]], "REST, gRPC"
    assert int(settings["SEEDSERVE_GRPC_PORT"]) != 0, "gRPC on (0 would turn it off)"
    assert settings["SEEDSERVE_HOST"] == "0.0.0.0", "reachable through a published port"
    assert settings["SEEDSERVE_PROVIDER"] == ("cuda" if name == "gpu" else "cpu")
    assert any(
        c.endswith(f" {settings['SEEDSERVE_MODELS_DIR']}")
        for c in instruction(stage, "COPY")
        if c.startswith("models ")
    )


@pytest.mark.parametrize("name", RUNTIMES)
def test_runtime_stage_installs_no_build_tools_or_torch(name: str) -> None:
    stage = " ".join(stages()[name])
    for unwanted in (
        "torch",
        "gcc",
        "g++",
        "build-essential",
        "python3-dev",
        "python3-pip",
        "pip install",
    ):
        assert unwanted not in stage, f"{unwanted} in the {name} image"


def test_gpu_build_swaps_onnxruntime_for_the_gpu_wheel() -> None:
    build = " ".join(stages()["gpu-build"])
    assert '--onnxruntime "${ONNXRUNTIME_GPU}"' in build
    assert re.search(r"ARG ONNXRUNTIME_GPU=onnxruntime-gpu==\S+", DOCKERFILE.read_text())
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-\S+", DOCKERFILE.read_text())


def test_dependencies_are_the_runtime_ones(tmp_path: Path) -> None:
    requirements = dependencies.runtime_dependencies(ROOT / "pyproject.toml")
    assert not [r for r in requirements if r.lower().startswith("torch")]
    swapped = dependencies.runtime_dependencies(ROOT / "pyproject.toml", "onnxruntime-gpu==1.31.1")
    assert "onnxruntime-gpu==1.31.1" in swapped
    assert not [r for r in swapped if dependencies._name(r) == "onnxruntime"]
    assert len(swapped) == len(requirements)
    lonely = tmp_path / "pyproject.toml"
    lonely.write_text('[project]\nname = "x"\ndependencies = ["numpy"]\n')
    with pytest.raises(SystemExit):
        dependencies.runtime_dependencies(lonely, "onnxruntime-gpu")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000/v2/health/ready"),
        ("::", "http://127.0.0.1:8000/v2/health/ready"),
        ("127.0.0.1", "http://127.0.0.1:8000/v2/health/ready"),
        ("::1", "http://[::1]:8000/v2/health/ready"),
    ],
)
def test_healthcheck_asks_the_bound_address(
    host: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEDSERVE_HOST", host)
    monkeypatch.setenv("SEEDSERVE_PORT", "8000")
    assert healthcheck.readiness_url() == url


def test_healthcheck_path_is_the_readiness_route(get_routes: RouteTable) -> None:
    assert healthcheck.READY_PATH == "/v2/health/ready"
    assert healthcheck.READY_PATH in get_routes


def test_healthcheck_against_a_live_server(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.live_server import free_port, live_server

    with live_server(models_dir) as server:
        monkeypatch.setenv("SEEDSERVE_HOST", "127.0.0.1")
        monkeypatch.setenv("SEEDSERVE_PORT", server.url.rsplit(":", 1)[1])
        assert healthcheck.main() == 0
    monkeypatch.setenv("SEEDSERVE_PORT", str(free_port()))
    assert healthcheck.main() == 1


def test_build_context_is_only_what_the_image_needs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: new folders (data, runs, checkpoints) stay out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in stages().values():
        for copy in instruction(stage, "COPY"):
            if not copy.startswith("--from"):
                copied |= {
                    Path(src).parts[0] if Path(src).parts[0] != "deploy" else "deploy/docker"
                    for src in copy.split()[:-1]
                }
    assert copied <= allowed, f"COPY of files the context leaves out: {copied - allowed}"


def other_dockerfiles() -> list[Path]:
    """The test-only Prometheus image's, and any other under deploy/ or k8s/ (a training image)."""
    return sorted(p for folder in ("deploy", "k8s") for p in (ROOT / folder).rglob("*Dockerfile"))


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE), *map(str, other_dockerfiles())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
