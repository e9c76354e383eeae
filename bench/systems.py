"""Every system under test: how it is configured and started on loopback, and what it is sent.

Ours runs as users run it (`python -m service`, defaults: validation, metrics, access log,
batching as the model's config.json says) with one variable changed per variant. The naive
handler and the peers serve the same ONNX file with one intra-op thread and one worker, each
peer with its own batching on, as ../shared/PEERS.md describes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.grpcload import grpc_infer_request, grpc_probabilities, h2load_available
from bench.loadgen import Request
from bench.peers import venvs
from bench.procs import Server, free_port, start_server
from bench.workloads import (
    JSON,
    Picture,
    classify_request,
    v2_binary_request,
    v2_json_body,
    v2_json_request,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass
class Context:
    """What every system needs to start: the model and a scratch folder."""

    model_name: str
    model_dir: Path  # models/<name> (config.json + versions)
    onnx_path: Path  # the served version's model.onnx
    work_dir: Path  # scratch: logs, generated configs, a one-model repository
    picture: Picture
    startup_timeout_s: float = 180.0


@dataclass
class System:
    name: str
    start: Callable[[Context], Server]
    workloads: Callable[[Context], dict[str, Request]]  # workload name -> request
    peer: str | None = None  # the venv it needs, for peers
    description: str = ""
    stop_grace_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)


def one_model_repository(ctx: Context) -> Path:
    """A repository holding only the benchmarked model and version (others would only add load
    time). A copy: the service refuses model folders that are symlinks out of its repository."""
    repo = ctx.work_dir / "repository"
    target = repo / ctx.model_name
    if not target.exists():
        version = ctx.onnx_path.parent
        target.mkdir(parents=True)
        shutil.copy(ctx.model_dir / "config.json", target / "config.json")
        shutil.copytree(version, target / version.name, ignore=shutil.ignore_patterns("*.png"))
    return repo


def start_seedserve(
    ctx: Context, name: str, env: dict[str, str], workers: int = 1, models_dir: Path | None = None
) -> Server:
    port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--grpc-port", str(grpc_port)]
    argv += ["--models-dir", str(models_dir or one_model_repository(ctx))]
    argv += ["--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    server = start_server(
        name,
        argv,
        f"{url}/v2/health/ready",
        url,
        ctx.work_dir / "logs",
        env={"SEEDSERVE_STRICT_READINESS": "true", **env},
        cwd=ROOT,
        timeout_s=ctx.startup_timeout_s,
    )
    server.grpc = f"127.0.0.1:{grpc_port}"
    return server


BIG_BATCH = 16  # pictures per request in the -b16 workloads, where tensor encoding matters


def our_workloads(ctx: Context) -> dict[str, Request]:
    tensor = ctx.picture.tensor
    batch = np.repeat(tensor, BIG_BATCH, axis=0)
    return {
        "v2-json": v2_json_request(ctx.model_name, tensor),
        "v2-binary": v2_binary_request(ctx.model_name, tensor),
        "classify-png": classify_request(ctx.model_name, ctx.picture),
        f"v2-json-b{BIG_BATCH}": v2_json_request(ctx.model_name, batch),
        f"v2-binary-b{BIG_BATCH}": v2_binary_request(ctx.model_name, batch),
        **grpc_workloads(ctx),
    }


def grpc_workloads(ctx: Context) -> dict[str, Request]:
    """ModelInfer with raw tensors (what tritonclient.grpc sends), where h2load is installed."""
    if not h2load_available():
        return {}
    batch = np.repeat(ctx.picture.tensor, BIG_BATCH, axis=0)
    return {
        "grpc": grpc_infer_request(ctx.model_name, ctx.picture.tensor),
        f"grpc-b{BIG_BATCH}": grpc_infer_request(ctx.model_name, batch),
    }


def json_and_grpc(ctx: Context) -> dict[str, Request]:
    """What Triton and our two workers are measured on: JSON V2 and gRPC (gRPC gains the most
    from a second process: its server costs the event loop about twice what HTTP does)."""
    return {**json_only(ctx), **grpc_workloads(ctx)}


def json_only(ctx: Context) -> dict[str, Request]:
    return {"v2-json": v2_json_request(ctx.model_name, ctx.picture.tensor)}


def start_naive(ctx: Context) -> Server:
    return _start_bench_app(ctx, "naive-fastapi", "bench.naive_server:app", [])


def start_floor(ctx: Context) -> Server:
    return _start_bench_app(
        ctx, "python-floor", "bench.floor_server:app", ["--http", "httptools", "--loop", "uvloop"]
    )


def _start_bench_app(ctx: Context, name: str, app: str, options: list[str]) -> Server:
    """One of bench/'s own apps under uvicorn, serving the benchmarked ONNX file."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += [*options, "--no-access-log", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    return start_server(
        name,
        argv,
        f"{url}/ready",
        url,
        ctx.work_dir / "logs",
        env={"BENCH_MODEL": str(ctx.onnx_path)},
        cwd=ROOT,
        timeout_s=ctx.startup_timeout_s,
    )


