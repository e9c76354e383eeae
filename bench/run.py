"""The benchmark run: the in-process ceiling, then every system under the same load, in one go.

Systems are started one at a time (never two servers competing for the two cores), checked for
sockets beyond loopback, sent one request whose answer must match in-process onnxruntime, and
then driven at each concurrency for `duration_s`. With `repeats` > 1 the systems are interleaved
round by round and the report shows medians, because this shared machine drifts.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime

from bench import inprocess
from bench.grpcload import run_h2load
from bench.loadgen import run_load, wrk_available
from bench.peers import venvs
from bench.procs import Server, off_loopback_sockets, stop_server
from bench.systems import ROOT, SYSTEMS, Context, check_answer, start_seedserve
from bench.workloads import test_picture
from service.runtime import Graph
from service.settings import Settings

DEFAULT_SYSTEMS = (
    "seedserve",
    "seedserve-nobatch",
    "seedserve-2workers",
    "naive-fastapi",
    "triton",
    "mlserver",
    "torchserve",
    "bentoml",
)
LOAD_FIELDS = ("rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_s_per_1k", "loadgen_cpu_s")


@dataclass
class Options:
    model: str = "cnn-mnist"
    models_dir: Path = ROOT / "models"
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    duration_s: float = 10.0
    repeats: int = 1
    generator: str = "auto"  # wrk when installed, else the Python fallback
    inprocess_s: float = 8.0
    install_peers: bool = True
    cold_start: bool = True
    workloads: tuple[str, ...] = ()  # only these (v2-json, v2-binary, ...); () = every one
    work_dir: Path | None = None
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))


def run(options: Options) -> dict[str, Any]:
    """Measure everything; returns the results document (see report.py for its rendering)."""
    generator = options.generator
    if generator == "auto":
        generator = "wrk" if wrk_available() else "python"
    model_dir = (options.models_dir / options.model).resolve()
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    onnx_path = model_dir / str(version) / "model.onnx"
    card = json.loads((model_dir / str(version) / "card.json").read_text())
    picture = test_picture()
    expected = Graph(onnx_path, Settings(provider="cpu")).run({"image": picture.tensor})[1]
    log = options.log

    log(f"in-process onnxruntime and torch on {options.model} ({options.inprocess_s:.0f} s)")
    ceiling = inprocess.measure(onnx_path, card, picture.tensor, options.inprocess_s)
    doc: dict[str, Any] = {
        "meta": {
            "model": options.model,
            "version": version,
            "input": picture.source,
            "generator": generator,
            "duration_s": options.duration_s,
            "concurrency": list(options.concurrency),
            "repeats": options.repeats,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "onnxruntime": onnxruntime.__version__,
            "argv": sys.argv[1:],
        },
        "systems": {name: SYSTEMS[name].description for name in options.systems},
        "inprocess": ceiling.as_dict(),
        "http": [],
        "skipped": {},
        "cold_start": {},
    }
    with contextlib.ExitStack() as stack:
        work = options.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ctx = Context(options.model, model_dir, onnx_path, work, picture)
        systems = [name for name in options.systems if _ready_to_run(name, options, doc)]
        rounds: list[list[dict[str, Any]]] = []
        for repeat in range(options.repeats):
            rows: list[dict[str, Any]] = []
            for name in systems:
                log(f"round {repeat + 1}/{options.repeats}: {name}")
                rows += _measure_system(name, ctx, options, generator, expected, doc)
            rounds.append(rows)
        doc["http"] = _medians(rounds)
        if options.cold_start:
            log("cold start with every model in the repository")
            doc["cold_start"] = measure_cold_start(ctx, options.models_dir)
    return doc


def _ready_to_run(name: str, options: Options, doc: dict[str, Any]) -> bool:
    system = SYSTEMS[name]
    if system.peer is None or venvs.installed(system.peer):
        return True
    if not options.install_peers:
        doc["skipped"][name] = "its virtual environment is not built (run without --no-install)"
        return False
    options.log(f"installing {system.peer} into {venvs.venv_dir(system.peer)} (once)")
    try:
        venvs.install(system.peer, venvs.VENVS / f"{system.peer}-install.log")
    except Exception as exc:
        doc["skipped"][name] = f"install failed: {exc}"
        return False
    return True


def _measure_system(
    name: str,
    ctx: Context,
    options: Options,
    generator: str,
    expected: Any,
    doc: dict[str, Any],
) -> list[dict[str, Any]]:
    system = SYSTEMS[name]
    started = time.perf_counter()
    try:
        server = system.start(ctx)
    except Exception as exc:
        doc["skipped"][name] = f"did not start: {str(exc)[-600:]}"
        return []
    startup_s = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    try:
        problems = off_loopback_sockets(server.pids())
        if problems:
            doc["skipped"][name] = f"sockets beyond loopback, not load-tested: {problems[:3]}"
            return []
        rss_idle = server.rss_bytes()
        for workload, request in system.workloads(ctx).items():
            if options.workloads and workload not in options.workloads:
                continue
            problem = check_answer(server, workload, request, expected)
            if problem:
                doc["skipped"][f"{name} {workload}"] = f"wrong answer: {problem}"
                continue
            for concurrency in options.concurrency:
                cpu_before = server.cpu_seconds()
                if request.protocol == "grpc":
                    result = run_h2load(server.grpc, request, concurrency, options.duration_s)
                else:
                    result = run_load(
                        generator, server.url, request, concurrency, options.duration_s
                    )
                cpu = server.cpu_seconds() - cpu_before
                row = {
                    "system": name,
                    "workload": workload,
                    **result.as_dict(),
                    "server_cpu_s": cpu,
                    "cpu_s_per_1k": 1000 * cpu / result.requests if result.requests else None,
                    "rss_idle_mb": rss_idle / 2**20,
                    "rss_mb": server.rss_bytes() / 2**20,
                    "startup_s": startup_s,
                }
                rows.append(row)
                options.log(
                    f"  {workload:13s} c={concurrency:<4d} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                )
    finally:
        _stop(server, system.stop_grace_s)
    return rows


def _stop(server: Server, grace_s: float) -> None:
    stop_server(server, grace_s)


def _medians(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (system, workload, concurrency): the median of each figure over rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row["system"], row["workload"], row["concurrency"]), []).append(row)
    merged = []
    for rows in groups.values():
        row = dict(rows[len(rows) // 2])
        for key in LOAD_FIELDS:
            values = [r[key] for r in rows if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        row["rounds"] = len(rows)
        merged.append(row)
    return merged


def measure_cold_start(ctx: Context, models_dir: Path) -> dict[str, Any]:
    """Seconds from `python -m service` to ready with every model in `models_dir` loaded, twice:
    the second start finds the optimised graphs already cached on disk (when caching is on)."""
    result: dict[str, Any] = {"models": sorted(p.name for p in models_dir.iterdir() if p.is_dir())}
    for attempt in ("first", "second"):
        started = time.perf_counter()
        try:
            server = start_seedserve(ctx, f"cold-start-{attempt}", {}, models_dir=models_dir)
        except Exception as exc:
            result[attempt] = None
            result["error"] = str(exc)[-600:]
            return result
        result[f"{attempt}_s"] = time.perf_counter() - started
        result[f"{attempt}_rss_mb"] = server.rss_bytes() / 2**20
        _stop(server, 30.0)
    return result
