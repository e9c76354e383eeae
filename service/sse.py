"""Server-sent events, as the streaming routes (OpenAI completions, the generate extension) send
them: one `data: {json}` event per message."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: Any) -> bytes:
    """One server-sent event carrying `payload` as JSON (or a bare string such as `[DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