def floor_workloads(ctx: Context) -> dict[str, Request]:
    """Our V2 workloads, JSON and binary, one picture and 16."""
    ours = our_workloads(ctx)
    return {name: ours[name] for name in ours if name.startswith("v2-")}


def start_triton(ctx: Context) -> Server:
    python = venvs.python("triton")
    port = free_port()
    # The backend stub links the interpreter's libpython (PEERS.md): point it at this venv's.
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {"LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
    grpc_port = free_port()
    argv = [str(python), str(PEERS_DIR / "triton_server.py"), str(ctx.onnx_path), str(port)]
    argv += [ctx.model_name, str(grpc_port)]
    url = f"http://127.0.0.1:{port}"
    server = start_server(
        "triton",
        argv,
        f"{url}/v2/models/{ctx.model_name}/ready",
        url,
        ctx.work_dir / "logs",
        env=env,
        cwd=ctx.work_dir,
        timeout_s=ctx.startup_timeout_s,
    )
    server.grpc = f"127.0.0.1:{grpc_port}"
    return server


def start_mlserver(ctx: Context) -> Server:
    folder = ctx.work_dir / "mlserver"
    model_folder = folder / ctx.model_name
    model_folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PEERS_DIR / "mlserver_runtime.py", folder / "mlserver_runtime.py")
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,  # inference in the server process: its best figures (PEERS.md)
        "gzip_enabled": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": ctx.model_name,
        "implementation": "mlserver_runtime.OnnxRuntime",
        "parameters": {"uri": str(ctx.onnx_path)},
        "max_batch_size": 32,
        "max_batch_time": 0.002,  # seconds
    }
    (model_folder / "model-settings.json").write_text(json.dumps(model_settings))
    argv = [str(venvs.venv_dir("mlserver") / "bin" / "mlserver"), "start", str(folder)]
    url = f"http://127.0.0.1:{port}"
    return start_server(
        "mlserver",
        argv,
        f"{url}/v2/models/{ctx.model_name}/ready",
        url,
        ctx.work_dir / "logs",
        env={"PYTHONPATH": str(folder)},
        cwd=folder,
        timeout_s=ctx.startup_timeout_s,
    )


def start_torchserve(ctx: Context) -> Server:
    folder = ctx.work_dir / "torchserve"
    store = folder / "store"
    store.mkdir(parents=True, exist_ok=True)
    bin_dir = venvs.venv_dir("torchserve") / "bin"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "JAVA_TOOL_OPTIONS": "-Xmx1g"}
    subprocess.run(
        [
            str(bin_dir / "torch-model-archiver"),
            "--model-name", ctx.model_name,
            "--version", "1",
            "--handler", str(PEERS_DIR / "torchserve_handler.py"),
            "--extra-files", str(ctx.onnx_path),
            "--export-path", str(store),
            "--force",
        ],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )  # fmt: skip
    port, management, metrics = free_port(), free_port(), free_port()
    models = {
        ctx.model_name: {
            "1": {
                "defaultVersion": True,
                "marName": f"{ctx.model_name}.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 32,
                "maxBatchDelay": 2,  # milliseconds
                "responseTimeout": 120,
            }
        }
    }
    properties = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(free_port()),
        "grpc_management_port": str(free_port()),
        "disable_token_authorization": "true",
        "enable_envvars_config": "false",
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "model_store": str(store),
        "load_models": f"{ctx.model_name}.mar",
        "default_workers_per_model": "1",
        "models": json.dumps(models),
    }
    config = folder / "config.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    argv = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs"]
    argv += ["--ts-config", str(config), "--model-store", str(store), "--disable-token-auth"]
    url = f"http://127.0.0.1:{port}"
    return start_server(
        "torchserve",
        argv,
        f"http://127.0.0.1:{management}/models/{ctx.model_name}",
        url,
        ctx.work_dir / "logs",
        env=env,
        cwd=folder,
        timeout_s=ctx.startup_timeout_s,
        ready=lambda r: r.status_code == 200 and '"READY"' in r.text,
    )


def torchserve_workloads(ctx: Context) -> dict[str, Request]:
    body = v2_json_body(ctx.picture.tensor)
    return {"v2-json": Request("POST", f"/predictions/{ctx.model_name}", body, JSON)}


