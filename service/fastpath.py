"""The V2 infer request over HTTP, answered as plain ASGI beside the framework.

`POST /v2/models/{name}[/versions/{v}]/infer` is the request that carries the load. Through
FastAPI it would pass the server-error and exception middlewares, the router's match over every
route, dependency solving and a Request/Response pair, which together cost more CPU than the
inference of a small model (py-spy at concurrency 32 on cnn-mnist: dependency solving alone 6%
of the process). So `App` answers every POST to that path itself, and this is its only
implementation: the same request middleware as every route (request id, body limit, HTTP
metrics, access log, tracing), the API-key check, the data-plane call and the error bodies every
route uses. routers/open_inference.py declares the route for the OpenAPI schema and method matching only.

`POST /v1/models/{name}/next-word` with a JSON body is answered here too (`next_word`), the same
way, when its body parses and validates; any other such request (a wrong content type, a body
that does not validate) goes on, body and all, to the framework's route below the request
middleware, which words the error exactly as for every route. Both call
`generation_jobs.next_word_answer`.

`POST /v1/completions` with a JSON body is answered here (`completions`) by the route's own
function when the API key is good and the body validates, and goes to the framework's route
otherwise, the same way. Its event-loop time competes with the decode thread for the GIL:
through the framework a completion cost the loop 0.77 ms at concurrency 32, more than a
quarter of it in FastAPI's middleware, routing and dependency layers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.auth import check_inference_key
from service.dataplane import DataPlane
from service.deps import JSON, is_json, media_type_of
from service.errors import ModelNotReady, ServiceError
from service.http_errors import error_parts, openai_error, openai_error_body
from service.middleware import RequestMiddleware
from service.protocol.openai import CompletionRequest
from service.protocol.text import NextWordRequest
from service.protocol.v2 import (
    check_model,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    parse_raw_request,
)
from service.registry import Registry
from service.routers.completions import completions as completions_route
from service.settings import Settings
from service.tasks.generation_jobs import next_word_answer

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
NEXT_WORD_PATH = re.compile(r"/v1/models/([^/]+)/next-word")
NEXT_WORD_ROUTE = "/v1/models/{model_name}/next-word"
COMPLETIONS_ROUTE = "/v1/completions"
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
    fast_next_word: ASGIApp | None = None  # ... around `next_word`
    fast_completions: ASGIApp | None = None  # ... around `completions`
    _below_middleware: ASGIApp | None = None  # the framework's stack under RequestMiddleware

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
        if (
            self.fast_next_word is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and (match := NEXT_WORD_PATH.fullmatch(scope["path"]))
            and _sends_json(scope)
        ):
            scope["app"] = self
            scope["path_params"] = {"model_name": match[1]}
            await self.fast_next_word(scope, receive, send)
            return
        if (
            self.fast_completions is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == COMPLETIONS_ROUTE
            and _sends_json(scope)
        ):
            scope["app"] = self
            await self.fast_completions(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A completions request: answered by the route's function when its key is good and its
        body a valid CompletionRequest, else handed with its body to the framework's route,
        which words the error (see the module docstring)."""
        scope["route"] = RouteName(COMPLETIONS_ROUTE)
        headers = dict(scope["headers"])
        try:
            body = await _read_body(receive)
        except ServiceError as exc:  # over the body limit: OpenAI's shape, as the route's
            await openai_error(exc)(scope, receive, send)
            return
        except Disconnected:
            await _respond(send, 499, b"", {})
            return
        registry = getattr(self.state, "registry", None)
        request = _completion_request(body)
        settings = self.state.settings
        if request is None or registry is None or not _key_is_good(settings, headers):
            await self._to_framework(scope, _replay(body, receive), send)
            return
        response: Response
        try:
            response = await completions_route(
                request, Request(scope, receive), registry, self.state.dataplane, settings
            )
        except ServiceError as exc:
            response = openai_error(exc)
        except Exception:
            log.exception("completion failed", extra={"path": scope["path"]})
            error = openai_error_body(500, "internal server error", None)
            response = Response(orjson.dumps(error), 500, media_type=JSON)
        await response(scope, receive, send)

    async def next_word(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A next-word request: answered here when its body is a valid NextWordRequest, else
        handed with its body to the framework's route (see the module docstring)."""
        scope["route"] = RouteName(NEXT_WORD_ROUTE)
        headers = dict(scope["headers"])
        body = b""
        request, registry = None, None
        try:
            check_inference_key(self.state.settings, _text(headers.get(b"authorization")))
            body = await _read_body(receive)
            registry = getattr(self.state, "registry", None)
            request = _next_word_request(body)
        except ServiceError as exc:
            await _respond(send, *error_parts(exc))
            return
        except Disconnected:
            await _respond(send, 499, b"", {})
            return
        if request is None or registry is None:
            await self._to_framework(scope, _replay(body, receive), send)
            return
        try:
            answer = await next_word_answer(
                registry,
                self.state.dataplane,
                self.state.settings,
                scope["path_params"]["model_name"],
                request.text,
                request.top_k,
            )
            status, content, headers_out = 200, orjson.dumps(answer), {"content-type": JSON}
        except ServiceError as exc:
            status, content, headers_out = error_parts(exc)
        except Exception:
            log.exception("next-word failed", extra={"path": scope["path"]})
            status, content = 500, orjson.dumps({"error": "internal server error"})
            headers_out = {"content-type": JSON}
        await _respond(send, status, content, headers_out)

    async def _to_framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app below its request middleware (which the request has passed already)."""
        if self._below_middleware is None:
            layer: Any = self.middleware_stack or self.build_middleware_stack()
            while not isinstance(layer, RequestMiddleware):
                layer = layer.app
            self._below_middleware = layer.app
        scope.pop("route", None)  # the framework's router names it
        await self._below_middleware(scope, receive, send)

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


def _sends_json(scope: Scope) -> bool:
    """Whether the request says its body is JSON (as service.deps.require_media_type reads it)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return is_json(media_type_of(bytes(value).decode("latin-1")))
    return False


def _completion_request(body: bytes) -> CompletionRequest | None:
    """The body as a CompletionRequest, or None when it is not one (the framework says why)."""
    try:
        return CompletionRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def _key_is_good(settings: Settings, headers: dict[bytes, bytes]) -> bool:
    try:
        check_inference_key(settings, _text(headers.get(b"authorization")))
    except ServiceError:
        return False
    return True


def _next_word_request(body: bytes) -> NextWordRequest | None:
    """The body as a NextWordRequest, or None when it is not one (the framework says why)."""
    try:
        return NextWordRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever comes next (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
