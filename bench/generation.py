"""`python -m bench.generation [--quick] [--out bench/results]`: generation, in one run.

1. Cached decoding versus recomputing the prefix, in process (onnxruntime, one intra-op
   thread, the service's own `Graph` sessions): the cost of the next token's logits after a
   prefix of 32, 128 and 256 tokens, with the step graph and its state (KV cache for the
   Transformer, recurrent/SSM state for the others) versus the full graph run over the whole
   prefix again. A graph with fewer positions (the Transformer has 128) is measured at its
   longest prefix instead, and the report says so.
2. The live service on 127.0.0.1 (a repository with only the models used): completions
   tokens/s with 64-token outputs (transformer-austen and lstm-austen at concurrency 1, 8 and
   32), next-word requests/s, diffusion images/s at 10 and 50 DDIM steps, each at two
   concurrency levels, against the same work done in this process.

Writes generation.json and generation.md to --out. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench import cli
from bench.decoding import generate_batch
from bench.inprocess import time_calls
from bench.loadgen import Request, longer_load_s, run_load
from bench.procs import Server, free_port, start_server, stop_server
from service.runtime import Graph
from service.settings import Settings
from service.tasks import imagegen
from service.tasks.sampling import SamplingParams
from service.tasks.textgen import Decoder, StepModel
from service.tasks.tokenizer import WordTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
PREFIXES = (32, 128, 256)
CACHE_MODELS = ("transformer-austen", "mamba-austen", "lstm-austen")
LM = "transformer-austen"
# completions are measured on every model here (the first also serves next-word)
COMPLETION_MODELS = (LM, "lstm-austen")
IMAGE_MODEL = "diffusion-mnist"
NEW_TOKENS = 64
IMAGES_PER_REQUEST = 4
PROMPT = "It is a truth universally acknowledged, that"


@dataclass(frozen=True)
class Plan:
    quick: bool
    point_s: float  # seconds per in-process point
    load_s: float  # seconds per HTTP point
    prefixes: tuple[int, ...]
    cache_models: tuple[str, ...]
    image_steps: tuple[int, ...]
    text_concurrency: tuple[int, ...]
    image_concurrency: tuple[int, ...]
    completion_models: tuple[str, ...] = (LM,)
    completion_concurrency: tuple[int, ...] = (1, 8)


def make_plan(quick: bool) -> Plan:
    if quick:
        return Plan(True, 0.05, 0.4, PREFIXES, (LM,), (10,), (1, 8), (1, 4))
    return Plan(
        False, 1.0, 4.0, PREFIXES, CACHE_MODELS, (10, 50), (1, 8), (1, 4),
        COMPLETION_MODELS, (1, 8, 32),
    )  # fmt: skip


def _latest_version(model_dir: Path) -> Path:
    return max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "config.json").read_text()))


# ---------------------------------------------------------------------------------------------
# 1. cache versus recompute


def cache_vs_recompute(
    model_dir: Path, prefixes: Sequence[int], point_s: float, settings: Settings
) -> dict[str, Any]:
    """ms per next token after each prefix: step graph with state vs full graph over it all."""
    config = _config(model_dir)
    folder = _latest_version(model_dir)
    step = StepModel(Graph(folder / config["graphs"]["step"], settings).run, config)
    full = Graph(folder / "model.onnx", settings)
    limit = config.get("max_length")
    rng = np.random.default_rng(0)
    vocab = int(config["tokenizer"]["vocab_size"])
    rows: list[dict[str, Any]] = []
    for asked in prefixes:
        # the next token sits at position `prefix`: it must be inside the graph's positions
        prefix = asked if limit is None or asked < limit else int(limit) - 1
        if any(r["prefix"] == prefix for r in rows):
            continue  # a longer prefix than the graph has positions: already measured
        ids = rng.integers(2, vocab, size=(1, prefix + 1), dtype=np.int64)
        _, state = step.run(ids[:, :prefix], step.initial_state(1))
        last = ids[:, prefix:]
        cached = time_calls(functools.partial(step.run, last, state), 1, point_s)
        feeds = {full.inputs[0].name: ids}
        recompute = time_calls(functools.partial(full.run, feeds), 1, point_s)
        rows.append(
            {
                "prefix_asked": asked,
                "prefix": prefix,
                "cached_ms": cached.p50_ms,
                "recompute_ms": recompute.p50_ms,
                "speedup": recompute.p50_ms / cached.p50_ms,
            }
        )
    first, last_row = rows[0], rows[-1]
    return {
        "model": model_dir.name,
        "max_length": limit,
        "not_measured": [p for p in prefixes if not any(r["prefix_asked"] == p for r in rows)],
        "rows": rows,
        "flatness": last_row["cached_ms"] / first["cached_ms"],
        "flatness_span": [first["prefix"], last_row["prefix"]],
        "speedup_longest": last_row["speedup"],
    }


# ---------------------------------------------------------------------------------------------
# 2. the service versus the same work in process


@dataclass
class Work:
    """One kind of request: how to make it over HTTP and how to do its work in process."""

    name: str
    request: Request
    units_per_request: int  # tokens or images a request produces (1 for next-word)
    unit: str
    concurrency: tuple[int, ...]
    # concurrency -> (units per second in process for that many requests' worth of work)
    inprocess: Callable[[int], float]


def _json_request(path: str, body: dict[str, Any]) -> Request:
    return Request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})


def _units_per_s(fn: Callable[[], object], units: int, seconds: float) -> float:
    stats = time_calls(fn, 1, seconds)
    return units * stats.calls_per_s


def _decoder(model_dir: Path, settings: Settings) -> Decoder:
    config, folder = _config(model_dir), _latest_version(model_dir)
    return Decoder(
        Graph(folder / config["graphs"]["step"], settings).run,
        config,
        WordTokenizer.load(folder / config["tokenizer"]["vocab"]),
    )


def completion_work(plan: Plan, repository: Path, settings: Settings, name: str) -> Work:
    """64-token completions of one model; in process: c prompts in one generate_batch."""
    decoder = _decoder(repository / name, settings)
    params = SamplingParams(temperature=1.0, seed=0)

    def completions(c: int) -> float:
        return _units_per_s(
            lambda: generate_batch(decoder, [PROMPT] * c, NEW_TOKENS, params),
            NEW_TOKENS * c,
            plan.point_s * 2,
        )

    return Work(
        "completions" if name == LM else f"completions {name}",
        _json_request(
            "/v1/completions",
            {"model": name, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "seed": 0},
        ),
        NEW_TOKENS,
        "tokens",
        plan.completion_concurrency,
        completions,
    )


def build_work(plan: Plan, repository: Path, settings: Settings) -> list[Work]:
    image_dir = repository / IMAGE_MODEL
    image_config = _config(image_dir)
    decoder = _decoder(repository / LM, settings)
    denoiser = Graph(_latest_version(image_dir) / "model.onnx", settings)
    sessions = {"model": denoiser.session}
    work_s = plan.point_s * 2

    def next_word(c: int) -> float:
        return _units_per_s(lambda: decoder.next_word_distribution(PROMPT, 10), 1, work_s)

    def images(steps: int) -> Callable[[int], float]:
        def run(c: int) -> float:
            n = IMAGES_PER_REQUEST * c
            return _units_per_s(
                lambda: imagegen.generate(image_config, sessions, 3, n, 0, steps), n, work_s
            )

        return run

    works = [completion_work(plan, repository, settings, name) for name in plan.completion_models]
    works += [
        Work(
            "next-word",
            _json_request(f"/v1/models/{LM}/next-word", {"text": PROMPT, "top_k": 10}),
            1,
            "requests",
            plan.text_concurrency,
            next_word,
        ),
    ]
    for steps in plan.image_steps:
        body = {"model": IMAGE_MODEL, "label": 3, "n": IMAGES_PER_REQUEST, "seed": 0}
        works.append(
            Work(
                f"images-ddim{steps}",
                _json_request("/v1/images/generations", {**body, "steps": steps}),
                IMAGES_PER_REQUEST,
                "images",
                plan.image_concurrency,
                images(steps),
            )
        )
    return works


def make_repository(work_dir: Path, names: Sequence[str] = (LM, IMAGE_MODEL)) -> Path:
    """Copies of the served models (the service refuses symlinked model folders)."""
    repository = work_dir / "repository"
    for name in dict.fromkeys(names):
        source = MODELS / name
        version = _latest_version(source)
        (repository / name).mkdir(parents=True)
        shutil.copy(source / "config.json", repository / name / "config.json")
        shutil.copytree(
            version, repository / name / version.name, ignore=shutil.ignore_patterns("*.png")
        )
    return repository


def start_service(repository: Path, work_dir: Path) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--models-dir", str(repository)]
    return start_server(
        "seedserve-generation",
        argv,
        f"{url}/v2/health/ready",
        url,
        work_dir / "logs",
        # completions at concurrency 32 must not be refused (the default limit is 16)
        env={"SEEDSERVE_STRICT_READINESS": "true"},
        cwd=ROOT,
    )


def check_work(server: Server, work: Work) -> None:
    """One request first: it must succeed and produce the units it is counted for."""
    response = httpx.post(
        server.url + work.request.path,
        content=work.request.body,
        headers=dict(work.request.headers or {}),
        timeout=120,
    )
    response.raise_for_status()
    data = response.json()
    if work.unit == "tokens" and data["usage"]["completion_tokens"] != work.units_per_request:
        raise RuntimeError(f"{work.name}: expected {work.units_per_request} tokens: {data}")
    if work.unit == "images" and len(data["data"]) != work.units_per_request:
        raise RuntimeError(f"{work.name}: expected {work.units_per_request} images")


def load_seconds(plan: Plan, work: Work, concurrency: int) -> float:
    """How long to load one point: longer for completions at high concurrency, whose requests
    take half a second at c=32 (wrk counts whole requests: over 4 s a connection finishes about
    8, so the rate would move in steps of an eighth)."""
    if work.units_per_request > 1 and work.unit == "tokens":
        return plan.load_s * max(1, concurrency // 8)
    return plan.load_s


def measure_service(
    plan: Plan, generator: str, settings: Settings, repeats: int = 1
) -> list[dict[str, Any]]:
    """Every work at each concurrency, served and in process one after the other; with
    `repeats` > 1, that many interleaved rounds (every point once per round), each row then the
    medians (the ratio: the median of the rounds' ratios, each from the same moment)."""
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        work_dir = Path(tmp)
        repository = make_repository(work_dir, (LM, IMAGE_MODEL, *plan.completion_models))
        works = build_work(plan, repository, settings)
        server = start_service(repository, work_dir)
        try:
            for work in works:
                check_work(server, work)
            for _ in range(repeats):
                for work in works:
                    for c in work.concurrency:
                        point = measure_point(plan, generator, server, work, c)
                        rounds.setdefault((work.name, c), []).append(point)
        finally:
            stop_server(server)
    return [median_row(points) for points in rounds.values()]


def measure_point(plan: Plan, generator: str, server: Server, work: Work, c: int) -> dict[str, Any]:
    seconds = load_seconds(plan, work, c)
    load = run_load(generator, server.url, work.request, c, seconds, 300.0)
    longer = None if plan.quick else longer_load_s(load, seconds)  # a smoke run's rate: any
    if longer is not None:  # the first run warmed up
        load = run_load(generator, server.url, work.request, c, longer, 300.0)
    if load.errors or not load.requests:
        raise RuntimeError(f"{work.name} at {c}: {load}\n{server.log_tail()}")
    served = load.rps * work.units_per_request
    inprocess = work.inprocess(c)
    return {
        "work": work.name,
        "unit": work.unit,
        "concurrency": c,
        "generator": load.generator,
        "requests": load.requests,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "served_per_s": served,
        "inprocess_per_s": inprocess,
        "ratio": served / inprocess,
    }


def median_row(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the rounds of a point: medians of the numbers, every round's ratio kept."""
    if len(points) == 1:
        return points[0]
    row = dict(points[0])
    for key in ("requests", "rps", "p50_ms", "p99_ms", "served_per_s", "inprocess_per_s", "ratio"):
        row[key] = float(np.median([p[key] for p in points]))
    row["ratios"] = [p["ratio"] for p in points]
    return row


# ---------------------------------------------------------------------------------------------
# report


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Generation benchmark",
        "",
        f"{doc['machine']}; onnxruntime one intra-op thread; {doc['seconds']:.0f} s run"
        + (" (--quick: figures are not meaningful)" if doc["quick"] else "")
        + ".",
        "",
        "## Cached decoding vs recomputing the prefix (in process, ms per next token, p50)",
        "",
        "| model | prefix | cached ms | recompute ms | recompute / cached |",
        "|---|---:|---:|---:|---:|",
    ]
    for block in doc["cache"]:
        for row in block["rows"]:
            prefix = str(row["prefix"])
            if row["prefix"] != row["prefix_asked"]:
                prefix += f" (asked {row['prefix_asked']}; graph has {block['max_length']})"
            lines.append(
                f"| {block['model']} | {prefix} | {row['cached_ms']:.3f} | "
                f"{row['recompute_ms']:.3f} | {row['speedup']:.1f}x |"
            )
        if block["not_measured"]:
            lines.append(
                f"| {block['model']} | {', '.join(map(str, block['not_measured']))} | "
                f"n/a: the graph has {block['max_length']} positions | | |"
            )
    lines += ["", "| model | cached flatness (longest / 32) | speedup at longest prefix |"]
    lines += ["|---|---:|---:|"]
    for block in doc["cache"]:
        lo, hi = block["flatness_span"]
        lines.append(
            f"| {block['model']} | {block['flatness']:.2f}x ({hi} vs {lo}) | "
            f"{block['speedup_longest']:.1f}x at {hi} |"
        )
    lines += [
        "",
        "## Through the service (127.0.0.1) vs the same work in process",
        "",
        f"Completions: {LM} (and `completions <model>` rows for "
        f"{', '.join(m for m in COMPLETION_MODELS if m != LM)} in a full run), {NEW_TOKENS}-token "
        f"outputs, continuous batching in the service; next-word: {LM}; images: "
        f"{IMAGE_MODEL}, {IMAGES_PER_REQUEST} per request, DDIM. In process at concurrency c = "
        "c requests' worth of work in one batched call (generate_batch / n images).",
        "",
    ]
    repeats = int(doc.get("repeats", 1))
    if repeats > 1:
        lines += [
            f"Medians of {repeats} interleaved rounds (every point once per round); the ratio "
            "is the median of the rounds' ratios, each measured at one moment, listed after it.",
            "",
        ]
    lines += [
        "| work | concurrency | served /s | in process /s | served / in process | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["service"]:
        each = ""
        if "ratios" in row:
            each = " (" + ", ".join(f"{r:.2f}" for r in row["ratios"]) + ")"
        lines.append(
            f"| {row['work']} | {row['concurrency']} | {row['served_per_s']:.1f} {row['unit']} | "
            f"{row['inprocess_per_s']:.1f} | {row['ratio']:.2f}{each} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run(plan: Plan, generator: str, repeats: int = 1) -> dict[str, Any]:
    started = time.perf_counter()
    settings = Settings()
    cache = [
        cache_vs_recompute(MODELS / name, plan.prefixes, plan.point_s, settings)
        for name in plan.cache_models
    ]
    service = measure_service(plan, generator, settings, repeats)
    return {
        "quick": plan.quick,
        "repeats": repeats,
        "machine": f"{os.cpu_count()} CPUs",
        "seconds": time.perf_counter() - started,
        "cache": cache,
        "service": service,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m bench.generation", __doc__)
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved rounds of the service points (medians)"
    )
    args = parser.parse_args(argv)
    doc = run(make_plan(args.quick), args.generator, max(1, args.repeats))
    cli.write_results(args.out, "generation", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
