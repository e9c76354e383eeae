"""The onnxruntime layer: session options, execution-provider choice, and one graph's `run`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# onnxruntime's element type strings -> Open Inference Protocol datatypes
ORT_TO_V2 = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}  # fmt: skip


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """Execution providers for a session, best first.

    `cuda` and `auto` use CUDA when this onnxruntime build has it; asking for `cuda` without it
    falls back to CPU with a warning rather than refusing to serve.
    """
    if requested not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"unknown execution provider {requested!r}")
    if requested != "cpu" and CUDA in available:
        return [CUDA, CPU]
    if requested == "cuda":
        log.warning("CUDA was asked for but onnxruntime has no CUDAExecutionProvider; using CPU")
    return [CPU]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = GRAPH_LEVELS[settings.graph_optimization]
    # Several sessions share few cores: spinning threads would steal them from each other.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class GraphTensor:
    name: str
    datatype: str
    shape: tuple[int | str | None, ...]


class Graph:
    """One ONNX graph in one onnxruntime session."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        providers = choose_providers(settings.provider, ort.get_available_providers())
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(settings), providers=providers
        )
        self.provider = self.session.get_providers()[0]
        self.inputs = [_tensor(x) for x in self.session.get_inputs()]
        self.outputs = [_tensor(x) for x in self.session.get_outputs()]
        self.output_names = [t.name for t in self.outputs]

    def run(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        return self.session.run(list(output_names or self.output_names), dict(feeds))


def _tensor(arg: ort.NodeArg) -> GraphTensor:
    return GraphTensor(arg.name, ORT_TO_V2.get(arg.type, arg.type), tuple(arg.shape))
