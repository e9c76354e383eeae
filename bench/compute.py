"""`python -m bench.compute [--quick] [--out bench/results]`: the compute-bound targets, in one run.

Issue #5: for compute-bound models, at concurrency 32, batching in the service must reach at
least 70% of the in-process batched ceiling. Two models, each served by the live service on
127.0.0.1 (a repository with only the two) and driven by `wrk`, batching on and then off:

1. Diffusion step: diffusion-mnist, one image per request, DDIM 10 steps, the model's default
   guidance (two rows per image per step). Concurrent requests share denoiser calls (step
   batching). In process at concurrency c: the same c images drawn by one batched loop
   (`imagegen.generate(n=c)`, one thread), and by two such loops of c/2 on two threads.
2. Transformer full sequence: transformer-austen model.onnx over 64 fixed tokens through
   `POST /v2/models/transformer-austen/infer` (JSON input, binary output: the logits are
   64 x 8000 floats), stacked by the dynamic batcher. In process: onnxruntime at each batch size
   of a sweep, one thread, and at the best of them on two threads at once.

The ceiling of a row is the best in-process figure with one thread; what two threads reach is
reported beside it (the service runs two onnxruntime calls at once, on this machine's 2 cores).
Writes compute.json and compute.md to --out. Run it on an otherwise idle machine (`benchlock`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench import cli
from bench.generation import IMAGE_MODEL, LM, make_repository
from bench.inprocess import time_calls
from bench.loadgen import LoadResult, Request, longer_load_s, run_load
from bench.procs import Server, free_port, start_server, stop_server
from service.runtime import Graph
from service.settings import Settings
from service.tasks import imagegen

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10
LABEL = 3
TOKENS = 64
TARGET = 0.70  # of the ceiling, at the highest concurrency
BATCH_SWEEP = (1, 2, 4, 8, 16, 32, 64)
# Enough task threads that all 32 generations sample at once (the default, 8, queues the rest):
# with step batching on, every running generation can put its step into the shared call.
SERVICE_ENV = {"SEEDSERVE_TASK_THREADS": "32"}
# batching on (step batching forced on for diffusion, whatever its load-time timing says),
# auto (the defaults: step batching only where the denoiser's timing says it pays) and off
MODES = {
    "on": {
        "SEEDSERVE_STEP_BATCHING_MIN_SAVING_MS": "-1000",
        "SEEDSERVE_STEP_BATCHING_MIN_GAIN": "-1000",
    },
    "auto": {},
    "off": {"SEEDSERVE_STEP_BATCHING": "false", "SEEDSERVE_BATCHING": "false"},
}
WORKS = ("diffusion", "transformer")


@dataclass(frozen=True)
class Plan:
    quick: bool
    load_s: float  # seconds per HTTP point
    point_s: float  # seconds per in-process point
    concurrency: tuple[int, ...]
    works: tuple[str, ...] = WORKS
    modes: tuple[str, ...] = tuple(MODES)


def make_plan(
    quick: bool, works: Sequence[str] = WORKS, modes: Sequence[str] = tuple(MODES)
) -> Plan:
    if quick:
        return Plan(True, 0.5, 0.1, (1, 4), tuple(works), tuple(modes))
    return Plan(False, 5.0, 1.5, (1, 8, 32), tuple(works), tuple(modes))


# ---------------------------------------------------------------------------------------------
# in process


def rate(fn: Callable[[], object], units: int, seconds: float, threads: int = 1) -> float:
    """Units per second with `threads` threads each calling `fn` back to back for `seconds`."""
    if threads == 1:
        return units * time_calls(fn, 1, seconds).calls_per_s
    fn()  # warm up
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            fn()
            counts[i] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return units * sum(counts) / (time.perf_counter() - started)


def diffusion_inprocess(
    repository: Path, concurrency: Sequence[int], seconds: float
) -> dict[int, dict[str, float]]:
    """images/s for c images: one loop of n=c (1 thread), two loops of n=c/2 (2 threads)."""
    model_dir = repository / IMAGE_MODEL
    config = json.loads((model_dir / "config.json").read_text())
    graph = Graph(_latest(model_dir) / "model.onnx", Settings())
    sessions = {"model": graph.session}

    def draw(n: int) -> Callable[[], object]:
        return lambda: imagegen.generate(config, sessions, LABEL, n, 0, STEPS)

    result = {}
    for c in concurrency:
        half = max(c // 2, 1)
        result[c] = {
            "one_thread": rate(draw(c), c, seconds),
            "two_threads": rate(draw(half), half, seconds, threads=2),
        }
    return result


def transformer_inprocess(repository: Path, seconds: float) -> dict[str, Any]:
    """Sequences/s of model.onnx over TOKENS tokens at each batch size, and the best on 2 threads."""
    graph = Graph(_latest(repository / LM) / "model.onnx", Settings())
    name = graph.inputs[0].name
    sweep = {}
    for size in BATCH_SWEEP:
        feeds = {name: token_ids(size)}
        sweep[size] = rate(lambda f=feeds: graph.run(f), size, seconds / 2)  # type: ignore[misc]
    best = max(sweep, key=lambda s: sweep[s])
    feeds = {name: token_ids(best)}
    two = rate(lambda: graph.run(feeds), best, seconds / 2, threads=2)
    return {"sweep": sweep, "best_batch": best, "one_thread": sweep[best], "two_threads": two}


def token_ids(batch: int) -> np.ndarray:
    """The fixed input: TOKENS word ids (2.. : past <unk> and the newline), the same every row."""
    row = (np.arange(TOKENS, dtype=np.int64) * 37) % 7000 + 2
    return np.repeat(row[None], batch, axis=0)


def _latest(model_dir: Path) -> Path:
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


# ---------------------------------------------------------------------------------------------
# through the service


def image_request() -> Request:
    body = {"model": IMAGE_MODEL, "label": LABEL, "n": 1, "seed": 0, "steps": STEPS}
    return Request("POST", "/v1/images/generations", orjson.dumps(body), _JSON)


def transformer_request() -> Request:
    ids = token_ids(1)
    body = {
        "inputs": [
            {
                "name": "input_ids",
                "shape": list(ids.shape),
                "datatype": "INT64",
                "data": ids.ravel().tolist(),
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    return Request("POST", f"/v2/models/{LM}/infer", orjson.dumps(body), _JSON)


_JSON = {"Content-Type": "application/json"}


def start(repository: Path, work_dir: Path, mode: str) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--models-dir", str(repository)]
    env = {"SEEDSERVE_STRICT_READINESS": "true", **SERVICE_ENV, **MODES[mode]}
    return start_server(
        f"seedserve-compute-{mode}",
        argv,
        f"{url}/v2/health/ready",
        url,
        work_dir / "logs",
        env,
        ROOT,
    )


def check(server: Server, request: Request) -> None:
    """One request first: it must succeed (and warms the model up)."""
    response = httpx.post(
        server.url + request.path,
        content=request.body,
        headers=dict(request.headers or {}),
        timeout=120,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{request.path}: {response.status_code} {response.text[:500]}")


def served_metric(server: Server, name: str, model: str) -> tuple[float, float]:
    """(count, sum) of a histogram for `model` from /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    values = {}
    for suffix in ("count", "sum"):
        prefix = f'{name}_{suffix}{{model="{model}",'
        values[suffix] = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )
    return values["count"], values["sum"]


