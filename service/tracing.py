"""OpenTelemetry tracing: W3C `traceparent` in, spans out over OTLP/HTTP; off and free otherwise.

Off (no `otlp_endpoint`, no exporter given) nothing is set up and every function here returns at
its first check. On, each request a transport serves is a SERVER span (`request_span`, parented
to the caller's `traceparent`), and the work under it adds spans:

    request ── queue            (waiting for the dynamic batcher or an inference thread)
           ├── batch            (one onnxruntime call for several requests)
           │     └── onnxruntime.run
           ├── decode.step      (language models: one step of every running sequence)
           │     └── onnxruntime.run
           ├── denoise.step     (diffusion: one denoiser call for several generations)
           └── response         (encoding the answer)

A call that serves several requests (a dynamic batch, a decode step of the language models, a
denoising step of image generations) is one span, child of its oldest member's span and linked
to every member's: each request's trace reaches it. Spans are made only under a sampled span, so
warm-ups and unsampled requests make none. Threads do not inherit the current span: `bind` a
function to it before handing it to an executor.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import __version__
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

P = ParamSpec("P")
T = TypeVar("T")
Attributes = Mapping[str, str | int | float | bool]

OFF: AbstractContextManager[None] = nullcontext()  # what every span function returns when off
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configure_tracing(settings: Settings, exporter: SpanExporter | None = None) -> bool:
    """Start tracing when `settings.otlp_endpoint` is set (spans batched to it over OTLP/HTTP)
    or an exporter is given (each span handed to it when it ends: tests). Returns whether on."""
    global _tracer, _provider
    shutdown_tracing()
    if exporter is None and settings.otlp_endpoint is None:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampler = ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over these
    resource = Resource.create({SERVICE_NAME: "seedserve", SERVICE_VERSION: __version__})
    provider = TracerProvider(sampler=sampler, resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert settings.otlp_endpoint is not None
        endpoint = f"{settings.otlp_endpoint.rstrip('/')}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("seedserve", __version__)
    return True


def shutdown_tracing() -> None:
    """Send what is still buffered and stop tracing (no-op when off)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()  # flushes the batch processor first


def on() -> bool:
    return _tracer is not None


def request_span(
    name: str, carrier: Mapping[str, str] | None, attributes: Attributes | None = None
) -> AbstractContextManager[Span | None]:
    """The SERVER span of one request, current inside the block; its parent is the W3C
    `traceparent`/`tracestate` in `carrier` (HTTP headers or gRPC metadata, lowercase keys),
    else it starts a trace. None when off. Its outcome is the transport's to give
    (`finish_request`, `finish_call`): an exception that escapes is no verdict (a gRPC abort
    for a client's mistake is one)."""
    if _tracer is None:
        return OFF
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    return _tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span | None]:
    """A child of the current span, current inside the block; none when off or outside a
    sampled span (a warm-up, a decode thread with nothing bound)."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def current() -> Span | None:
    """The current span when it is sampled: what a request hands to work done for it later, in
    another task or thread (as a parent or a link). None when off."""
    if _tracer is None:
        return None
    current_span = trace.get_current_span()
    return current_span if current_span.is_recording() else None


def batch_span(
    name: str, members: Iterable[Span | None], attributes: Attributes | None = None
) -> AbstractContextManager[Span | None]:
    """One call serving several requests: a child of the first member's span, linked to each
    member's, current inside the block. None when off or when no member is traced."""
    if _tracer is None:
        return OFF
    traced = list(dict.fromkeys(m for m in members if m is not None))
    if not traced:
        return OFF
    return _tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(traced[0]),
        links=[Link(m.get_span_context()) for m in traced],
        attributes=attributes,
    )


def record(
    name: str, parent: Span, start_ns: int, end_ns: int, attributes: Attributes | None = None
) -> None:
    """A span that already happened (a wait measured from both ends), under `parent`."""
    if _tracer is None:
        return
    done = _tracer.start_span(
        name, trace.set_span_in_context(parent), attributes=attributes, start_time=start_ns
    )
    done.end(end_time=end_ns)


def now_ns() -> int:
    """The clock spans are timed with (wall time, nanoseconds)."""
    return time.time_ns()


def bind(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn`, to run in another thread inside the current span (as it is when off)."""
    if _tracer is None:
        return fn
    context = contextvars.copy_context()

    def bound(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.run(fn, *args, **kwargs)

    return bound


def finish_request(span: Span, method: str, route: str | None, status: int) -> None:
    """An HTTP request's span: named after its route (known once routed), with the response
    status; a 5xx marks it failed."""
    if route is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    finish_call(span, {"http.response.status_code": status}, failed=status >= 500)


def finish_call(span: Span, outcome: Attributes, failed: bool) -> None:
    """Any transport's request span: its outcome attributes (an HTTP status, a gRPC code);
    `failed` (the server's fault) marks it an error."""
    span.set_attributes(outcome)
    if failed:
        span.set_status(Status(StatusCode.ERROR))


def traceparent(span: Span) -> str:
    """The W3C traceparent that names `span` (for a response header)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier["traceparent"]


def log_ids() -> dict[str, str] | None:
    """The current span's trace and span ids, for a log line; None when off or outside one."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
