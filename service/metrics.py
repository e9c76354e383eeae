"""Prometheus metrics, defined once. Names in base units, `_total` on counters, histograms only."""

from __future__ import annotations

import bisect
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "seedserve"
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL = ("model", "version")


class Metrics:
    """Every metric of the service, on one collector registry (a fresh one per app in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # HTTP and gRPC requests this process is serving now (the gauges' sum, readable without
        # the registry): a batcher runs a lone request inline only when it is 1
        self.requests_in_flight = 0
        # With several worker processes (`--workers N`), prometheus_client writes every sample to
        # files in PROMETHEUS_MULTIPROC_DIR and /metrics merges them; gauges then need a rule
        # for combining processes.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        r = self.registry
        self.inference_requests = Counter(
            f"{PREFIX}_inference_requests_total",
            "Inference requests by model, version and outcome (success, invalid, error, rejected).",
            [*MODEL, "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_inference_request_duration_seconds",
            "Time from a request reaching the data plane to its answer, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            f"{PREFIX}_inference_queue_duration_seconds",
            "Time a request waited before its inference started, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            f"{PREFIX}_inference_compute_duration_seconds",
            "Time spent in onnxruntime per execution, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_inference_batch_size",
            "Batch size of each onnxruntime execution.",
            MODEL,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_count = Counter(
            f"{PREFIX}_inference_count_total",
            "Items inferred (a batch of 8 counts 8).",
            MODEL,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_inference_queue_depth",
            "Requests waiting in the model's batching queue.",
            MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        # Sequences of stateful models: with several workers every one sees the shared store,
        # so the largest worker's view is the answer (livemax), not their sum.
        self.sequences_live = Gauge(
            f"{PREFIX}_sequences_live",
            "Live sequences of a stateful model (as of its last sequence request).",
            MODEL,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.sequence_state_bytes = Gauge(
            f"{PREFIX}_sequence_state_bytes",
            "Bytes of state the live sequences of a stateful model hold (as of its last request).",
            MODEL,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rejected = Counter(
            f"{PREFIX}_inference_rejected_total",
            "Requests shed before inference, by reason (queue_full, deadline).",
            [*MODEL, "reason"],
            registry=r,
        )
        self.generated_images = Counter(
            f"{PREFIX}_generated_images_total", "Images generated.", MODEL, registry=r
        )
        self.denoising_steps = Counter(
            f"{PREFIX}_denoising_steps_total",
            "Denoising steps executed (one step over a whole batch counts once).",
            MODEL,
            registry=r,
        )
        self.step_batch_generations = Histogram(
            f"{PREFIX}_step_batch_generations",
            "Image generations whose denoising steps shared each denoiser call (step batching).",
            MODEL,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.generation_duration = Histogram(
            f"{PREFIX}_generation_duration_seconds",
            "Time to generate one request's images or text, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            f"{PREFIX}_generated_tokens_total", "Tokens generated.", MODEL, registry=r
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens_total", "Prompt tokens processed.", MODEL, registry=r
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from a generation request to its first token, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between consecutive generated tokens, in seconds.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_batch_size = Histogram(
            f"{PREFIX}_decode_batch_size",
            "Sequences advanced by each language-model decode step (continuous batching).",
            MODEL,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.tasks_in_flight = Gauge(
            f"{PREFIX}_generation_tasks_in_flight",
            "Generation requests running now.",
            MODEL,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when the model version is loaded and ready, 0 when it failed to load.",
            [*MODEL, "provider"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.models_loaded = Gauge(
            f"{PREFIX}_models_loaded",
            "Model versions loaded and ready.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request latency by method and route template, in seconds.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            f"{PREFIX}_http_requests_in_flight",
            "HTTP requests being handled now (health and metrics excluded).",
            registry=r,
            multiprocess_mode="livesum",
        )

        self.grpc_requests = Counter(
            f"{PREFIX}_grpc_requests_total",
            "gRPC calls by method and status code (OK, INVALID_ARGUMENT, ...).",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            f"{PREFIX}_grpc_request_duration_seconds",
            "gRPC call latency by method, in seconds (a stream: its whole life).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_in_flight = Gauge(
            f"{PREFIX}_grpc_requests_in_flight",
            "gRPC calls being handled now (health checks excluded).",
            registry=r,
            multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        """The text exposition: this process's registry, or every worker's samples merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """`count` observations of `value` at once, as `count` calls of `histogram.observe(value)`
    would leave it (prometheus_client's observe takes one: the decode engine, which times
    every sequence's token of a step alike, would call it once per token)."""
    if count == 1:
        histogram.observe(value)
        return
    histogram._sum.inc(value * count)  # the fields observe() updates, in-process or mmapped
    histogram._buckets[bisect.bisect_left(histogram._upper_bounds, value)].inc(count)