def _load_point(
    generator: str,
    server: Server,
    histogram: str,
    model: str,
    request: Request,
    concurrency: int,
    seconds: float,
) -> tuple[LoadResult, float, tuple[float, float], tuple[float, float]]:
    """One load of a point: its result, the server's CPU seconds, the histogram's (count, sum)
    before and after."""
    before = served_metric(server, histogram, model)
    cpu_before = server.cpu_seconds()
    load = run_load(generator, server.url, request, concurrency, seconds, 300.0)
    cpu = server.cpu_seconds() - cpu_before
    return load, cpu, before, served_metric(server, histogram, model)


def measure_service(
    plan: Plan, generator: str, repository: Path, work_dir: Path
) -> list[dict[str, Any]]:
    works = {
        "diffusion": (IMAGE_MODEL, image_request(), "seedserve_step_batch_generations"),
        "transformer": (LM, transformer_request(), "seedserve_inference_batch_size"),
    }
    rows = []
    for mode in plan.modes:
        server = start(repository, work_dir, mode)
        try:
            for work in plan.works:
                model, request, histogram = works[work]
                check(server, request)
                for c in plan.concurrency:
                    point = (server, histogram, model, request, c)
                    load, cpu, before, after = _load_point(generator, *point, plan.load_s)
                    longer = None if plan.quick else longer_load_s(load, plan.load_s)  # smoke: any
                    if longer is not None:  # the first run warmed up
                        load, cpu, before, after = _load_point(generator, *point, longer)
                    if load.errors or not load.requests:
                        raise RuntimeError(f"{work} {mode} c={c}: {load}\n{server.log_tail()}")
                    calls = after[0] - before[0]
                    rows.append(
                        {
                            "work": work,
                            "batching": mode,
                            "concurrency": c,
                            "generator": load.generator,
                            "requests": load.requests,
                            "per_s": load.rps,
                            "p50_ms": load.p50_ms,
                            "p99_ms": load.p99_ms,
                            "server_cores": cpu / load.duration_s,  # CPU seconds per second
                            # requests (diffusion: generations) per onnxruntime call, on average
                            "mean_batch": (after[1] - before[1]) / calls if calls else None,
                        }
                    )
        finally:
            stop_server(server)
    return rows


