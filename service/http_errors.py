"""How the HTTP layer renders errors, in its two styles: plain `{"error": "..."}` on every route
(`error_parts`), and OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, on the
OpenAI-compatible routes (`OpenAIRoute`), so that the official `openai` client raises the
matching exception (BadRequestError...) with our message. It also words the errors the service
did not raise itself: a request that does not validate is one 400 message naming every field at
fault, whichever parser found it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service.errors import Overloaded, ServiceError
from service.protocol.openai import OpenAIError, OpenAIErrorResponse

WHERE = {"body", "query", "path", "header", "cookie"}  # where FastAPI found the field
UNION_MEMBERS = {"str", "int", "float", "bool", "list", "dict", "none"}
OPENAI_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse} for status in (400, 401, 404, 413, 415, 503)
}


def field_path(loc: Sequence[Any]) -> str:
    """`prompt` for ("body", "prompt", "list[str]"): the field, without where FastAPI found it or
    the union member pydantic tried."""
    parts = [str(p) for i, p in enumerate(loc) if not (i == 0 and p in WHERE)]
    return ".".join(p for p in parts if "[" not in p and p not in UNION_MEMBERS)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """Every problem as `field: what is wrong`, joined; and the first field named (OpenAI's
    `param`)."""
    problems: list[str] = []
    params: list[str] = []
    for error in exc.errors():
        loc = error.get("loc", ())
        if error.get("type") == "json_invalid":
            position = loc[-1] if loc else "?"
            reason = (error.get("ctx") or {}).get("error", "invalid")
            problem, where = f"body: invalid JSON at character {position}: {reason}", ""
        else:
            where = field_path(loc)
            problem = f"{where or 'body'}: {error.get('msg', 'invalid')}"
        if problem not in problems:
            problems.append(problem)
            params.append(where)
    return "; ".join(problems), next((p for p in params if p), None)


def error_parts(exc: ServiceError) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and headers of the answer to a ServiceError (every route's shape)."""
    headers = {"content-type": "application/json"}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return exc.status_code, orjson.dumps({"error": exc.message}), headers


def openai_error_body(status: int, message: str, param: str | None) -> dict[str, Any]:
    kind = OPENAI_ERROR_TYPES.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    error = OpenAIError(message=message, type=kind, param=param, code=status)
    return OpenAIErrorResponse(error=error).model_dump()


def openai_error(exc: ServiceError) -> JSONResponse:
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    body = openai_error_body(exc.status_code, exc.message, exc.param)
    return JSONResponse(body, exc.status_code, headers=headers)


def openai_validation_error(exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(exc)
    return JSONResponse(openai_error_body(400, message, param), 400)


class OpenAIRoute(APIRoute):
    """A route of OpenAI's API: its errors, validation included, are rendered in OpenAI's shape
    with the statuses every route uses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_openai(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                return openai_validation_error(exc)
            except ServiceError as exc:
                return openai_error(exc)
            except HTTPException:
                # FastAPI's body reader words a body cut off at the size limit as a 400
                refused = request.scope.get("state", {}).get("refused_body")
                if isinstance(refused, ServiceError):
                    return openai_error(refused)
                raise

        return handle_openai
