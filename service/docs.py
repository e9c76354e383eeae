"""API documentation served from local assets (Swagger UI and ReDoc work air-gapped), and an
OpenAPI schema that tells the truth about our error bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREFIX = "/static/docs"
# The pages may load and call nothing but this service, so they behave the same air-gapped (the
# ReDoc bundle would otherwise fetch its "by Redocly" logo from a CDN). Both pages have inline
# styles, Swagger UI an inline start-up script and ReDoc a blob: web worker.
OFFLINE_ONLY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def add_docs(app: FastAPI) -> None:
    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return offline_only(
            get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                swagger_css_url=f"{PREFIX}/swagger-ui.css",
                swagger_favicon_url=f"{PREFIX}/favicon.png",
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return offline_only(
            get_redoc_html(
                openapi_url="/openapi.json",
                title=f"{app.title} API",
                redoc_js_url=f"{PREFIX}/redoc.standalone.js",
                redoc_favicon_url=f"{PREFIX}/favicon.png",
                with_google_fonts=False,
            )
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            _errors_are_error_objects(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def offline_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = OFFLINE_ONLY
    return page


def _errors_are_error_objects(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 `{"detail": [...]}` on every operation with parameters; we answer
    invalid input with 400 `{"error": "..."}` (or OpenAI's shape where the route declares it)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorResponse"] = {
        "title": "ErrorResponse",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "title": "Error"}},
    }
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and _takes_input(operation):
                responses.setdefault("400", {"description": "Invalid input", "content": error})
                operation["responses"] = dict(sorted(responses.items()))


def _takes_input(operation: dict[str, Any]) -> bool:
    """Whether a request can fail validation: a body or a query parameter. Path parameters are
    names, where a wrong one is a 404, not a 400."""
    parameters = operation.get("parameters", [])
    return "requestBody" in operation or any(p.get("in") != "path" for p in parameters)
