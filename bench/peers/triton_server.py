"""Triton (tritonserver 2.51 inside nvidia-pytriton 0.7) serving the ONNX model through an
onnxruntime callable with Triton's dynamic batcher. Run in build/bench-venvs/triton:
`python triton_server.py MODEL.onnx PORT [NAME [GRPC_PORT]]` (LD_LIBRARY_PATH: the interpreter's
LIBDIR, PEERS.md); with GRPC_PORT, Triton's own gRPC endpoint listens there too."""

import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

path, port = sys.argv[1], int(sys.argv[2])
name = sys.argv[3] if len(sys.argv) > 3 else "model"
grpc_port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
input_names = [x.name for x in session.get_inputs()]
output_names = [x.name for x in session.get_outputs()]
dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


@batch
def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
    results = session.run(output_names, inputs)
    return dict(zip(output_names, results, strict=True))


def shape(arg: ort.NodeArg) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in arg.shape[1:])


config = TritonConfig(
    http_address="127.0.0.1",
    http_port=port,
    allow_grpc=grpc_port > 0,
    grpc_address="127.0.0.1",
    grpc_port=grpc_port or 8001,
    allow_metrics=False,
    allow_sagemaker=False,
    allow_vertex_ai=False,
)
with Triton(config=config) as triton:
    triton.bind(
        model_name=name,
        infer_func=infer,  # one instance: one worker
        inputs=[
            Tensor(name=x.name, dtype=dtypes[x.type], shape=shape(x)) for x in session.get_inputs()
        ],
        outputs=[
            Tensor(name=x.name, dtype=dtypes[x.type], shape=shape(x)) for x in session.get_outputs()
        ],
        config=ModelConfig(
            max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)
        ),
        strict=True,
    )
    triton.serve()
