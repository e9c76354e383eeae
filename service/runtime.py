"""The onnxruntime layer: session options, execution-provider choice, and one graph's `run`."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service import tracing
from service.errors import InferenceFailed, InvalidInput
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
    "tensor(float16)": "FP16", "tensor(bfloat16)": "BF16", "tensor(float)": "FP32",
    "tensor(double)": "FP64", "tensor(string)": "BYTES",
}  # fmt: skip
_STATE = ort.capi.onnxruntime_pybind11_state
# what onnxruntime raises when a graph cannot run on given inputs (values, not shapes: those
# are checked before)
RUN_ERRORS: tuple[type[Exception], ...] = (
    _STATE.Fail,
    _STATE.RuntimeException,
    _STATE.InvalidArgument,
    _STATE.EPFail,
)
BF16_ONNX_TYPE = 16  # onnx.TensorProto.BFLOAT16


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
    options.enable_cpu_mem_arena = settings.cpu_memory_arena
    options.log_severity_level = 3
    return options


def served_file(path: Path, settings: Settings) -> Path:
    """`model.int8.onnx` beside `model.onnx` when int8 serving is on and the version has one."""
    if settings.int8:
        quantized = path.with_name(f"{path.stem}.int8.onnx")
        if quantized.is_file():
            return quantized
    return path


@functools.cache
def _cpu_tag() -> str:
    """Optimised graphs (NCHWc layouts) depend on the instruction set: key the cache by it."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:8]


def cached_graph_path(source: Path | bytes, settings: Settings) -> Path | None:
    """Where the optimised form of `source` (a file, or a graph's bytes) is (or will be) cached;
    None when caching is off."""
    if settings.optimized_model_cache is None or settings.graph_optimization == "disable":
        return None
    content = source.read_bytes() if isinstance(source, Path) else source
    digest = hashlib.sha256(content).hexdigest()[:24]
    name = f"{digest}-{settings.graph_optimization}-ort{ort.__version__}-{_cpu_tag()}.onnx"
    return settings.optimized_model_cache / name


def create_session(
    source: Path | bytes, settings: Settings, providers: Sequence[str]
) -> ort.InferenceSession:
    """A session for `source` (a file, or a graph's bytes); on CPU with a cache folder, the
    optimisation done at the first load is saved there and later loads skip it."""
    options = session_options(settings)
    model = str(source) if isinstance(source, Path) else source
    cached = cached_graph_path(source, settings) if providers[0] == CPU else None
    if cached is not None and cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), sess_options=options, providers=providers)
        except Exception as exc:  # a damaged cache file: optimise again and overwrite it
            log.warning("ignoring the cached optimised graph %s: %s", cached, exc)
            options = session_options(settings)
    if cached is None:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(partial)
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
        os.replace(partial, cached)  # atomic: workers loading at once never see half a file
    except Exception as exc:  # an unwritable cache (OSError, or onnxruntime's own error)
        what = source if isinstance(source, Path) else "a graph"
        log.warning("cannot cache the optimised graph of %s in %s: %s", what, cached.parent, exc)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        options = session_options(settings)  # a broken model fails again here, with its reason
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    return session


@dataclass(frozen=True)
class GraphTensor:
    name: str
    datatype: str
    shape: tuple[int | str | None, ...]


