"""KServe's Python SDK (`InferenceRESTClient`, protocol v2, and `InferenceGRPCClient`) against a
running server, in a process of its own: kserve's generated protos and tritonclient's (which the
service imports) both define the `inference.*` messages, and protobuf refuses the second set in
one process.

    python tests/helpers/kserve_sdk.py URL MODEL < batch.json        # prints what the SDK saw, as JSON
    python tests/helpers/kserve_sdk.py grpc://HOST:PORT MODEL < batch.json   # InferenceGRPCClient

(No --flags: kserve parses the command line when imported.)

The batch is a nested list of FP32 images for MODEL's `image` input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def outputs(answer: Any) -> dict[str, Any]:
    return {
        "model_name": answer.model_name,
        "id": answer.id,
        "outputs": {o.name: o.as_numpy().tolist() for o in answer.outputs},
    }


async def session(url: str, model: str, batch: np.ndarray) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    seen: dict[str, Any] = {}
    try:
        seen["live"] = await client.is_server_live(url)
        seen["ready"] = await client.is_server_ready(url)
        seen["model_ready"] = await client.is_model_ready(url, model)
        seen["missing_model_ready"] = await client.is_model_ready(url, "no-such-model")
        # JSON tensors; the SDK puts model_name (and the id) in the body
        tensor = InferInput("image", list(batch.shape), "FP32", data=batch)
        request = InferRequest(model, [tensor], request_id="k1")
        seen["json"] = outputs(await client.infer(url, request, model_name=model))
        # binary tensors both ways
        tensor = InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = [RequestedOutput("probabilities", parameters={"binary_data": True})]
        request = InferRequest(model, [tensor], request_outputs=wanted)
        seen["binary"] = outputs(await client.infer(url, request, model_name=model))
        # a body naming another model than the URL does
        tensor = InferInput("image", list(batch.shape), "FP32", data=batch)
        try:
            await client.infer(url, InferRequest("other", [tensor]), model_name=model)
            seen["mismatch"] = {"status": 200}
        except httpx.HTTPStatusError as exc:
            seen["mismatch"] = {"status": exc.response.status_code, "message": str(exc)}
    finally:
        await client.close()
    return seen


async def grpc_session(address: str, model: str, batch: np.ndarray) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with InferenceGRPCClient(address, timeout=30) as client:
        seen["live"] = await client.is_server_live()
        seen["ready"] = await client.is_server_ready()
        seen["model_ready"] = await client.is_model_ready(model)
        seen["missing_model_ready"] = await client.is_model_ready("no-such-model")
        # typed contents (the SDK's default for a tensor given as data)
        tensor = InferInput("image", list(batch.shape), "FP32", data=batch.reshape(-1).tolist())
        request = InferRequest(model, [tensor], request_id="g1")
        seen["typed"] = outputs(await client.infer(request))
        # raw_input_contents
        tensor = InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        seen["raw"] = outputs(await client.infer(InferRequest(model, [tensor])))
        try:
            await client.infer(InferRequest("no-such-model", [tensor]))
            seen["missing"] = {"error": None}
        except Exception as exc:  # the SDK raises grpc's own error
            seen["missing"] = {"error": str(exc)}
    return seen


def main() -> None:
    address, model = sys.argv[1], sys.argv[2]
    batch = np.array(json.load(sys.stdin), dtype=np.float32)
    if address.startswith("grpc://"):
        seen = asyncio.run(grpc_session(address.removeprefix("grpc://"), model, batch))
    else:
        seen = asyncio.run(session(address, model, batch))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