def start_bentoml(ctx: Context) -> Server:
    bin_dir = venvs.venv_dir("bentoml") / "bin"
    port = free_port()
    argv = [str(bin_dir / "bentoml"), "serve", "bentoml_service:OnnxService"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    env = {
        "BENCH_MODEL": str(ctx.onnx_path),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(ctx.work_dir / "bentoml-home"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    return start_server(
        "bentoml",
        argv,
        f"{url}/readyz",
        url,
        ctx.work_dir / "logs",
        env=env,
        cwd=PEERS_DIR,
        timeout_s=ctx.startup_timeout_s,
    )


def bentoml_workloads(ctx: Context) -> dict[str, Request]:
    return {"v2-json": Request("POST", "/infer", v2_json_body(ctx.picture.tensor), JSON)}


def seedserve(name: str, env: dict[str, str], workers: int = 1, description: str = "") -> System:
    workloads = json_and_grpc if workers > 1 else json_only
    if name in ("seedserve", "seedserve-nopipeline"):
        workloads = our_workloads
    return System(
        name,
        lambda ctx: start_seedserve(ctx, name, env, workers),
        workloads,
        description=description,
    )


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        seedserve("seedserve", {}, description="ours, defaults (batching, metrics, access log)"),
        seedserve(
            "seedserve-nobatch", {"SEEDSERVE_BATCHING": "false"}, description="ours, batching off"
        ),
        seedserve("seedserve-2workers", {}, 2, description="ours, 2 worker processes"),
        seedserve(
            "seedserve-noinline",
            {"SEEDSERVE_INLINE_MAX_MS": "0"},
            description="ours, a lone request always hops to an inference thread (round one)",
        ),
        seedserve(
            "seedserve-nopipeline",
            {"SEEDSERVE_PIPELINE_BATCHES": "false"},
            description="ours, a graph's batches side by side, each taken at the end of the "
            "event loop's turn (before the fifth day of round two)",
        ),
        seedserve(
            "seedserve-granian",
            {"SEEDSERVE_HTTP_SERVER": "granian"},
            description="ours under Granian (Rust HTTP server) instead of uvicorn",
        ),
        System(
            "naive-fastapi",
            start_naive,
            json_only,
            description="FastAPI + uvicorn[standard], session per request on the loop",
        ),
        System(
            "python-floor",
            start_floor,
            floor_workloads,
            description="a bare batched ASGI app on uvicorn: parse, batch, onnxruntime, answer; "
            "nothing else (bench/floor_server.py)",
        ),
        System(
            "triton",
            start_triton,
            json_and_grpc,
            peer="triton",
            description="tritonserver 2.51 (nvidia-pytriton 0.7), dynamic batcher 32 / 2 ms",
            stop_grace_s=5.0,
        ),
        System(
            "mlserver",
            start_mlserver,
            json_only,
            peer="mlserver",
            description="MLServer 1.7.1, onnxruntime runtime, adaptive batching 32 / 2 ms",
        ),
        System(
            "torchserve",
            start_torchserve,
            torchserve_workloads,
            peer="torchserve",
            description="TorchServe 0.12, onnxruntime handler, batchSize 32 / maxBatchDelay 2 ms",
            stop_grace_s=3.0,
        ),
        System(
            "bentoml",
            start_bentoml,
            bentoml_workloads,
            peer="bentoml",
            description="BentoML 1.4.39, batchable API 32",
        ),
    )
}


def probabilities_of(response: httpx.Response) -> np.ndarray:
    """The `probabilities` output of a V2 answer, JSON or binary."""
    header_length = response.headers.get("inference-header-content-length")
    body = response.content
    header = json.loads(body[: int(header_length)] if header_length else body)
    offset = int(header_length or 0)
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["name"] == "probabilities":
            if size is not None:
                return np.frombuffer(body, np.float32, int(size) // 4, offset)
            return np.asarray(output["data"], dtype=np.float32)
        offset += int(size or 0)
    raise ValueError("no probabilities in the answer")


def check_answer(server: Server, workload: str, request: Request, expected: np.ndarray) -> str:
    """Send `request` once; '' when the answer matches in-process onnxruntime, else why not."""
    if request.protocol == "grpc":
        return _close_enough(grpc_probabilities(server.grpc, request).ravel(), expected)
    response = httpx.request(
        request.method,
        server.url + request.path,
        content=request.body,
        headers=dict(request.headers or {}),
        timeout=30.0,
    )
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if workload == "classify-png":
        top = response.json()["predictions"][0]
        label = top[0]["label"] if isinstance(top, list) else top["label"]
        want = str(int(np.argmax(expected)))
        return "" if label == want else f"top label {label}, in-process says {want}"
    return _close_enough(probabilities_of(response).ravel(), expected)


def _close_enough(got: np.ndarray, expected: np.ndarray) -> str:
    if got.size and got.size % expected.size == 0:  # a batch of the same picture
        expected = np.tile(expected.ravel(), got.size // expected.size)
    diff = float(np.abs(got - expected.ravel()).max()) if got.size == expected.size else np.inf
    return "" if diff < 1e-4 else f"probabilities differ from in-process by {diff:.2e}"
