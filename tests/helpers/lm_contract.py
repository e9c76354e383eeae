"""The language-model HTTP contract the playground codes against, as a stub server: next-word
suggestions and an OpenAI/vLLM-style completion streamed as server-sent events, one token every
few tens of milliseconds, so a browser test can watch the text grow. It serves the real
playground page and assets (service.routers.playground) and records what the page sent."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from helpers.live_server import free_port
from service.routers import playground

MODEL = "stub-lm"
PIECES = [" she", " said", ",", " with", " a", " smile", ",", " that", " it", " was", " so", "."]
TOKEN_DELAY_S = 0.04


@dataclass
class StubServer:
    url: str
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    abandoned: threading.Event = field(default_factory=threading.Event)  # a client left a stream

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.requests if p == path]


def stub_app(record: StubServer) -> FastAPI:
    app = FastAPI()
    app.include_router(playground.router)

    async def remember(request: Request) -> dict[str, Any]:
        body = await request.json() if request.method == "POST" else {}
        record.requests.append((request.url.path, body, dict(request.headers)))
        return body

    @app.get("/v2")
    async def server() -> dict[str, Any]:
        return {"name": "stub", "version": "0", "extensions": []}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return "# no metrics in the stub\n"

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        summary = {"id": MODEL, "object": "model", "created": 0, "task": "language-model",
                   "family": "stub", "dataset": "austen", "versions": ["1"], "ready": True,
                   "metrics": {"test_perplexity": 42.0}}  # fmt: skip
        return {"object": "list", "data": [summary]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        return {"id": name, "task": "language-model", "versions": ["1"], "ready": True,
                "config": {"task": "language-model"}, "cards": {"1": {"metrics": {}}}}  # fmt: skip

    @app.get("/v1/models/{name}/versions/{version}/files")
    async def files(name: str, version: int) -> dict[str, Any]:
        return {"model_name": name, "model_version": str(version), "files": []}

    @app.post("/v1/models/{name}/next-word")
    async def next_word(name: str, request: Request) -> dict[str, Any]:
        body = await remember(request)
        words = ["wife", "husband", "fortune", "\n", "."][: body.get("top_k", 5)]
        return {
            "model_name": name,
            "model_version": "1",
            "predictions": [
                {"word": w, "token_id": i + 2, "probability": 0.5 / (i + 1)}
                for i, w in enumerate(words)
            ],
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await remember(request)
        count = min(int(body.get("max_tokens", 16)), 1000)  # PIECES over and over

        async def events() -> AsyncIterator[bytes]:
            for i in range(count):
                piece = PIECES[i % len(PIECES)]
                try:
                    await asyncio.sleep(TOKEN_DELAY_S)
                except asyncio.CancelledError:  # the client disconnected
                    record.abandoned.set()
                    raise
                finish = "length" if i == count - 1 else None
                chunk = {
                    "id": "cmpl-stub",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
                    ],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def stub_server() -> Iterator[StubServer]:
    port = free_port()
    record = StubServer(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        stub_app(record), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stub language-model server did not start")
        time.sleep(0.05)
    try:
        yield record
    finally:
        server.should_exit = True
        thread.join(timeout=10)
