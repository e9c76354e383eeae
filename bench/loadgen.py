"""Load generators: Debian's `wrk` (C, one thread, Lua script for the body), or a fallback.

`wrk` is the load generator of record. Where it is missing (a CI machine without it), a small
closed-loop generator on httpx + asyncio stands in: `concurrency` tasks, each with its own
keep-alive connection, send the same request back to back for `duration_s` and record each
latency. It costs far more CPU per request than wrk (it is Python), so its figures are only
good for checking that the benchmark works, never for comparing systems; the report says which
generator produced every row.

Both measure CPU of the load generator itself, so the report can show what it took from the
two cores the server under test also runs on.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np


@dataclass
class Request:
    """One HTTP request, sent over and over."""

    method: str
    path: str  # with the query string
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    protocol: str = "http"  # or "grpc": a framed gRPC call, sent by h2load (bench/grpcload.py)
    min_answer_bytes: int = 0  # gRPC: what a successful answer carries at least


@dataclass
class LoadResult:
    generator: str  # "wrk", "python" or "h2load" (gRPC)
    concurrency: int
    duration_s: float
    requests: int  # completed with a 2xx status
    errors: int  # non-2xx statuses, socket errors, timeouts
    rps: float  # 2xx requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    loadgen_cpu_s: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


LUA = """
wrk.method = %(method)s
local f = assert(io.open(%(body_path)s, "rb"))
wrk.body = f:read("*a")
f:close()
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"mean":%%f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    base_url: str, request: Request, concurrency: int, duration_s: float, timeout_s: float = 60.0
) -> LoadResult:
    """`wrk -t1 -c<concurrency> -d<duration>`; the Lua script reports percentiles as JSON.

    No `response` callback: that would make wrk hand every response to Lua. Statuses of 400 and
    above are counted by wrk itself (errors.status).
    """
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_path = Path(tmp) / "body"
        body_path.write_bytes(request.body)
        headers = "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
            for k, v in (request.headers or {}).items()
        )
        script = Path(tmp) / "script.lua"
        script.write_text(
            LUA
            % {
                "method": _lua_string(request.method),
                "body_path": _lua_string(str(body_path)),
                "headers": headers,
            }
        )
        argv = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            base_url + request.path,
        ]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    ok = data["requests"] - data["status"]
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    duration = data["duration_us"] / 1e6
    return LoadResult(
        generator="wrk",
        concurrency=concurrency,
        duration_s=duration,
        requests=ok,
        errors=data["requests"] - ok + socket_errors,
        rps=ok / duration if duration else 0.0,
        p50_ms=data["p50"] / 1e3,
        p90_ms=data["p90"] / 1e3,
        p99_ms=data["p99"] / 1e3,
        mean_ms=data["mean"] / 1e3,
        loadgen_cpu_s=usage.ru_utime + usage.ru_stime,
    )


async def _python_load(
    base_url: str, request: Request, concurrency: int, duration_s: float, timeout_s: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:
        started = time.perf_counter()
        stop_at = started + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = await client.request(
                        request.method,
                        request.path,
                        content=request.body or None,
                        headers=dict(request.headers or {}),
                    )
                    ok = 200 <= response.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def run_python(
    base_url: str, request: Request, concurrency: int, duration_s: float, timeout_s: float = 60.0
) -> LoadResult:
    """The fallback generator (see the module docstring), in this process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    latencies, errors, elapsed = asyncio.run(
        _python_load(base_url, request, concurrency, duration_s, timeout_s)
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return LoadResult(
        generator="python",
        concurrency=concurrency,
        duration_s=elapsed,
        requests=len(latencies),
        errors=errors,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        loadgen_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    )


MIN_REQUESTS_PER_CONNECTION = 16  # fewer, and a rate of whole requests in a window skews
MAX_LOAD_S = 40.0  # the longest a point is loaded for to get them


def run_load(
    generator: str,
    base_url: str,
    request: Request,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 60.0,
) -> LoadResult:
    if generator == "wrk":
        return run_wrk(base_url, request, concurrency, duration_s, timeout_s)
    if generator == "python":
        return run_python(base_url, request, concurrency, duration_s, timeout_s)
    raise ValueError(f"unknown load generator {generator!r}")


def longer_load_s(
    load: LoadResult,
    duration_s: float,
    min_per_connection: int = MIN_REQUESTS_PER_CONNECTION,
    max_s: float = MAX_LOAD_S,
) -> float | None:
    """How long to load a point again (at most `max_s`) when its connections finished fewer
    than `min_per_connection` requests each, else None. A rate counted in whole requests over a
    fixed window moves in steps of one request per window and reads low by about half a request
    per connection (wrk does not count the requests still running when it stops): four 0.8 s
    requests in 4 s read as 1.0 requests/s where the server did 1.2, which made DDIM-50 images
    look 0.80 of in-process where their latency said 0.97."""
    wanted = min_per_connection * load.concurrency
    if load.errors or load.requests >= wanted or duration_s >= max_s:
        return None
    return min(max_s, duration_s * wanted / max(load.requests, 1))
