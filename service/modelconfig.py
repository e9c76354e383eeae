"""One model configuration, whatever it was read from.

A model folder may hold our `config.json`, Triton's `config.pbtxt`, or nothing: each reader
(`service.config_json`, `service.pbtxt`) turns its file into a `ModelConfig`, and
`service.autocomplete` completes it from the ONNX graph the way Triton's auto-complete does (an
empty `inputs` means "take them from the graph"). The rest of the service reads only this type.

Dims are Open Inference Protocol dims: `-1` for an axis of any size, and without the batch axis
when `max_batch_size > 0` (as in Triton).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
)  # fmt: skip
TASKS = ("classification", "language-model", "image-generation")
Source = Literal["config.json", "config.pbtxt", "none"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis when the model batches
    reshape: tuple[int, ...] | None = None  # the graph's shape, when it differs from `dims`
    optional: bool = False  # an input the request may leave out
    label_filename: str | None = None  # labels of an output's classes (classification extension)

    @property
    def graph_dims(self) -> tuple[int, ...]:
        """The dims the graph sees (after `reshape`), without the batch axis."""
        return self.dims if self.reshape is None else self.reshape


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None  # None: the service's setting decides


@dataclass(frozen=True)
class InitialState:
    """How a sequence's state starts: zeros, or the raw little-endian bytes of a file in the
    model folder's `initial_state/` (as Triton's `data_file`)."""

    datatype: str
    dims: tuple[int, ...]
    zero: bool = True
    data_file: str | None = None


@dataclass(frozen=True)
class StateSpec:
    """Implicit state: the graph's `input_name` is fed the `output_name` of the previous step."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis when the model batches
    initial: InitialState | None = None  # None: zeros


ControlKind = Literal["START", "END", "READY", "CORRID"]


@dataclass(frozen=True)
class ControlInput:
    """A graph input the sequence batcher fills: START/END/READY flags or the correlation id."""

    name: str
    kind: ControlKind
    datatype: str  # of the tensor fed
    true_value: float = 1  # flags: the value for "yes" and for "no"
    false_value: float = 0


@dataclass(frozen=True)
class SequenceBatching:
    max_sequence_idle_us: int = 1_000_000  # Triton's default: one second
    states: tuple[StateSpec, ...] = ()
    controls: tuple[ControlInput, ...] = ()


@dataclass(frozen=True)
class VersionPolicy:
    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1  # for `latest`
    versions: tuple[int, ...] = ()  # for `specific`

    def choose(self, available: list[int]) -> list[int]:
        """The versions to load out of those on disk (sorted)."""
        if self.kind == "all":
            return sorted(available)
        if self.kind == "specific":
            return sorted(v for v in available if v in self.versions)
        return sorted(available)[-self.num_versions :]


@dataclass(frozen=True)
class WarmupInput:
    datatype: str
    dims: tuple[int, ...]
    fill: Literal["zero", "random", "file"] = "zero"
    data_file: str | None = None  # under the model folder's `warmup/`, for `file`


@dataclass(frozen=True)
class Warmup:
    """One of Triton's `model_warmup` samples: its failure fails the load."""

    name: str
    batch_size: int
    inputs: dict[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...] = ()  # empty: completed from the graph
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0
    task: str | None = None  # None: a tensor model served over the Open Inference Protocol only
    platform: str = "onnxruntime_onnx"
    source: Source = "config.json"
    dynamic_batching: DynamicBatching | None = None  # None: no dynamic batching
    sequence_batching: SequenceBatching | None = None
    version_policy: VersionPolicy | None = None  # None: the service's `load_versions` setting
    instance_count: int | None = None  # calls that may run at once (instance_group count)
    device: Literal["auto", "cpu", "gpu"] = "auto"  # instance_group kind
    intra_op_threads: int | None = None  # pins onnxruntime's threads for this model
    warmup: tuple[Warmup, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()  # the classes of a classifier (config.json's `labels`)
    family: str = ""
    dataset: str = ""
    graphs: dict[str, str] = field(default_factory=dict)  # role -> other .onnx of a version
    raw: dict[str, Any] = field(default_factory=dict)  # config.json as written (task sections)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """config.json's `preprocessing` section (how a classifier's pictures are prepared)."""
        section = self.raw.get("preprocessing")
        return section if isinstance(section, dict) else {}

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)

    @property
    def state_inputs(self) -> set[str]:
        seq = self.sequence_batching
        return {s.input_name for s in seq.states} if seq else set()

    @property
    def control_inputs(self) -> set[str]:
        seq = self.sequence_batching
        return {c.name for c in seq.controls} if seq else set()
