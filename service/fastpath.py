"""The V2 infer request over HTTP, answered as plain ASGI beside the framework.

`POST /v2/models/{name}[/versions/{v}]/infer` is the request that carries the load. Through
FastAPI it would pass the server-error and exception middlewares, the router's match over every
route, dependency solving and a Request/Response pair, which together cost more CPU than the
inference of a small model (py-spy at concurrency 32 on cnn-mnist: dependency solving alone 6%
of the process). So `App` answers every POST to that path itself, and this is its only
implementation: the same request middleware as every route (request id, body limit, HTTP
metrics, access log, tracing), the API-key check, the data-plane call and the error bodies every
route uses. routers/open_inference.py declares the route for the OpenAPI schema and method matching only.
"""

from __future__ import annotations

import logging
import re

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service import tracing
from service.auth import check_inference_key
from service.dataplane import DataPlane
from service.errors import ModelNotReady, ServiceError
from service.http_errors import error_parts
from service.protocol.v2 import (
    check_model,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    parse_raw_request,
)
from service.registry import Registry

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
INFER_ROUTES = (
    "/v2/models/{model_name}/infer",
    "/v2/models/{model_name}/versions/{model_version}/infer",
)


class Disconnected(Exception):
    """The client went away before its body arrived."""


class RouteName:
    """What the request middleware reads from scope["route"] to label its metrics."""

    def __init__(self, path: str) -> None:
        self.path = path


class App(FastAPI):
    """FastAPI, with the V2 infer route answered by `infer` when the app is serving."""

    fast_path: ASGIApp | None = None  # the request middleware around `infer`; set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_path is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and (match := INFER_PATH.fullmatch(scope["path"]))
        ):
            scope["app"] = self
            scope["path_params"] = {"model_name": match[1], "model_version": match[2]}
            await self.fast_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, version = scope["path_params"]["model_name"], scope["path_params"]["model_version"]
        scope["route"] = RouteName(INFER_ROUTES[version is not None])
        headers = dict(scope["headers"])
        try:
            check_inference_key(self.state.settings, _text(headers.get(b"authorization")))
            body = await _read_body(receive)
            registry = getattr(self.state, "registry", None)
            if registry is None:  # the lifespan has not made it yet
                raise ModelNotReady("the server is starting: no model is loaded yet")
            content, answer = await run_infer(
                registry,
                self.state.dataplane,
                name,
                version,
                body,
                _text(headers.get(b"inference-header-content-length")),
            )
            status = 200
        except ServiceError as exc:
            status, content, answer = error_parts(exc)
        except Disconnected:
            status, content, answer = 499, b"", {}  # nobody reads it; the metrics do
        except Exception:
            log.exception("inference failed", extra={"path": scope["path"]})
            status, content = 500, orjson.dumps({"error": "internal server error"})
            answer = {"content-type": "application/json"}
        await _respond(send, status, content, answer)


async def run_infer(
    registry: Registry,
    dataplane: DataPlane,
    model_name: str,
    model_version: str | None,
    body: bytes,
    header_length: str | None,
) -> tuple[bytes, dict[str, str]]:
    """One V2 infer request: the response body and its headers (content type, binary header)."""
    model = registry.get(model_name, model_version)
    async with dataplane.track(model):
        length = parse_header_length(header_length, len(body))
        if length == 0:  # Triton's raw binary request: the body is the one input's bytes
            parsed = parse_raw_request(body, model.config.inputs, model.config.batches)
        else:
            parsed = parse_infer_request(body, length)
            check_model(parsed, model.name, model.version, model_version)
        outputs = await dataplane.infer_request(model, parsed)
        with tracing.span("response"):
            content, json_length = encode_infer_response(
                model.name, str(model.version), parsed.id, outputs
            )
    if json_length is None:
        return content, {"content-type": "application/json"}
    return content, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(json_length),
    }


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, content: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