class Graph:
    """One ONNX graph in one onnxruntime session."""

    def __init__(self, path: Path, settings: Settings, content: bytes | None = None) -> None:
        """`content`: the graph's bytes when they are not the file's (a pruned graph)."""
        self.path = served_file(path, settings) if content is None else path
        self.settings = settings
        self.content = content
        providers = choose_providers(settings.provider, ort.get_available_providers())
        self.session = create_session(
            self.path if content is None else content, settings, providers
        )
        self.provider = self.session.get_providers()[0]
        self.inputs = [_tensor(x) for x in self.session.get_inputs()]
        self.outputs = [_tensor(x) for x in self.session.get_outputs()]
        self.output_names = [t.name for t in self.outputs]
        mode = settings.io_binding
        self.io_binding = mode == "always" or (mode == "cuda" and self.provider == CUDA)
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.bf16 = any(t.datatype == "BF16" for t in self.inputs + self.outputs)
        self.strings = {t.name for t in self.inputs if t.datatype == "BYTES"}
        self.span_attributes = {
            "onnxruntime.file": self.path.name,
            "onnxruntime.provider": self.provider,
        }

    def run(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        names = list(output_names or self.output_names)
        if self.strings:
            feeds = _text_feeds(feeds, self.strings)
        with tracing.span("onnxruntime.run", self.span_attributes):
            try:
                if self.bf16:
                    return self._run_bf16(feeds, names)
                if not self.io_binding:
                    results: list[np.ndarray] = self.session.run(names, dict(feeds))
                    return results
                return self._run_bound(feeds, names)
            except RUN_ERRORS as exc:
                raise InferenceFailed(
                    f"onnxruntime could not run {self.path.name}: {exc}"
                ) from None

    def with_threads(self, threads: int) -> Graph:
        """The same graph in another session, on `threads` intra-op threads."""
        settings = self.settings.model_copy(update={"intra_op_threads": threads})
        return Graph(self.path, settings, self.content)

    def size_mb(self) -> float:
        size = len(self.content) if self.content is not None else self.path.stat().st_size
        return size / 2**20

    def _run_bound(self, feeds: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        binding = self.session.io_binding()  # one per call: calls run in several threads
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return outputs

    def _run_bf16(self, feeds: Mapping[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """numpy has no bfloat16 and onnxruntime's Python API gives none back: BF16 tensors go
        in and come out as OrtValues over their uint16 bits."""
        types = {t.name: t.datatype for t in self.inputs}
        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.ascontiguousarray(value), BF16_ONNX_TYPE
            )
            if types.get(name) == "BF16"
            else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            for name, value in feeds.items()
        }
        results = self.session.run_with_ort_values(names, values)
        return [
            _bf16_bits(v) if v.data_type() == "tensor(bfloat16)" else v.numpy() for v in results
        ]


def pruned_graph(graph: Graph, outputs: Sequence[str]) -> Graph | None:
    """`graph` with only the nodes that `outputs` need, in a session of its own; None when it
    needs them all, or cannot be pruned (then a warning: the whole graph serves, as before).

    onnxruntime runs every node of a graph whatever outputs a call asks for: a graph whose
    config serves some of its outputs (a classifier's out-of-distribution head, a user's debug
    outputs) would pay for the rest on every request."""
    try:
        content = prune_outputs(graph.path, outputs)
        return None if content is None else Graph(graph.path, graph.settings, content)
    except Exception as exc:  # onnx's own errors for files onnxruntime accepted
        log.warning("serving %s unpruned: %s", graph.path, exc)
        return None


def prune_outputs(path: Path, outputs: Sequence[str]) -> bytes | None:
    """The ONNX file at `path` reduced to `outputs` and the nodes they depend on; None when no
    node would go. Graph inputs all stay (requests may still send them)."""
    import onnx  # imported here: only models with outputs to prune need it

    model = onnx.load(str(path))
    graph = model.graph
    needed = set(outputs)
    kept = []
    for node in reversed(graph.node):  # ONNX nodes are in topological order
        if needed.isdisjoint(node.output):
            continue
        kept.append(node)
        needed.update(node.input)
        needed.update(_subgraph_names(node))
    if len(kept) == len(graph.node):
        return None
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    _retain(graph.output, set(outputs))
    _retain(graph.initializer, needed)
    _retain(graph.value_info, needed)
    return bytes(model.SerializeToString())


def _retain(items: Any, names: set[str]) -> None:
    """Remove in place the items of a protobuf repeated field whose name is not in `names`."""
    kept = [item for item in items if item.name in names]
    del items[:]
    items.extend(kept)


def _subgraph_names(node: object) -> set[str]:
    """Every name a control-flow node's subgraphs read (they may use the outer scope's values
    without listing them as the node's inputs)."""
    names: set[str] = set()
    for attribute in getattr(node, "attribute", ()):
        for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
            for inner in subgraph.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def _text_feeds(feeds: Mapping[str, np.ndarray], strings: set[str]) -> dict[str, np.ndarray]:
    """onnxruntime's Python API passes `str(item)` of each element of a string tensor: bytes
    would reach the graph as "b'...'". BYTES elements are handed over as UTF-8 text."""
    converted = dict(feeds)
    for name in strings & feeds.keys():
        array = feeds[name]
        try:
            text = [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input {name!r}: a string tensor of this model must hold UTF-8 text", param=name
            ) from None
        converted[name] = np.array(text, dtype=object).reshape(array.shape)
    return converted


def _bf16_bits(value: ort.OrtValue) -> np.ndarray:
    """A CPU bfloat16 OrtValue's bits as a uint16 array (a copy: the OrtValue owns its memory)."""
    shape = tuple(value.shape())
    raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return np.frombuffer(raw, dtype=np.uint16).reshape(shape).copy()


def _tensor(arg: ort.NodeArg) -> GraphTensor:
    return GraphTensor(arg.name, ORT_TO_V2.get(arg.type, arg.type), tuple(arg.shape))
