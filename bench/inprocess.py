"""The ceiling: the same ONNX file called in this process, no HTTP.

The session is the service's own `Graph` (same options: one intra-op thread, graph optimisation,
no spinning), so the only difference from a served request is the transport. Measured: `run`
at batch 1 (calls/s and per-call percentiles), the best batch (items/s over a sweep of batch
sizes), batch 1 including V2 JSON decode and encode (what any JSON server must at least do),
and PyTorch eager on the same architecture with the same weights (taken from the ONNX file and
checked against onnxruntime) when torch is installed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.workloads import v2_json_body
from service.runtime import Graph
from service.settings import Settings

BATCH_SIZES = (1, 8, 32, 64, 128, 256)


@dataclass
class CallStats:
    """A function called back to back for a while."""

    batch: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.calls_per_s * self.batch

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "calls_per_s": self.calls_per_s, "items_per_s": self.items_per_s}


def time_calls(fn: Callable[[], object], batch: int, seconds: float) -> CallStats:
    """Call `fn` repeatedly for `seconds` (after a few warm-up calls), timing each call."""
    for _ in range(3):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    stop = started + seconds
    now = started
    while now < stop:
        t0 = now
        fn()
        now = time.perf_counter()
        times.append(now - t0)
    ms = np.array(times) * 1e3
    return CallStats(
        batch=batch,
        calls=len(times),
        seconds=now - started,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


@dataclass
class InProcessResult:
    ort_batch1: CallStats
    ort_sweep: list[CallStats]
    ort_json_batch1: CallStats
    torch_batch1: CallStats | None = None
    torch_sweep: list[CallStats] = field(default_factory=list)
    torch_note: str = ""

    @property
    def ort_best(self) -> CallStats:
        return max(self.ort_sweep, key=lambda s: s.items_per_s)

    @property
    def torch_best(self) -> CallStats | None:
        return max(self.torch_sweep, key=lambda s: s.items_per_s) if self.torch_sweep else None

    def as_dict(self) -> dict[str, Any]:
        best_torch = self.torch_best
        return {
            "ort_batch1": self.ort_batch1.as_dict(),
            "ort_best": self.ort_best.as_dict(),
            "ort_sweep": [s.as_dict() for s in self.ort_sweep],
            "ort_json_batch1": self.ort_json_batch1.as_dict(),
            "torch_batch1": self.torch_batch1.as_dict() if self.torch_batch1 else None,
            "torch_best": best_torch.as_dict() if best_torch else None,
            "torch_sweep": [s.as_dict() for s in self.torch_sweep],
            "torch_note": self.torch_note,
        }


def json_round_trip(graph: Graph, body: bytes) -> Callable[[], bytes]:
    """Decode a V2 JSON body, run, encode a V2 JSON answer: the least a JSON server does."""

    def call() -> bytes:
        request = orjson.loads(body)
        feeds = {
            x["name"]: np.asarray(x["data"], dtype=np.float32).reshape(x["shape"])
            for x in request["inputs"]
        }
        results = graph.run(feeds)
        outputs = [
            {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
            for n, r in zip(graph.output_names, results, strict=True)
        ]
        return orjson.dumps({"model_name": "m", "outputs": outputs})

    return call


def measure_ort(path: Path, tensor: np.ndarray, seconds: float) -> InProcessResult:
    graph = Graph(path, Settings(provider="cpu"))
    name = graph.inputs[0].name
    per_size = max(seconds / (len(BATCH_SIZES) + 2), 0.05)
    batch1 = time_calls(lambda: graph.run({name: tensor}), 1, per_size)
    sweep = []
    for size in BATCH_SIZES:
        batch = np.ascontiguousarray(np.repeat(tensor, size, axis=0))
        sweep.append(time_calls(functools.partial(graph.run, {name: batch}), size, per_size))
    with_json = time_calls(json_round_trip(graph, v2_json_body(tensor, name)), 1, per_size)
    return InProcessResult(batch1, sweep, with_json)


def measure_torch(
    path: Path, card: dict[str, Any], tensor: np.ndarray, seconds: float
) -> dict[str, Any]:
    """PyTorch eager on the same architecture and weights; {} with a note when not possible."""
    try:
        import torch

        from bench.torch_eager import load_classifier
    except ImportError:
        return {"note": "torch is not installed"}
    torch.set_num_threads(1)  # like the onnxruntime session: one intra-op thread
    try:
        model, max_diff = load_classifier(path, card, tensor)
    except (KeyError, ValueError) as exc:
        return {"note": f"could not rebuild the model in torch: {exc}"}
    per_size = max(seconds / (len(BATCH_SIZES) + 1), 0.05)
    stats = []
    with torch.inference_mode():
        for size in BATCH_SIZES:
            batch = torch.from_numpy(np.ascontiguousarray(np.repeat(tensor, size, axis=0)))
            stats.append(time_calls(functools.partial(model, batch), size, per_size))
    return {"sweep": stats, "note": f"same weights as the ONNX file (max |diff| {max_diff:.1e})"}


def measure(
    path: Path, card: dict[str, Any], tensor: np.ndarray, seconds: float
) -> InProcessResult:
    result = measure_ort(path, tensor, seconds)
    eager = measure_torch(path, card, tensor, seconds / 2)
    result.torch_sweep = eager.get("sweep", [])
    result.torch_batch1 = result.torch_sweep[0] if result.torch_sweep else None
    result.torch_note = eager["note"]
    return result
