"""Soak and overload: drive the real service at several times its capacity and account for
every request.

    python -m bench.soak --duration 60 --overload 3

1. Starts `python -m service` on 127.0.0.1 with the shipped models (`models/`), its batch queue
   bounded (`--queue-size`) and queued requests given a deadline (`--deadline-ms`).
2. Measures capacity: `--connections` closed-loop clients for `--capacity-seconds`; capacity is
   the rate of answered requests.
3. Overload: an open-loop schedule of `--overload` x capacity requests per second for
   `--duration` seconds, over `--connections` keep-alive connections (raw asyncio HTTP/1.1,
   cheaper per request than any client library). Latency runs from each request's scheduled
   time, so time spent waiting for a free connection counts (no coordinated omission).
4. Every answer is classified: accepted (200, and its probabilities must equal in-process
   onnxruntime's on the same pictures), shed (503 or 429 with Retry-After), or failed (anything
   else, a wrong answer, or a transport error: must be 0).
5. Meanwhile: the server's RSS (whole process tree) every second, with a least-squares slope,
   and `/v2/health/ready` latency from a separate process (so the client's own event loop does
   not inflate it).

Writes `bench/results/soak.json` and prints a table. Loopback only; the server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from bench.procs import Server, free_port, start_server, stop_server
from bench.workloads import MNIST_TEST, ROOT, test_picture, v2_binary_body

RESULTS = ROOT / "bench" / "results" / "soak.json"
HEADER = b"inference-header-content-length"


@dataclass
class Outcome:
    """One request: how long it took from when it was due, and from when it was sent (the
    difference is time spent waiting for a free client connection), and how it ended."""

    latency_s: float
    service_s: float
    kind: str  # "accepted", "shed", "failed"
    detail: str = ""


@dataclass
class Workload:
    """Request bodies over real test pictures, with onnxruntime's answers for each."""

    model: str
    bodies: list[bytes]
    expected: list[np.ndarray]  # probabilities, (batch, classes)

    @classmethod
    def build(cls, models_dir: Path, model: str, batch: int, variants: int = 32) -> Workload:
        config = orjson.loads((models_dir / model / "config.json").read_bytes())
        version = max(int(p.name) for p in (models_dir / model).iterdir() if p.name.isdigit())
        session = ort.InferenceSession(str(models_dir / model / str(version) / "model.onnx"))
        mean = float(config["preprocessing"]["mean"])
        std = float(config["preprocessing"]["std"])
        bodies, expected = [], []
        for v in range(variants):
            pixels = [test_picture(v * batch + i).pixels for i in range(batch)]
            tensor = ((np.stack(pixels).astype(np.float32) / 255.0 - mean) / std)[:, None]
            body, header_length = v2_binary_body(tensor)
            head = (
                f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Inference-Header-Content-Length: {header_length}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            bodies.append(head.encode() + body)
            expected.append(session.run(["probabilities"], {"image": tensor})[0])
        return cls(model, bodies, expected)


def probabilities_of(body: bytes, header_length: int, batch: int) -> np.ndarray:
    """The `probabilities` output of a binary V2 answer."""
    header = orjson.loads(body[:header_length])
    offset = header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "probabilities":
            return np.frombuffer(body, np.float32, size // 4, offset).reshape(batch, -1)
        offset += size
    raise ValueError("no probabilities in the answer")


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            self.writer.write(raw)
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("the server closed the connection")
            headers: dict[bytes, bytes] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.partition(b":")
                headers[key.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def judge(
    workload: Workload, variant: int, batch: int, answer: tuple[int, dict[bytes, bytes], bytes]
) -> tuple[str, str]:
    status, headers, body = answer
    if status == 200:
        try:
            got = probabilities_of(body, int(headers[HEADER]), batch)
        except (KeyError, ValueError) as exc:
            return "failed", f"unreadable answer: {exc}"
        if not np.allclose(got, workload.expected[variant], rtol=1e-4, atol=1e-6):
            return "failed", "answer differs from onnxruntime"
        return "accepted", ""
    if status in (429, 503):
        if b"retry-after" not in headers:
            return "failed", f"{status} without Retry-After"
        # the bounded queue refuses at once; a queued request past its deadline is dropped later
        return "shed", "deadline" if b"deadline" in body else "queue full"
    return "failed", f"status {status}: {body[:200]!r}"


@dataclass
class Phase:
    name: str
    seconds: float
    offered_rps: float | None  # None: closed loop
    outcomes: list[Outcome] = field(default_factory=list)
    client_backlog_max: int = 0  # requests due but still waiting for a free connection
    elapsed_s: float = 0.0  # until the last answer arrived


async def run_phase(
    phase: Phase, workload: Workload, port: int, connections: int, batch: int
) -> None:
    """Closed loop (offered_rps None): each connection sends back to back. Open loop: requests
    fall due on a fixed schedule and wait for a free connection; latency counts from the due
    time."""
    due: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    started = time.perf_counter()
    stop_at = started + phase.seconds
    pool = [Connection(port) for _ in range(connections)]

    async def worker(conn: Connection, first: int) -> None:
        n = first
        while True:
            if phase.offered_rps is None:
                if time.perf_counter() >= stop_at:
                    return
                scheduled, variant = time.perf_counter(), n % len(workload.bodies)
                n += connections
            else:
                item = await due.get()
                if item[1] < 0:
                    return
                scheduled, variant = item
            sent = time.perf_counter()
            try:
                answer = await conn.request(workload.bodies[variant])
                kind, detail = judge(workload, variant, batch, answer)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                kind, detail = "failed", f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            phase.outcomes.append(Outcome(done - scheduled, done - sent, kind, detail))

    async def schedule(rate: float) -> None:
        start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) < stop_at:
            target = int((now - start) * rate)
            for _ in range(target - sent):
                due.put_nowait((start + (sent + 1) / rate, sent % len(workload.bodies)))
                sent += 1
            phase.client_backlog_max = max(phase.client_backlog_max, due.qsize())
            await asyncio.sleep(0.001)
        for _ in pool:
            due.put_nowait((0.0, -1))

    tasks = [asyncio.create_task(worker(conn, i)) for i, conn in enumerate(pool)]
    if phase.offered_rps is not None:
        tasks.append(asyncio.create_task(schedule(phase.offered_rps)))
    await asyncio.gather(*tasks)
    phase.elapsed_s = time.perf_counter() - started
    for conn in pool:
        conn.close()


def probe_health(
    url: str, stop: Any, period_s: float, pipe: multiprocessing.connection.Connection
) -> None:
    """In a separate process: GET /v2/health/ready every `period_s` until `stop` (an Event) is
    set; sends back (wall-clock time, seconds, answered 200) for each probe."""
    import httpx

    probes: list[tuple[float, float, bool]] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            at, started = time.time(), time.perf_counter()
            try:
                ok = client.get("/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = time.perf_counter() - started
            probes.append((at, elapsed, ok))
            time.sleep(max(0.0, period_s - elapsed))
    pipe.send(probes)


async def sample_rss(
    server: Server, samples: list[tuple[float, int]], start: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        samples.append((time.perf_counter() - start, server.rss_bytes()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1e3, 2) if values else None


def summarise(phase: Phase) -> dict[str, Any]:
    accepted = [o.latency_s for o in phase.outcomes if o.kind == "accepted"]
    served = [o.service_s for o in phase.outcomes if o.kind == "accepted"]
    shed = [o.latency_s for o in phase.outcomes if o.kind == "shed"]
    queue_full = [o.service_s for o in phase.outcomes if o.detail == "queue full"]
    expired = [o.service_s for o in phase.outcomes if o.detail == "deadline"]
    failed = [o for o in phase.outcomes if o.kind == "failed"]
    reasons: dict[str, int] = {}
    for o in failed:
        reasons[o.detail[:120]] = reasons.get(o.detail[:120], 0) + 1
    return {
        "seconds": phase.seconds,
        "elapsed_s": round(phase.elapsed_s, 2),
        "offered_rps": round(phase.offered_rps, 1) if phase.offered_rps else None,
        "requests": len(phase.outcomes),
        "accepted": len(accepted),
        "shed": len(shed),
        "failed": len(failed),
        "failure_reasons": reasons,
        "accepted_rps": round(len(accepted) / phase.elapsed_s, 1),
        "accepted_correct": len(accepted),  # a wrong answer counts as failed, not accepted
        "accepted_p50_ms": percentile_ms(accepted, 50),
        "accepted_p99_ms": percentile_ms(accepted, 99),
        "accepted_max_ms": percentile_ms(accepted, 100),
        "accepted_service_p50_ms": percentile_ms(served, 50),
        "accepted_service_p99_ms": percentile_ms(served, 99),
        "shed_queue_full": len(queue_full),
        "shed_queue_full_p50_ms": percentile_ms(queue_full, 50),
        "shed_queue_full_p99_ms": percentile_ms(queue_full, 99),
        "shed_deadline": len(expired),
        "shed_deadline_p50_ms": percentile_ms(expired, 50),
        "shed_deadline_p99_ms": percentile_ms(expired, 99),
        "client_backlog_max": phase.client_backlog_max,
    }


def rss_trend(samples: list[tuple[float, int]], skip_fraction: float = 0.2) -> dict[str, Any]:
    """Least-squares slope of RSS over time, after the first `skip_fraction` (warm-up)."""
    kept = samples[int(len(samples) * skip_fraction) :]
    t = np.array([s[0] for s in kept])
    mb = np.array([s[1] for s in kept]) / 2**20
    slope = float(np.polyfit(t, mb, 1)[0]) * 60 if len(kept) >= 3 else None
    return {
        "samples": [(round(s[0], 1), round(s[1] / 2**20, 1)) for s in samples],
        "start_mb": round(float(mb[0]), 1) if len(mb) else None,
        "end_mb": round(float(mb[-1]), 1) if len(mb) else None,
        "max_mb": round(float(mb.max()), 1) if len(mb) else None,
        "slope_mb_per_min": round(slope, 3) if slope is not None else None,
        "fitted_after_s": round(float(t[0]), 1) if len(t) else None,
    }


async def soak(args: argparse.Namespace, server: Server, workload: Workload) -> dict[str, Any]:
    port = int(server.url.rsplit(":", 1)[1])
    # The health prober starts first: its process takes a moment to import; only its probes
    # during the overload count.
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads
    stop_probing = spawn.Event()
    receive, send = spawn.Pipe(duplex=False)
    prober = spawn.Process(
        target=probe_health, args=(server.url, stop_probing, 0.1, send), daemon=True
    )
    prober.start()
    warm = Phase("warm-up", 1.0, None)
    await run_phase(warm, workload, port, 8, args.batch)
    capacity = Phase("capacity", args.capacity_seconds, None)
    await run_phase(capacity, workload, port, args.capacity_connections, args.batch)
    capacity_rps = summarise(capacity)["accepted_rps"]
    overload = Phase("overload", args.duration, capacity_rps * args.overload)

    rss: list[tuple[float, int]] = []
    stop = asyncio.Event()
    start, window_start = time.perf_counter(), time.time()
    sampler = asyncio.create_task(sample_rss(server, rss, start, stop))
    await run_phase(overload, workload, port, args.connections, args.batch)
    window_end = time.time()
    stop.set()
    await sampler
    stop_probing.set()
    probes = receive.recv() if receive.poll(30) else []
    prober.join(timeout=10)
    during = [(seconds, ok) for at, seconds, ok in probes if window_start <= at <= window_end]
    health = [seconds for seconds, ok in during if ok]
    after = Phase("after", args.after_seconds, None)  # still healthy and correct afterwards
    await run_phase(after, workload, port, 4, args.batch)
    return {
        "capacity": summarise(capacity),
        "overload": summarise(overload),
        "after": summarise(after),
        "health": {
            "probes": len(during),
            "errors": len(during) - len(health),
            "p50_ms": percentile_ms(health, 50),
            "p99_ms": percentile_ms(health, 99),
            "max_ms": percentile_ms(health, 100),
        },
        "rss": rss_trend(rss),
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        "| phase | offered req/s | requests | accepted | shed | failed | accepted req/s "
        "| p50 ms | p99 ms | p99 from send ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("capacity", "overload", "after"):
        p = report[name]
        offered = p["offered_rps"] if p["offered_rps"] is not None else "closed loop"
        rows.append(
            f"| {name} | {offered} | {p['requests']} | {p['accepted']} | {p['shed']} | "
            f"{p['failed']} | {p['accepted_rps']} | {p['accepted_p50_ms']} | "
            f"{p['accepted_p99_ms']} | {p['accepted_service_p99_ms']} |"
        )
    health, rss, o = report["health"], report["rss"], report["overload"]
    rows += [
        "",
        f"health under overload: {health['probes']} probes, {health['errors']} errors, "
        f"p50 {health['p50_ms']} ms, p99 {health['p99_ms']} ms, max {health['max_ms']} ms",
        f"server RSS: {rss['start_mb']} -> {rss['end_mb']} MB (max {rss['max_mb']}), "
        f"slope {rss['slope_mb_per_min']} MB/min after {rss['fitted_after_s']} s",
        f"shed at once (queue full): {o['shed_queue_full']}, p50 {o['shed_queue_full_p50_ms']} ms, "
        f"p99 {o['shed_queue_full_p99_ms']} ms; dropped at the deadline: {o['shed_deadline']}, "
        f"p99 {o['shed_deadline_p99_ms']} ms",
        f"client backlog (requests due, no free connection) at most {o['client_backlog_max']}",
    ]
    return "\n".join(rows)


def _shown(value: Any) -> Any:
    """Paths relative to the repository, so results read the same on every machine."""
    if isinstance(value, Path):
        return (
            str(value.resolve().relative_to(ROOT))
            if value.resolve().is_relative_to(ROOT)
            else str(value)
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="overload seconds (60)")
    parser.add_argument("--overload", type=float, default=3.0, help="offered load / capacity (3)")
    parser.add_argument("--capacity-seconds", type=float, default=8.0, help="capacity run (8)")
    parser.add_argument("--after-seconds", type=float, default=3.0, help="check run after (3)")
    parser.add_argument("--model", default="cnn-mnist", help="model to drive (cnn-mnist)")
    parser.add_argument("--batch", type=int, default=64, help="pictures per request (64)")
    parser.add_argument("--connections", type=int, default=256, help="overload connections (256)")
    parser.add_argument(
        "--capacity-connections",
        type=int,
        default=16,
        help="closed-loop clients measuring capacity (16)",
    )
    parser.add_argument("--queue-size", type=int, default=32, help="SEEDSERVE_MAX_QUEUE_SIZE (32)")
    parser.add_argument(
        "--deadline-ms", type=float, default=500.0, help="SEEDSERVE_REQUEST_TIMEOUT_S x 1000 (500)"
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="JSON results (bench/results/soak.json)"
    )
    args = parser.parse_args(argv)

    workload = Workload.build(args.models_dir, args.model, args.batch)
    port = free_port()
    env = {
        "SEEDSERVE_ACCESS_LOG": "false",
        "SEEDSERVE_LOG_LEVEL": "warning",
        "SEEDSERVE_MAX_QUEUE_SIZE": str(args.queue_size),
        "SEEDSERVE_REQUEST_TIMEOUT_S": str(args.deadline_ms / 1e3),
    }
    argv_server = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    argv_server += ["--models-dir", str(args.models_dir)]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="soak-") as log_dir:
        server = start_server(
            "seedserve",
            argv_server,
            f"{url}/v2/health/ready",
            url,
            Path(log_dir),
            env=env,
            cwd=ROOT,
        )
        try:
            report = asyncio.run(soak(args, server, workload))
        finally:
            stop_server(server)
            server_log = server.log_tail(20)
    report = {
        "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: _shown(v) for k, v in vars(args).items()},
        "server_env": env,
        "pictures": "MNIST test images"
        if MNIST_TEST.exists()
        else "seeded random pictures (no MNIST data)",
        "machine": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version()},
        "server_exit_code": server.process.returncode,
        "server_log_tail": server_log,
        **report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(table(report))
    print(f"\nwritten to {args.out}")
    failed = report["overload"]["failed"] + report["capacity"]["failed"] + report["after"]["failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
