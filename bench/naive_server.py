"""The naive baseline: FastAPI + uvicorn[standard], the session called per request on the loop.

What a person writes in ten minutes: parse the V2 JSON body, run onnxruntime, answer V2 JSON. No
validation beyond what numpy does, no metrics, no batching, no thread pool.
`BENCH_MODEL=path/to/model.onnx uvicorn bench.naive_server:app --host 127.0.0.1 --port P`
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
)
app = FastAPI()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> ORJSONResponse:
    body = await request.json()
    feeds = {
        x["name"]: np.asarray(x["data"], dtype=np.float32).reshape(x["shape"])
        for x in body["inputs"]
    }
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    outputs = [
        {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
        for n, r in zip(names, results, strict=True)
    ]
    return ORJSONResponse({"model_name": name, "outputs": outputs})


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
