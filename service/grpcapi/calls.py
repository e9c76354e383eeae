"""What every gRPC call gets, as every REST request does in service/middleware.py and
service/app.py: a request id (metadata `x-request-id`, else a fresh one, sent back in the
trailing metadata), the API-key check (metadata `authorization: Bearer <key>`), metrics by
method and status code, one JSON access-log line, and domain errors turned into status codes.

Status codes, from the service's errors (service/errors.py):
400 invalid input, 415 -> INVALID_ARGUMENT · 404 -> NOT_FOUND · 401 -> UNAUTHENTICATED ·
403 -> PERMISSION_DENIED · 413 -> RESOURCE_EXHAUSTED (as gRPC itself answers a message over
the limit) · 503 not ready or overloaded -> UNAVAILABLE (as Triton answers a full queue; an
overload carries `retry-after` seconds and a google.rpc.RetryInfo in `grpc-status-details-bin`,
which gRPC retry policies and grpc-status readers understand) · 499 -> CANCELLED ·
anything else -> INTERNAL. A client's deadline that passes cancels the call (DEADLINE_EXCEEDED,
answered by gRPC itself), and the request stops wherever it is: queued, or between decode steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.trace import Span

from service import tracing
from service.auth import check_admin_key, check_inference_key
from service.errors import Overloaded, ServiceError
from service.logs import AccessLog
from service.metrics import Metrics
from service.middleware import request_id_from
from service.settings import Settings

ACCESS_LOG = AccessLog("seedserve.access")
errors_log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}


SERVICE = "inference.GRPCInferenceService"
# The codes that make a server span an error (OpenTelemetry's rule for gRPC servers).
SERVER_FAULTS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})  # fmt: skip


class Access(Enum):
    OPEN = "open"  # health and server metadata, as REST
    INFERENCE = "inference"  # models: the inference key when one is set
    ADMIN = "admin"  # the repository: the admin key, and off without one


class Aborted(Exception):
    """The call ended with `code` and `message` (a domain error, rendered)."""

    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple[Any, ...]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


def status_of(exc: ServiceError) -> tuple[grpc.StatusCode, tuple[tuple[str, Any], ...]]:
    """A domain error's gRPC status code and the trailing metadata that goes with it."""
    code = STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
    if not isinstance(exc, Overloaded):
        return code, ()
    seconds = max(1, round(exc.retry_after_s))
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=exc.message)
    status.details.add().Pack(retry)
    return code, (
        ("retry-after", str(seconds)),
        ("grpc-status-details-bin", status.SerializeToString()),
    )


class Calls:
    """Runs each gRPC call's work with the request id, auth, metrics, logging and error mapping."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # the metric children each method and status code updates, looked up once (as
        # RequestMiddleware does for HTTP; methods and codes are few, so no bound is needed)
        self._metric_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def authorize(self, access: Access, metadata: dict[str, str]) -> None:
        if access is Access.INFERENCE:
            check_inference_key(self.settings, metadata.get("authorization"))
        elif access is Access.ADMIN:
            check_admin_key(self.settings, metadata.get("authorization"))

    async def unary(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        access: Access,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """One unary call: `work`'s answer, or the call aborted with the error's status."""
        async with Call(self, method, context, access):
            return await work()

    async def stream(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        access: Access,
        responses: Callable[[str], AsyncIterator[T]],
    ) -> AsyncIterator[T]:
        """One streaming call: what `responses(request_id)` yields, then the call's status."""
        async with Call(self, method, context, access) as request_id:
            async for response in responses(request_id):
                yield response

    def failure(
        self, exc: Exception, method: str
    ) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
        if isinstance(exc, ServiceError):
            code, trailing = status_of(exc)
            return code, exc.message, trailing
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        errors_log.exception("grpc call failed", extra={"grpc_method": method})
        return grpc.StatusCode.INTERNAL, "internal server error", ()

    def finished(
        self,
        method: str,
        code: grpc.StatusCode,
        request_id: str,
        start: float,
        span: Span | None,
    ) -> None:
        elapsed = time.perf_counter() - start
        if span is not None:
            failed = code in SERVER_FAULTS
            tracing.finish_call(span, {"rpc.grpc.status_code": code.value[0]}, failed=failed)
        self.metrics.grpc_in_flight.dec()
        self.metrics.requests_in_flight -= 1
        requests, duration = self._children(method, code)
        requests.inc()
        duration.observe(elapsed)
        if self.settings.access_log:
            ACCESS_LOG.write(
                {
                    "request_id": request_id,
                    "grpc_method": method,
                    "code": code.name,
                    "duration_ms": round(elapsed * 1e3, 3),
                }
            )

    def _children(self, method: str, code: grpc.StatusCode) -> tuple[Any, Any]:
        children = self._metric_children.get((method, code))
        if children is None:
            children = self._metric_children[method, code] = (
                self.metrics.grpc_requests.labels(method, code.name),
                self.metrics.grpc_duration.labels(method),
            )
        return children


class Call:
    """Around one call's work (given its request id): the key check, then the status code
    (an error aborts the call with its status), the metrics, the access log and the span.
    A class rather than a generator-based context manager: every call enters one."""

    __slots__ = (
        "access",
        "calls",
        "code",
        "context",
        "method",
        "request_id",
        "span",
        "spans",
        "start",
    )

    def __init__(
        self, calls: Calls, method: str, context: grpc.aio.ServicerContext, access: Access
    ) -> None:
        self.calls = calls
        self.method = method
        self.context = context
        self.access = access

    async def __aenter__(self) -> str:
        metadata = _metadata(self.context)
        self.request_id = request_id = request_id_from(metadata.get("x-request-id"))
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        metrics = self.calls.metrics
        metrics.grpc_in_flight.inc()
        metrics.requests_in_flight += 1
        self.spans = _request_span(self.method, metadata, request_id)
        self.span = self.spans.__enter__()
        try:
            self.calls.authorize(self.access, metadata)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return request_id

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is None:
                self.context.set_trailing_metadata((("x-request-id", self.request_id),))
            elif isinstance(exc, Exception):
                self.code, message, trailing = self.calls.failure(exc, self.method)
                metadata = (("x-request-id", self.request_id), *trailing)
                await self.context.abort(self.code, message, trailing_metadata=metadata)
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                self.code = grpc.StatusCode.CANCELLED
        finally:
            try:
                self.calls.finished(self.method, self.code, self.request_id, self.start, self.span)
            finally:
                self.spans.__exit__(kind, exc, tb)


def _request_span(
    method: str, metadata: dict[str, str], request_id: str
) -> AbstractContextManager[Span | None]:
    """The call's SERVER span (its parent the metadata's W3C traceparent), when tracing is on."""
    if not tracing.on():
        return tracing.OFF
    attributes = {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": method,
        "seedserve.request_id": request_id,
    }
    return tracing.request_span(f"{SERVICE}/{method}", metadata, attributes)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {m.key: m.value for m in context.invocation_metadata() or () if isinstance(m.value, str)}
