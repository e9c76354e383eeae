"""TorchServe handler: the onnxruntime session made in `initialize`, a batch of V2 JSON requests
stacked into one `run` in `handle`, each answered with a V2 JSON body (PEERS.md)."""

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxHandler:
    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = os.path.join(model_dir, "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = context.manifest["model"]["modelName"]

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        arrays = []
        for row in data:
            body: Any = row.get("body") or row.get("data")
            if isinstance(body, bytes | bytearray):
                body = json.loads(body)
            tensor = body["inputs"][0]
            arrays.append(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
        sizes = [a.shape[0] for a in arrays]
        results = self.session.run(self.output_names, {self.input_name: np.concatenate(arrays)})
        answers, offset = [], 0
        for size in sizes:
            outputs = [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": [size, *r.shape[1:]],
                    "data": r[offset : offset + size].ravel().tolist(),
                }
                for name, r in zip(self.output_names, results, strict=True)
            ]
            answers.append(json.dumps({"model_name": self.name, "outputs": outputs}))
            offset += size
        return answers


_service = OnnxHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    if not getattr(_service, "session", None):
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
