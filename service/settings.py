"""Service settings: every field is an environment variable `SEEDSERVE_<FIELD>` (or a CLI flag)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEEDSERVE_", extra="forbid", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to bind."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """TCP port of the gRPC Open Inference Protocol endpoint (`inference.GRPCInferenceService`
    and `grpc.health.v1.Health`), on the same address; 0 = no gRPC."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes (each loads every model)."""
    http_server: Literal["uvicorn", "granian"] = "uvicorn"
    """The HTTP server that runs the app: uvicorn (httptools), or Granian (a Rust HTTP server
    for ASGI apps; `pip install granian`). Measured side by side in docs/benchmarks.md."""
    cluster_dir: Path | None = None
    """The folder the worker processes share to keep one repository state (loads, unloads and
    polling apply on every worker); set by `python -m service --workers N` to a private folder
    of that run; unset = one worker, everything local."""
    models_dir: Path = Path("models")
    """The model repository to serve (Triton layout, see docs/model-repository.md)."""
    load_versions: int = Field(1, ge=1, le=100)
    """How many of each model's newest versions to load (Triton's `latest` policy), unless the
    model's config has a `version_policy`."""
    auto_max_batch_size: int = Field(32, ge=0, le=65536)
    """`max_batch_size` given to a model without a config whose every input and output has a
    leading dynamic axis (Triton's auto-complete; 0 = never batch such models)."""

    provider: Literal["auto", "cpu", "cuda"] = "auto"
    """Execution provider: `cuda` if asked for and available (else fall back to cpu), `auto` = cuda
    when onnxruntime has it, `cpu` = always cpu."""
    intra_op_threads: int = Field(1, ge=0, le=256)
    """onnxruntime threads inside one operator (0 = onnxruntime's default, one per core)."""
    inter_op_threads: int = Field(1, ge=0, le=256)
    """onnxruntime threads across operators (0 = onnxruntime's default)."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """onnxruntime graph optimisation level."""
    wide_batch_threads: int = Field(0, ge=0, le=256)
    """onnxruntime threads for a batched graph's big batches (4 items or more): a second session,
    made at the first such batch, that runs each size class of batches where it has measured
    faster per item than the graph's own session under the load there is (tried again now and
    then; service/scheduling/wide_batches.py). 0 = one per core; 1 = off."""
    wide_batch_max_mb: float = Field(64, ge=0)
    """Graphs larger than this many MB get no second session (it holds its own weights)."""
    inference_threads: int = Field(2, ge=1, le=256)
    """Threads that run onnxruntime calls off the event loop."""
    switch_interval_ms: float = Field(0.5, ge=0, le=100)
    """How long a Python thread may hold the GIL while another waits for it, in milliseconds
    (Python's default is 5; 0 = leave it). Short turns keep the language-model decode thread
    and the event loop from waiting on each other (each waits up to this per hand-over)."""
    gc_freeze: bool = True
    """After start-up, move every object alive then (models, routes, libraries) out of the
    garbage collector's sight (`gc.freeze`): full collections then scan only what requests made
    (its effect on p99 latency: docs/benchmarks.md, "What the serving path does for speed")."""
    optimized_model_cache: Path | None = None
    """Folder where onnxruntime's optimised graphs are saved at first load and loaded from later
    (keyed by the ONNX file's sha256, the optimisation level and the onnxruntime version); unset =
    optimise at every load."""
    io_binding: Literal["cuda", "always", "off"] = "cuda"
    """onnxruntime I/O binding: inputs bound straight from the request's arrays, outputs
    allocated by onnxruntime on the session's device and copied back once per call. `cuda` = for
    sessions on the CUDA provider, `always` = every session (CPU too), `off` = plain `run`."""
    cpu_memory_arena: bool = True
    """onnxruntime's CPU memory arena: reuses buffers across calls (faster), keeps their peak."""
    int8: bool = False
    """Serve a version's `model.int8.onnx` (int8 dynamic quantisation, accuracy cost measured in
    its card) instead of `model.onnx` where the version has one."""

    prune_outputs: bool = True
    """Where a graph has outputs its config does not serve, protocol requests run it without
    the nodes only those need (onnxruntime would run them all); a task that reads such an
    output (a classifier's out-of-distribution head) keeps the whole graph beside it."""

    batching: bool = True
    """Dynamic batching for models whose config allows it (max_batch_size > 0)."""
    max_queue_delay_ms: float | None = Field(None, ge=0, le=10_000)
    """How long the first request of a batch may wait for company, in milliseconds; unset = each
    model's config (config.json `batching.max_queue_delay_ms`, config.pbtxt
    `dynamic_batching.max_queue_delay_microseconds`); 0 = no waiting (queued requests still batch)."""
    max_queue_size: int = Field(256, ge=1)
    """Requests that may wait per model; beyond it requests get 503 with Retry-After at once."""
    max_sequences: int = Field(1024, ge=1)
    """Live sequences a stateful model version keeps (Triton's sequence batcher); a further
    `sequence_start` gets 503 until one ends or idles out."""
    max_sequence_state_bytes: int = Field(256 * 1024 * 1024, ge=1)
    """Bytes of sequence state a stateful model version keeps, all its sequences together; a
    request that would go over gets 503 and its sequence keeps its previous state."""
    inline_max_ms: float = Field(0.25, ge=0, le=100)
    """A batched model's request that is the only one the server is serving, with nothing queued
    or running for its graph, runs on the event loop itself (no hop to an inference thread) when
    no company comes within two turns of the loop and the graph's calls take at most this many
    milliseconds on average (0 = always hand over to the inference threads). Under load
    requests queue and batch as usual (docs/benchmarks.md, "Round two"). At 1, cnn-mnist's JSON
    V2 at concurrency 32 measured 5-7% slower, so 1 is for next-word prompts only (below)."""
    next_word_inline_max_ms: float = Field(1.0, ge=0, le=100)
    """`SEEDSERVE_INLINE_MAX_MS` for the batcher that reads language models' next-word prompts:
    a lone next-word request, whose prompt takes about 0.6 ms, was served 1.2x as fast at 1 as
    at 0.25 (docs/benchmarks.md, "Round two, seventh day")."""
    pipeline_batches: bool = True
    """A batched graph's batches run in line, each handing its inference thread straight to the
    next (a batch of fewer than 4 items may run beside the others, up to the model's instance
    count), and a batch starts as soon as half the requests in flight (8 at least) are queued
    (when the model's config sets no queue delay) instead of at the end of the event loop's
    turn: under load the loop reads and answers some requests while others' batch runs. Off:
    the batches of a graph run side by side, up to its instance count, each taken at the end of
    the loop's turn (docs/benchmarks.md, "Round two, fifth day")."""
    request_timeout_s: float = Field(0.0, ge=0)
    """A request still queued after this many seconds is dropped before inference (0 = never)."""

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes (larger gets 413), and largest gRPC message
    received (larger gets RESOURCE_EXHAUSTED)."""
    max_images_per_request: int = Field(64, ge=1)
    """Most images one classification request may carry."""
    max_image_pixels: int = Field(16_000_000, ge=1)
    """Largest decoded image accepted, in pixels (width x height); guards decompression bombs."""
    max_top_k: int = Field(100, ge=1)
    """Largest `top_k` a classification request may ask for."""
    max_graph_nodes: int = Field(20_000, ge=1)
    """Most nodes (summed over its graphs) one graph-classifier request may carry."""
    max_graph_edges: int = Field(200_000, ge=1)
    """Most edges (summed over its graphs) one graph-classifier request may carry."""

    strict_readiness: bool = False
    """Ready only when every model in the repository loaded (else: when at least one did)."""

    task_threads: int = Field(8, ge=1, le=256)
    """Threads that run generation loops (diffusion sampling) and read language-model prompts
    (the decoding itself runs in one decode-engine thread per model version)."""
    max_concurrent_generations: int = Field(64, ge=1)
    """Generation requests running at once per model; more get 503 with Retry-After."""
    max_images_per_generation: int = Field(128, ge=1)
    """Largest `n` of an image-generation request."""
    max_diffusion_steps: int = Field(1000, ge=1)
    """Most denoising steps one image-generation request may ask for."""
    max_denoising_work: int = Field(16384, ge=1)
    """Most image-steps per request: n x steps (x 2 with classifier-free guidance)."""
    step_batching: bool = True
    """Denoising steps of image generations running at once on one model version share one
    onnxruntime call (rows stacked, results split back; same images as run alone), for the
    denoisers where that pays (`SEEDSERVE_STEP_BATCHING_MIN_SAVING_MS`). What it gains and costs on
    a CPU, measured: docs/benchmarks.md, "Generation", and bench/results/compute.md."""
    step_batching_min_saving_ms: float = Field(0.25, ge=-1000, le=1000)
    """Step batching serves a denoiser only where, timed when the model loads, a generation's
    step costs at least this many milliseconds less inside one call of 8 generations' steps
    than alone (enough to pay for the hand-offs between threads that sharing needs), and at
    least `SEEDSERVE_STEP_BATCHING_MIN_GAIN` of its time alone. Elsewhere (on a 2-core CPU the
    pixel U-Net costs about the same per row at any batch, the latent denoiser saves 0.06 ms a
    step) each step runs as it comes, as with step batching off. Negative: always batch."""
    step_batching_min_gain: float = Field(0.5, ge=-1000, le=1)
    """The other condition for step batching a denoiser: the share of a step's time alone that
    sharing a call saves (timed at load, as above)."""
    max_step_delay_ms: float = Field(0.0, ge=0, le=1000)
    """How long a denoising step may wait for the model's other running generations to submit
    theirs, in milliseconds (it runs at once when all of them have); 0 = no waiting (steps that
    queued while the calls were busy still share one)."""
    max_prompt_chars: int = Field(20_000, ge=1)
    """Longest prompt (or next-word text) a language-model request may send, in characters."""
    max_prompt_tokens: int = Field(2048, ge=1)
    """Longest prompt a language-model request may send, in tokens (words and punctuation)."""
    max_new_tokens: int = Field(512, ge=1)
    """Largest `max_tokens` (tokens to generate per sequence) of a text-generation request."""
    max_completion_choices: int = Field(16, ge=1)
    """Most sequences one completion request may write: `n` x the number of prompts."""
    max_decode_batch: int = Field(64, ge=1, le=4096)
    """Most sequences (over all requests) one language-model version advances per decode step;
    the sequences of further requests wait their turn (continuous batching)."""
    max_prefill_tokens: int = Field(1024, ge=1)
    """Most prompt tokens a language-model version reads at once: the prompts of requests that
    arrived since its last decode step are read in one step-graph call (one per prompt length
    for a graph without an attention mask) before the step, up to this many tokens (a longer
    prompt is read alone); it bounds how long the running sequences wait for newcomers."""
    max_unread_stream_tokens: int = Field(64, ge=1)
    """Most tokens a streamed generation may write ahead of its client: past this its sequences
    wait (and their decode-batch slots with them) until the stream's reader catches up, so a
    slow or stalled reader costs neither unbounded memory nor the event loop's other requests."""
    max_logprobs: int = Field(20, ge=0)
    """Largest `logprobs` (alternative tokens reported per token) of a completion request."""
    max_stop_sequences: int = Field(16, ge=0)
    """Most stop strings one text-generation request may give."""
    max_next_words: int = Field(100, ge=1)
    """Largest `top_k` (words returned) of a next-word request."""

    api_key: SecretStr | None = None
    """Bearer key every inference and model endpoint requires (unset = open). Never logged."""
    admin_api_key: SecretStr | None = None
    """Bearer key for the model-repository endpoints (load/unload/index); unset = those are off."""
    poll_interval_s: float = Field(0.0, ge=0)
    """Look for new, changed or removed models in the repository this often (0 = never)."""
    shutdown_timeout_s: int = Field(30, ge=1, le=3600)
    """On SIGTERM, how long in-flight requests may take to finish, in seconds, before they are
    cut off and the server exits."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service's JSON logs."""
    access_log: bool = True
    """Log one JSON line per request."""
    otlp_endpoint: str | None = None
    """OpenTelemetry collector to send traces to over OTLP/HTTP (protobuf), its base URL (spans
    go to `<url>/v1/traces`, e.g. `http://localhost:4318`); unset = tracing off. Requests
    continue the W3C `traceparent` they carry."""
    trace_sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded when tracing is on (a request with a `traceparent` follows
    its caller's sampling decision)."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # SEEDSERVE_OTLP_ENDPOINT= (empty) is unset
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"{value!r} is no http:// or https:// URL (an OTLP/HTTP collector)")
        return value

    @field_validator("api_key", "admin_api_key")
    @classmethod
    def _strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("API keys must be at least 16 characters")
        return value


def settings_table() -> str:
    """docs/configuration.md's table of every setting, generated so the docs cannot drift from
    the code (tests/test_docs.py checks it)."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default.as_posix() if isinstance(info.default, Path) else info.default
        default = "unset" if default is None else default
        text = " ".join((info.description or "").split())
        rows.append(f"| `SEEDSERVE_{name.upper()}` | `{default}` | {text} |")
    return "\n".join(rows)