# ---------------------------------------------------------------------------------------------
# the run and its report


def run(plan: Plan, generator: str) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-compute-") as tmp:
        work_dir = Path(tmp)
        repository = make_repository(work_dir)
        diffusion = (
            diffusion_inprocess(repository, plan.concurrency, plan.point_s)
            if "diffusion" in plan.works
            else {}
        )
        transformer = (
            transformer_inprocess(repository, plan.point_s) if "transformer" in plan.works else {}
        )
        rows = measure_service(plan, generator, repository, work_dir)
    for row in rows:
        ceiling = diffusion[row["concurrency"]] if row["work"] == "diffusion" else transformer
        row["ceiling_per_s"] = ceiling["one_thread"]
        row["two_threads_per_s"] = ceiling["two_threads"]
        row["ratio"] = row["per_s"] / ceiling["one_thread"]
        row["ratio_two_threads"] = row["per_s"] / ceiling["two_threads"]
    top = max(plan.concurrency)
    targets = {
        work: next(
            r["ratio"]
            for r in rows
            if r["work"] == work and r["batching"] == "on" and r["concurrency"] == top
        )
        for work in plan.works
        if "on" in plan.modes
    }
    return {
        "quick": plan.quick,
        "machine": f"{os.cpu_count()} CPUs",
        "seconds": time.perf_counter() - started,
        "service_env": SERVICE_ENV,
        "diffusion_inprocess": {str(c): v for c, v in diffusion.items()},
        "transformer_inprocess": transformer
        and {**transformer, "sweep": {str(k): v for k, v in transformer["sweep"].items()}},
        "service": rows,
        "target": {"concurrency": top, "ratio": TARGET, "ratios": targets},
    }


def markdown(doc: dict[str, Any]) -> str:
    tf = doc["transformer_inprocess"] or {"best_batch": "not measured", "sweep": {}}
    env = ", ".join(f"`{k}={v}`" for k, v in doc["service_env"].items())
    lines = [
        "# Compute-bound models: the service vs the in-process ceiling",
        "",
        f"{doc['machine']}; onnxruntime one intra-op thread per call; {doc['seconds']:.0f} s run"
        + (" (--quick: figures are not meaningful)" if doc["quick"] else "")
        + f". Service on 127.0.0.1 with {env}; batching `on` = step batching forced on "
        "(`SEEDSERVE_STEP_BATCHING_MIN_SAVING_MS` and `_MIN_GAIN` -1000), `auto` = the defaults (step batching "
        "where the denoiser's load-time timing says it pays), `off` = "
        "`SEEDSERVE_STEP_BATCHING=false` and `SEEDSERVE_BATCHING=false`.",
        "",
        f"- **diffusion**: {IMAGE_MODEL}, 1 image per request, DDIM {STEPS} steps, default "
        "guidance; /s = images/s. Ceiling at concurrency c: c images in one batched loop, one "
        "thread; `2 threads`: two loops of c/2 at once. Batch = generations per denoiser call; server cores = the service's CPU seconds per second.",
        f"- **transformer**: {LM} model.onnx over {TOKENS} tokens via V2 infer (binary output); "
        f"/s = sequences/s. Ceiling: onnxruntime at its best batch ({tf['best_batch']}), one "
        "thread; `2 threads`: the same on two threads at once. Batch = sequences per call.",
        "",
        "| work | batching | concurrency | served /s | ceiling /s | served / ceiling | "
        "2 threads /s | served / 2 threads | mean batch | server cores | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["service"]:
        batch = "" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        lines.append(
            f"| {r['work']} | {r['batching']} | {r['concurrency']} | {r['per_s']:.1f} | "
            f"{r['ceiling_per_s']:.1f} | {r['ratio']:.2f} | {r['two_threads_per_s']:.1f} | "
            f"{r['ratio_two_threads']:.2f} | {batch} | {r['server_cores']:.2f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    sweep = ", ".join(f"{k}: {v:.0f}" for k, v in tf["sweep"].items())
    target = doc["target"]
    if sweep:
        lines += ["", f"Transformer in process, sequences/s by batch size (one thread): {sweep}."]
    lines += [
        "",
        f"Target (issue #5): batching on, concurrency {target['concurrency']}, served / ceiling "
        f">= {target['ratio']:.2f}: "
        + "; ".join(
            f"{work} {ratio:.2f} ({'met' if ratio >= target['ratio'] else 'not met'})"
            for work, ratio in target["ratios"].items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m bench.compute", __doc__)
    parser.add_argument("--work", choices=WORKS, action="append", help="only this (repeatable)")
    parser.add_argument("--batching", choices=tuple(MODES), action="append", help="only this mode")
    args = parser.parse_args(argv)
    plan = make_plan(args.quick, args.work or WORKS, args.batching or tuple(MODES))
    doc = run(plan, args.generator)
    cli.write_results(args.out, "compute", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
