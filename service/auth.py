"""Optional API keys (`Authorization: Bearer <key>`): one for inference, one for administration.

Keys are compared in constant time and never logged. Administration (repository load/unload) is
disabled unless an admin key is set.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from service.deps import SettingsDep
from service.errors import Forbidden, Unauthorized
from service.settings import Settings


def _presented(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(presented: str | None, key: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())


async def require_inference_key(request: Request) -> None:
    # On every inference request: read the header directly rather than through sub-dependencies,
    # which FastAPI would solve per request even when no key is set.
    check_inference_key(request.app.state.settings, request.headers.get("authorization"))


def check_inference_key(settings: Settings, authorization: str | None) -> None:
    """Raise Unauthorized unless no inference key is set or `authorization` presents one (the
    admin key opens inference too)."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if key is None:
        return
    presented = _presented(authorization)
    admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    if not (_matches(presented, key) or (admin is not None and _matches(presented, admin))):
        raise Unauthorized("a valid API key is required: send `Authorization: Bearer <key>`")


async def require_admin_key(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    check_admin_key(settings, authorization)


def check_admin_key(settings: Settings, authorization: str | None) -> None:
    """Raise Forbidden when administration is off, Unauthorized unless `authorization`
    presents the admin key."""
    if settings.admin_api_key is None:
        raise Forbidden("model repository administration is disabled: set SEEDSERVE_ADMIN_API_KEY")
    if not _matches(_presented(authorization), settings.admin_api_key.get_secret_value()):
        raise Unauthorized("the admin API key is required: send `Authorization: Bearer <key>`")


InferenceAuth = Depends(require_inference_key)
AdminAuth = Depends(require_admin_key)
