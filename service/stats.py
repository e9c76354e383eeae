"""Triton's statistics extension: cumulative counts and durations per model version.

Each `TensorModel` owns one `ModelStats`. The data plane's `track` records every request's
outcome and duration; the batcher (`Batcher._execute`) and `TensorModel.run` record each
execution's queue and compute times. Every update happens on the event loop's thread (times
measured in the inference threads come back with the results), so the counters are plain
integer adds with no lock.

Each worker process keeps its own: with `--workers N` a statistics request is answered by one
worker with the requests that worker served (Prometheus' /metrics merges the workers). Numbers
start at zero when a version loads; a reload starts them again, as in Triton.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    """Triton's StatisticDuration: how many times, and their total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def report(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    """The executions of one batch size (each Duration counts executions, not requests)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """One model version's statistics, in Triton's terms:

    - `success` / `fail`: requests by outcome and their duration through the data plane;
    - `queue`: each executed request's wait for an inference thread (or batch);
    - `compute_input` (stacking a batch's inputs), `compute_infer` (onnxruntime's run),
      `compute_output` (splitting and handing back the outputs): counted once per request, each
      request of a batch taking the whole execution's time, as Triton counts them;
    - `inference_count`: items inferred (a batch of 8 counts 8); `execution_count`: graph runs;
      `batches`: the executions of each batch size;
    - `cache_hit` / `cache_miss`: there is no response cache, they stay zero.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0  # milliseconds since the epoch; 0 = never
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def finished(self, succeeded: bool, duration_ns: int) -> None:
        """One request answered (or refused) after `duration_ns`."""
        (self.success if succeeded else self.fail).add(duration_ns)

    def queued(self, wait_ns: int) -> None:
        """One request waited `wait_ns` before its execution started."""
        self.queue.add(wait_ns)

    def executed(
        self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One execution of `batch_size` items that answered `requests` requests."""
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStats()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def report(self, name: str, version: int) -> dict[str, Any]:
        """Triton's `$model_stat` JSON object (as Triton's core writes it, `response_stats` and
        `memory_usage` included; both empty here)."""
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.report(),
                "fail": self.fail.report(),
                "queue": self.queue.report(),
                "compute_input": self.compute_input.report(),
                "compute_infer": self.compute_infer.report(),
                "compute_output": self.compute_output.report(),
                "cache_hit": self.cache_hit.report(),
                "cache_miss": self.cache_miss.report(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.report(),
                    "compute_infer": batch.compute_infer.report(),
                    "compute_output": batch.compute_output.report(),
                }
                for size, batch in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
