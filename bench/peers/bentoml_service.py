"""BentoML service: the V2 JSON body's `inputs` list as the API argument, adaptive batching on the
runner call. `bentoml serve bentoml_service:OnnxService` with BENCH_MODEL set (PEERS.md)."""

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1)
class OnnxService:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def run(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {self.input_name: image.astype(np.float32)})[0]

    @bentoml.api
    async def infer(self, inputs: list[dict]) -> dict:
        tensor = inputs[0]
        image = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        probabilities = await self.to_async.run(image)  # type: ignore[attr-defined]
        return {
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(probabilities.shape),
                    "data": probabilities.ravel().tolist(),
                }
            ]
        }
