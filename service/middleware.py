"""One pure ASGI middleware for every request: request id, body-size limit, HTTP metrics, access
log, and (when tracing is on) the request's SERVER span with a `traceparent` response header.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or copy per request, and it can count
the body as it streams in, so an oversized chunked upload is cut off without being buffered.
"""

from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager
from typing import Any

import orjson
from opentelemetry.trace import Span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.errors import PayloadTooLarge
from service.logs import AccessLog
from service.metrics import Metrics

ACCESS_LOG = AccessLog("seedserve.access")

UNMATCHED = "unmatched"  # the route label of a path no route serves
UNCOUNTED = ("/metrics", "/v2/health/", "/docs", "/redoc", "/openapi.json", "/static/")


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, access_log: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        # (method, route, status) -> its counter and histogram children: a label lookup costs
        # a lock and a few allocations, twice per request
        self._metric_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = _request_id(headers.get(b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large: PayloadTooLarge | None = PayloadTooLarge(
                f"request body of {int(declared)} bytes is over the {limit}-byte limit",
                param="body",
            )
        else:
            too_large = None
        received = 0
        refused: PayloadTooLarge | None = None  # set once the body was cut off at the limit

        async def limited_receive() -> Message:
            nonlocal received, refused
            if too_large is not None:
                refused = too_large
                scope["state"]["refused_body"] = refused  # an app may answer it in its shape
                raise too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = PayloadTooLarge(
                        f"request body is over the {limit}-byte limit", param="body"
                    )
                    scope["state"]["refused_body"] = refused
                    raise refused
            return message

        status = 500
        start = time.perf_counter()
        replaced = False
        answered_413 = False
        response_headers = [(b"x-request-id", request_id.encode())]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *response_headers]
            await send(message)

        async def send_or_refuse(message: Message) -> None:
            nonlocal replaced, answered_413
            if message["type"] == "http.response.start" and message["status"] == 413:
                answered_413 = True  # the app answered the refusal itself (OpenAI's shape)
            if refused is None or answered_413:
                await send_with_id(message)
                return
            # Whatever the app made of the failed read (FastAPI's body parser turns any error
            # into a 400), a body over the limit is answered with the 413, once.
            if not replaced:
                replaced = True
                body = orjson.dumps({"error": refused.message})
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": refused.status_code,
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": body})

        path: str = scope["path"]
        counted = not path.startswith(UNCOUNTED) and path != "/v2/health"
        traced = counted and tracing.on()
        with _request_span(scope, headers, request_id) if traced else tracing.OFF as span:
            if span is not None:
                response_headers.append((b"traceparent", tracing.traceparent(span).encode()))
            if counted:
                self.metrics.http_in_flight.inc()
                self.metrics.requests_in_flight += 1
            try:
                await self.app(scope, limited_receive, send_or_refuse)
            finally:
                elapsed = time.perf_counter() - start
                if counted:
                    self.metrics.http_in_flight.dec()
                    self.metrics.requests_in_flight -= 1
                    route = _route_template(scope)
                    method = scope["method"]
                    requests, duration = self._children(method, route, status)
                    requests.inc()
                    duration.observe(elapsed)
                    if span is not None:
                        named = route if route != UNMATCHED else None
                        tracing.finish_request(span, method, named, status)
                if self.access_log:
                    ACCESS_LOG.write(
                        {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "duration_ms": round(elapsed * 1e3, 3),
                        }
                    )

    def _children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        children = self._metric_children.get(key)
        if children is None:
            children = (
                self.metrics.http_requests.labels(method, route, str(status)),
                self.metrics.http_duration.labels(method, route),
            )
            if len(self._metric_children) < 4096:  # routes x methods x statuses: bounded anyway
                self._metric_children[key] = children
        return children


def request_id_from(given: str | None) -> str:
    """The client's request id (gRPC metadata), when it is a sane one; else a fresh one."""
    return _request_id(given.encode() if given is not None and given.isascii() else None)


def _request_id(given: bytes | None) -> str:
    if given and len(given) <= 128 and given.isascii() and given.decode().isprintable():
        return given.decode()
    # 128 random bits from Python's generator (seeded from the OS, and again in a forked worker):
    # os.urandom is a system call that lets go of the GIL, and the event loop then waited for
    # it behind the inference threads (py-spy: 3% of the loop under gRPC load at c=32)
    return random.randbytes(16).hex()


def _request_span(
    scope: Scope, headers: dict[bytes, bytes], request_id: str
) -> AbstractContextManager[Span | None]:
    """The request's SERVER span, named after the method until the route is known."""
    carrier = {
        key.decode(): headers[key].decode("latin-1")
        for key in (b"traceparent", b"tracestate")
        if key in headers
    }
    method: str = scope["method"]
    attributes = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "seedserve.request_id": request_id,
    }
    return tracing.request_span(method, carrier, attributes)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
