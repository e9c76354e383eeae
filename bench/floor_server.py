"""The Python floor: the least any Python server on uvicorn must do for a batched V2 infer.

A bare ASGI app on uvicorn with httptools and uvloop (what `uvicorn[standard]` runs): read the
body, parse V2 JSON or the binary tensor extension, queue the tensors, run onnxruntime on ONE
inference thread over whatever queued while the last batch ran, answer V2 JSON or binary. No
framework, validation, error bodies, metrics, access log, request ids, tracing or API keys:
everything our service does beyond that is absent. So its requests/s and CPU per request bound
what a request path written in Python can reach on this machine, features or not (issue #17's
targets 1 and 3 are measured against it). It answers well-formed requests of a batched model
with FP32 tensors only: not a server to use.
`BENCH_MODEL=path/to/model.onnx uvicorn bench.floor_server:app --http httptools --loop uvloop`
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
)
OUTPUTS = [o.name for o in session.get_outputs()]
MAX_BATCH = 32  # requests per onnxruntime call, as the peers' batchers in PEERS.md
inference = ThreadPoolExecutor(1)

Feeds = dict[str, np.ndarray]


class Batches:
    """Requests queue here; one dispatcher runs them in batches while any are waiting."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Feeds, asyncio.Future[list[np.ndarray]]]] = []
        self.task: asyncio.Future[None] | None = None  # the dispatcher, while one runs
        self.calls = 0  # onnxruntime calls made, and requests answered in them
        self.requests = 0

    async def infer(self, feeds: Feeds) -> list[np.ndarray]:
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self.waiting.append((feeds, future))
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._dispatch())  # held: the loop's ref is weak
        return await future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
            joined = {n: np.concatenate([f[n] for f, _ in batch]) for n in batch[0][0]}
            results = await loop.run_in_executor(inference, session.run, OUTPUTS, joined)
            self.calls += 1
            self.requests += len(batch)
            start = 0
            for feeds, future in batch:
                rows = next(iter(feeds.values())).shape[0]
                future.set_result([r[start : start + rows] for r in results])
                start += rows


batches = Batches()


def parse(body: bytes, header_length: int | None) -> tuple[Feeds, bool]:
    """The request's tensors, and whether it asks for binary outputs."""
    if header_length is None:
        request = orjson.loads(body)
        feeds = {
            x["name"]: np.asarray(x["data"], dtype=np.float32).reshape(x["shape"])
            for x in request["inputs"]
        }
        return feeds, False
    request = orjson.loads(body[:header_length])
    feeds, offset = {}, header_length
    for x in request["inputs"]:
        size = x["parameters"]["binary_data_size"]
        feeds[x["name"]] = np.frombuffer(body, np.float32, size // 4, offset).reshape(x["shape"])
        offset += size
    return feeds, bool(request.get("parameters", {}).get("binary_data_output"))


def answer(name: str, results: list[np.ndarray], binary: bool) -> tuple[bytes, list[Any]]:
    """The V2 response body and its headers."""
    if not binary:
        outputs = [
            {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
            for n, r in zip(OUTPUTS, results, strict=True)
        ]
        return orjson.dumps({"model_name": name, "outputs": outputs}), [
            (b"content-type", b"application/json")
        ]
    raws = [np.ascontiguousarray(r).tobytes() for r in results]
    outputs = [
        {
            "name": n,
            "datatype": "FP32",
            "shape": list(r.shape),
            "parameters": {"binary_data_size": len(raw)},
        }
        for n, r, raw in zip(OUTPUTS, results, raws, strict=True)
    ]
    header = orjson.dumps({"model_name": name, "outputs": outputs})
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ]
    return header + b"".join(raws), headers


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/ready":
        body, headers = b'{"ready":true}', [(b"content-type", b"application/json")]
    elif scope["path"] == "/stats":  # for its test: requests do share calls
        body = orjson.dumps({"calls": batches.calls, "requests": batches.requests})
        headers = [(b"content-type", b"application/json")]
    else:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        header_length = next(
            (int(v) for k, v in scope["headers"] if k == b"inference-header-content-length"),
            None,
        )
        feeds, binary = parse(b"".join(chunks), header_length)
        name = scope["path"].split("/")[3]  # /v2/models/{name}/infer
        body, headers = answer(name, await batches.infer(feeds), binary)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
