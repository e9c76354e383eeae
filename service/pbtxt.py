"""Triton's `config.pbtxt`, read as Triton reads it, and the completed config in Triton's forms.

The text is parsed against Triton's own schema (`model_config.proto`, shipped by tritonclient), so
a file Triton rejects is rejected here with protobuf's message, line and column. Every field that
is set is then looked up in `FIELDS`, one table saying what this service does with it: read it,
accept it as informational, accept it with a logged warning (it cannot change an answer), or
refuse the model (it would change answers, or asks for something this service lacks). A field
missing from the table is refused, so a field Triton adds later fails loudly rather than being
ignored in silence.

`to_message` and `triton_config_dict` go the other way: a `ModelConfig` (completed from the graph
by `service.autocomplete`) rendered as Triton renders a loaded model's config, for
`GET /v2/models/{m}/config` and the gRPC `ModelConfig` call.
"""

from __future__ import annotations

import enum
import inspect
import logging
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NoReturn

from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as pb

from service.errors import ModelLoadError
from service.modelconfig import (
    DATATYPES,
    TASKS,
    ControlInput,
    ControlKind,
    DynamicBatching,
    InitialState,
    ModelConfig,
    SequenceBatching,
    StateSpec,
    TensorSpec,
    VersionPolicy,
    Warmup,
    WarmupInput,
)

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.onnx"
SEQUENCE_IDLE_DEFAULT_US = 1_000_000  # Triton's default when max_sequence_idle_microseconds is 0


class Rule(enum.Enum):
    READ = "read"  # honoured; for a message, each of its own fields is looked up in turn
    INFO = "info"  # informational, or what this service always does: accepted silently
    IGNORED = "ignored"  # cannot change an answer (speed, memory, metrics): accepted, logged
    REFUSED = "refused"  # would change answers, or needs what this service lacks: load fails


# Every field of Triton's ModelConfig this service accepts, by path (repeated and map fields
# without an index). The rule: READ what we honour. INFO what only describes (tensor `format`,
# group and state names) or what we always do anyway (ordering, pinned host buffers). IGNORED
# what can only change speed, memory or metrics (priorities between models, rate limiting, CUDA
# graphs, sequence-slot tuning, the response cache: a cache hit returns the same answer), logged
# so nobody believes it took effect. REFUSED what would change the tensors a model receives or
# returns, which requests are answered, or how the graph is built and run (accelerators,
# optimisation level, batch inputs, ragged batches, queue policies, decoupled responses,
# ensembles, custom operator libraries, repository agents). The message says why.
FIELDS: dict[str, tuple[Rule, str]] = {
    "name": (Rule.READ, ""),
    "platform": (Rule.READ, ""),
    "backend": (Rule.READ, ""),
    "runtime": (Rule.REFUSED, "it names a backend library; this service runs onnxruntime only"),
    "version_policy": (Rule.READ, ""),
    "version_policy.latest": (Rule.READ, ""),
    "version_policy.latest.num_versions": (Rule.READ, ""),
    "version_policy.all": (Rule.READ, ""),
    "version_policy.specific": (Rule.READ, ""),
    "version_policy.specific.versions": (Rule.READ, ""),
    "max_batch_size": (Rule.READ, ""),
    "input": (Rule.READ, ""),
    "input.name": (Rule.READ, ""),
    "input.data_type": (Rule.READ, ""),
    "input.format": (Rule.INFO, "a layout hint; Triton's onnxruntime backend does not use it"),
    "input.dims": (Rule.READ, ""),
    "input.reshape": (Rule.READ, ""),
    "input.reshape.shape": (Rule.READ, ""),
    "input.optional": (Rule.READ, ""),
    "input.is_shape_tensor": (Rule.REFUSED, "shape tensors are a TensorRT feature"),
    "input.allow_ragged_batch": (
        Rule.REFUSED,
        "ragged batching would change the tensors the model receives",
    ),
    "input.is_non_linear_format_io": (Rule.REFUSED, "non-linear formats are a TensorRT feature"),
    "output": (Rule.READ, ""),
    "output.name": (Rule.READ, ""),
    "output.data_type": (Rule.READ, ""),
    "output.dims": (Rule.READ, ""),
    "output.reshape": (Rule.READ, ""),
    "output.reshape.shape": (Rule.READ, ""),
    "output.label_filename": (Rule.READ, ""),
    "output.is_shape_tensor": (Rule.REFUSED, "shape tensors are a TensorRT feature"),
    "output.is_non_linear_format_io": (Rule.REFUSED, "non-linear formats are a TensorRT feature"),
    "batch_input": (Rule.REFUSED, "it would change the tensors the model receives"),
    "batch_output": (Rule.REFUSED, "it would change the tensors the model returns"),
    "optimization": (Rule.READ, ""),
    "optimization.graph": (
        Rule.REFUSED,
        "it would change how onnxruntime optimises the graph; "
        "use the service's graph_optimization setting",
    ),
    "optimization.priority": (Rule.IGNORED, "a scheduling priority between models: speed only"),
    "optimization.cuda": (Rule.IGNORED, "CUDA graph and stream settings: speed only"),
    "optimization.execution_accelerators": (
        Rule.REFUSED,
        "it would change how the model runs",
    ),
    "optimization.input_pinned_memory": (Rule.INFO, "host buffer placement"),
    "optimization.output_pinned_memory": (Rule.INFO, "host buffer placement"),
    "optimization.gather_kernel_buffer_threshold": (Rule.INFO, "host buffer copies"),
    "optimization.eager_batching": (Rule.IGNORED, "a batch scheduling hint: speed only"),
    "dynamic_batching": (Rule.READ, ""),
    "dynamic_batching.preferred_batch_size": (Rule.READ, ""),
    "dynamic_batching.max_queue_delay_microseconds": (Rule.READ, ""),
    "dynamic_batching.preserve_ordering": (Rule.INFO, "responses always keep request order"),
    "dynamic_batching.priority_levels": (
        Rule.REFUSED,
        "request priorities would change which requests are answered first",
    ),
    "dynamic_batching.default_priority_level": (
        Rule.REFUSED,
        "request priorities would change which requests are answered first",
    ),
    "dynamic_batching.default_queue_policy": (
        Rule.REFUSED,
        "queue timeouts and sizes would change which requests are answered; "
        "use the service's request_timeout_s and max_queue_size settings",
    ),
    "dynamic_batching.priority_queue_policy": (
        Rule.REFUSED,
        "queue timeouts and sizes would change which requests are answered",
    ),
    "sequence_batching": (Rule.READ, ""),
    # `direct` and `oldest` differ in how Triton shares batch slots between sequences; both run
    # each sequence's requests one after another, in order, which is what this service does.
    "sequence_batching.direct": (Rule.READ, ""),
    "sequence_batching.direct.max_queue_delay_microseconds": (
        Rule.IGNORED,
        "sequence slot tuning: speed only",
    ),
    "sequence_batching.direct.minimum_slot_utilization": (
        Rule.IGNORED,
        "sequence slot tuning: speed only",
    ),
    "sequence_batching.oldest": (Rule.READ, ""),
    "sequence_batching.oldest.max_candidate_sequences": (
        Rule.IGNORED,
        "sequence slot tuning: speed only",
    ),
    "sequence_batching.oldest.preferred_batch_size": (
        Rule.IGNORED,
        "sequence slot tuning: speed only",
    ),
    "sequence_batching.oldest.max_queue_delay_microseconds": (
        Rule.IGNORED,
        "sequence slot tuning: speed only",
    ),
    "sequence_batching.oldest.preserve_ordering": (
        Rule.INFO,
        "responses always keep request order",
    ),
    "sequence_batching.max_sequence_idle_microseconds": (Rule.READ, ""),
    "sequence_batching.control_input": (Rule.READ, ""),
    "sequence_batching.control_input.name": (Rule.READ, ""),
    "sequence_batching.control_input.control": (Rule.READ, ""),
    "sequence_batching.control_input.control.kind": (Rule.READ, ""),
    "sequence_batching.control_input.control.int32_false_true": (Rule.READ, ""),
    "sequence_batching.control_input.control.fp32_false_true": (Rule.READ, ""),
    "sequence_batching.control_input.control.bool_false_true": (Rule.READ, ""),
    "sequence_batching.control_input.control.data_type": (Rule.READ, ""),
    "sequence_batching.state": (Rule.READ, ""),
    "sequence_batching.state.input_name": (Rule.READ, ""),
    "sequence_batching.state.output_name": (Rule.READ, ""),
    "sequence_batching.state.data_type": (Rule.READ, ""),
    "sequence_batching.state.dims": (Rule.READ, ""),
    "sequence_batching.state.initial_state": (Rule.READ, ""),
    "sequence_batching.state.initial_state.data_type": (Rule.READ, ""),
    "sequence_batching.state.initial_state.dims": (Rule.READ, ""),
    "sequence_batching.state.initial_state.zero_data": (Rule.READ, ""),
    "sequence_batching.state.initial_state.data_file": (Rule.READ, ""),
    "sequence_batching.state.initial_state.name": (Rule.INFO, "a label"),
    "sequence_batching.state.use_same_buffer_for_input_output": (
        Rule.INFO,
        "state buffer placement",
    ),
    "sequence_batching.state.use_growable_memory": (Rule.INFO, "state buffer placement"),
    "sequence_batching.iterative_sequence": (
        Rule.REFUSED,
        "iterative sequences feed the model's responses back as requests",
    ),
    "ensemble_scheduling": (Rule.REFUSED, "ensembles are not supported: serve each graph alone"),
    "instance_group": (Rule.READ, ""),
    "instance_group.name": (Rule.INFO, "a label"),
    "instance_group.kind": (Rule.READ, ""),
    "instance_group.count": (Rule.READ, ""),
    "instance_group.gpus": (Rule.READ, ""),
    "instance_group.rate_limiter": (Rule.IGNORED, "rate limiting between models: speed only"),
    "instance_group.secondary_devices": (Rule.REFUSED, "secondary devices are a TensorRT feature"),
    "instance_group.profile": (Rule.REFUSED, "optimisation profiles are a TensorRT feature"),
    "instance_group.passive": (
        Rule.REFUSED,
        "passive instances are loaded but never sent requests",
    ),
    "instance_group.host_policy": (Rule.IGNORED, "host (NUMA) placement: speed only"),
    "default_model_filename": (Rule.READ, ""),
    "cc_model_filenames": (
        Rule.REFUSED,
        f"it picks another file per GPU; each version serves {MODEL_FILENAME}",
    ),
    "metric_tags": (Rule.IGNORED, "metric labels: metrics only"),
    "parameters": (Rule.READ, ""),
    "parameters.string_value": (Rule.READ, ""),
    "model_warmup": (Rule.READ, ""),
    "model_warmup.name": (Rule.READ, ""),
    "model_warmup.batch_size": (Rule.READ, ""),
    "model_warmup.inputs": (Rule.READ, ""),
    "model_warmup.inputs.data_type": (Rule.READ, ""),
    "model_warmup.inputs.dims": (Rule.READ, ""),
    "model_warmup.inputs.zero_data": (Rule.READ, ""),
    "model_warmup.inputs.random_data": (Rule.READ, ""),
    "model_warmup.inputs.input_data_file": (Rule.READ, ""),
    "model_warmup.count": (Rule.READ, ""),
    "model_operations": (
        Rule.REFUSED,
        "custom operator libraries would load native code named in the config",
    ),
    "model_transaction_policy": (Rule.READ, ""),
    "model_transaction_policy.decoupled": (
        Rule.REFUSED,
        "decoupled models (any number of responses per request) are not supported",
    ),
    "model_repository_agents": (
        Rule.REFUSED,
        "repository agents would rewrite the model before it loads",
    ),
    "response_cache": (Rule.READ, ""),
    "response_cache.enable": (Rule.IGNORED, "responses are not cached; answers are the same"),
    "model_metrics": (Rule.IGNORED, "custom metric buckets: metrics only"),
}

# Triton's onnxruntime backend reads these `parameters`; this service applies only
# intra_op_thread_count (as the model's intra_op_threads), the others are logged.
ORT_BACKEND_PARAMETERS = frozenset({
    "execution_mode", "inter_op_thread_count", "enable_mem_arena", "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage", "session.use_device_allocator_for_initializers",
    "share_session_between_instances", "cudnn_conv_algo_search", "gpu_mem_limit",
    "arena_extend_strategy", "do_copy_in_default_stream",
})  # fmt: skip

TYPE_TO_DATATYPE = {
    pb.TYPE_BOOL: "BOOL", pb.TYPE_UINT8: "UINT8", pb.TYPE_UINT16: "UINT16",
    pb.TYPE_UINT32: "UINT32", pb.TYPE_UINT64: "UINT64", pb.TYPE_INT8: "INT8",
    pb.TYPE_INT16: "INT16", pb.TYPE_INT32: "INT32", pb.TYPE_INT64: "INT64",
    pb.TYPE_FP16: "FP16", pb.TYPE_BF16: "BF16", pb.TYPE_FP32: "FP32", pb.TYPE_FP64: "FP64",
    pb.TYPE_STRING: "BYTES",
}  # fmt: skip
DATATYPE_TO_TYPE = {datatype: number for number, datatype in TYPE_TO_DATATYPE.items()}
assert set(DATATYPE_TO_TYPE) == set(DATATYPES), "every datatype needs its Triton TYPE_*"

Control = pb.ModelSequenceBatching.Control
CONTROL_KINDS: dict[int, ControlKind] = {
    Control.CONTROL_SEQUENCE_START: "START",
    Control.CONTROL_SEQUENCE_END: "END",
    Control.CONTROL_SEQUENCE_READY: "READY",
    Control.CONTROL_SEQUENCE_CORRID: "CORRID",
}
KIND_TO_CONTROL = {kind: number for number, kind in CONTROL_KINDS.items()}
CORRID_DATATYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")  # as Triton allows

Group = pb.ModelInstanceGroup
GROUP_DEVICES: dict[int, Literal["auto", "cpu", "gpu"]] = {
    Group.KIND_AUTO: "auto",
    Group.KIND_CPU: "cpu",
    Group.KIND_GPU: "gpu",
}
DEVICE_TO_KIND = {device: kind for kind, device in GROUP_DEVICES.items()}


def read_pbtxt(path: Path, folder_name: str) -> ModelConfig:
    """The `ModelConfig` a Triton `config.pbtxt` describes (inputs/outputs may still be empty:
    `service.autocomplete` fills them from the graph, as Triton's auto-complete does)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"config.pbtxt: cannot read it: {exc}") from exc
    return from_message(parse(text), folder_name)


def parse(text: str) -> pb.ModelConfig:
    """Triton's schema applied to the text; a parse error names the line and column."""
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        message = str(exc)
        if line is not None:
            message = message.removeprefix(f"{line}:{column} : ")
            raise ModelLoadError(f"config.pbtxt: line {line}, column {column}: {message}") from exc
        raise ModelLoadError(f"config.pbtxt: {message}") from exc


def from_message(msg: pb.ModelConfig, folder_name: str) -> ModelConfig:
    """Check every set field against `FIELDS`, then read the honoured ones."""
    check_fields(msg, folder_name)
    if msg.name not in ("", folder_name):
        _fail(
            f"name '{msg.name}' differs from the model's folder '{folder_name}' "
            "(Triton requires them to agree)"
        )
    if msg.platform not in ("", "onnxruntime_onnx"):
        _fail(
            f"platform '{msg.platform}' is not supported: "
            "this service runs ONNX models (platform onnxruntime_onnx)"
        )
    if msg.backend not in ("", "onnxruntime"):
        _fail(
            f"backend '{msg.backend}' is not supported: "
            "this service runs ONNX models (backend onnxruntime)"
        )
    if msg.default_model_filename not in ("", MODEL_FILENAME):
        _fail(
            f"default_model_filename '{msg.default_model_filename}' is not supported: "
            f"each version's file must be named {MODEL_FILENAME}"
        )
    if msg.max_batch_size < 0:
        _fail(f"max_batch_size must be 0 or more, not {msg.max_batch_size}")
    max_batch_size = msg.max_batch_size
    inputs = tuple(_tensor(io, "input", max_batch_size) for io in msg.input)
    outputs = tuple(_tensor(io, "output", max_batch_size) for io in msg.output)
    for kind, specs in (("input", inputs), ("output", outputs)):
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            _fail(f"{kind} names must be unique: {names}")
    scheduler = msg.WhichOneof("scheduling_choice")
    parameters = {key: value.string_value for key, value in msg.parameters.items()}
    _warn_backend_parameters(parameters, folder_name)
    device, instance_count = _instances(msg.instance_group)
    return ModelConfig(
        name=folder_name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        task=_task(parameters),
        platform="onnxruntime_onnx",
        source="config.pbtxt",
        dynamic_batching=(
            _dynamic(msg.dynamic_batching, max_batch_size)
            if scheduler == "dynamic_batching"
            else None
        ),
        sequence_batching=(
            _sequence(msg.sequence_batching) if scheduler == "sequence_batching" else None
        ),
        version_policy=_version_policy(msg) if msg.HasField("version_policy") else None,
        instance_count=instance_count,
        device=device,
        intra_op_threads=_intra_op_threads(parameters),
        warmup=tuple(_warmup(w, max_batch_size) for w in msg.model_warmup),
        parameters=parameters,
    )


def check_fields(message: Message, model: str, path: str = "", shown: str = "") -> None:
    """Walk the fields set in `message` (recursively) against `FIELDS`."""
    for field, value in message.ListFields():
        key = f"{path}.{field.name}" if path else field.name
        where = f"{shown}.{field.name}" if shown else field.name
        rule, why = FIELDS.get(key, (Rule.REFUSED, "this service does not know this field"))
        if rule is Rule.REFUSED:
            _fail(f"{where} is not supported ({why})")
        if rule is Rule.IGNORED:
            log.warning("model %s: config.pbtxt: %s is ignored (%s)", model, where, why)
        if rule is not Rule.READ or field.message_type is None:
            continue
        if isinstance(value, Message):
            check_fields(value, model, key, where)
        elif field.message_type.GetOptions().map_entry:
            for item_key, item in value.items():
                if isinstance(item, Message):
                    check_fields(item, model, key, f'{where}["{item_key}"]')
        else:
            for index, item in enumerate(value):
                name = getattr(item, "name", "")  # inputs, outputs, groups, warmups have one
                check_fields(
                    item, model, key, f'{where}["{name}"]' if name else f"{where}[{index}]"
                )


def _fail(message: str) -> NoReturn:
    raise ModelLoadError(f"config.pbtxt: {message}")


def _datatype(value: int, what: str) -> str:
    if value == pb.TYPE_INVALID:
        _fail(f"{what} must set data_type")
    if value not in TYPE_TO_DATATYPE:
        name = pb.DataType.Name(value)
        _fail(f"{what}: data_type {name} has no Open Inference Protocol datatype")
    return TYPE_TO_DATATYPE[value]


def _dims(values: Any, what: str, *, wildcard: bool = True) -> tuple[int, ...]:
    dims = tuple(int(d) for d in values)
    for dim in dims:
        if dim < 1 and not (wildcard and dim == -1):
            allowed = (
                "integers >= 1, or -1 for an axis of any size" if wildcard else "integers >= 1"
            )
            _fail(f"{what}: dims {list(dims)} must be {allowed}")
    return dims


def _relative_file(name: str, what: str) -> str:
    """A file named in the config must stay inside the model folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        _fail(f"{what} '{name}' must be a file name inside the model folder")
    return name


def _tensor(io: pb.ModelInput | pb.ModelOutput, kind: str, max_batch_size: int) -> TensorSpec:
    if not io.name:
        _fail(f"every {kind} must set name")
    what = f"{kind} '{io.name}'"
    if not io.dims:
        _fail(f"{what} must set dims")
    reshape = None
    if io.HasField("reshape"):
        reshape = _dims(io.reshape.shape, f"{what} reshape")
        if not reshape and max_batch_size == 0:
            _fail(
                f"{what}: an empty reshape (a scalar in the graph) needs max_batch_size > 0, "
                "as in Triton"
            )
    optional = isinstance(io, pb.ModelInput) and io.optional
    label_file = None
    if isinstance(io, pb.ModelOutput) and io.label_filename:
        label_file = _relative_file(io.label_filename, f"{what} label_filename")
    return TensorSpec(
        name=io.name,
        datatype=_datatype(io.data_type, what),
        dims=_dims(io.dims, what),
        reshape=reshape,
        optional=optional,
        label_filename=label_file,
    )


def _dynamic(msg: pb.ModelDynamicBatching, max_batch_size: int) -> DynamicBatching:
    preferred = tuple(msg.preferred_batch_size)
    for size in preferred:
        if not 0 < size <= max_batch_size:
            _fail(
                f"dynamic_batching.preferred_batch_size {list(preferred)} must lie in "
                f"1..max_batch_size ({max_batch_size})"
            )
    return DynamicBatching(
        preferred_batch_sizes=preferred,
        max_queue_delay_us=msg.max_queue_delay_microseconds or None,
    )


def _sequence(msg: pb.ModelSequenceBatching) -> SequenceBatching:
    controls: list[ControlInput] = []
    for control_input in msg.control_input:
        controls.append(_control(control_input))
    seen_names = [c.name for c in controls]
    seen_kinds = [c.kind for c in controls]
    if len(set(seen_names)) != len(seen_names):
        _fail(f"sequence_batching: each control_input name may appear once: {seen_names}")
    if len(set(seen_kinds)) != len(seen_kinds):
        _fail(f"sequence_batching: each control kind may appear once: {seen_kinds}")
    return SequenceBatching(
        max_sequence_idle_us=msg.max_sequence_idle_microseconds or SEQUENCE_IDLE_DEFAULT_US,
        states=tuple(_state(state) for state in msg.state),
        controls=tuple(controls),
    )


def _control(msg: pb.ModelSequenceBatching.ControlInput) -> ControlInput:
    if not msg.name:
        _fail("sequence_batching: every control_input must set name")
    what = f"sequence_batching control_input '{msg.name}'"
    if len(msg.control) != 1:
        _fail(f"{what} must hold exactly one control, not {len(msg.control)}")
    control = msg.control[0]
    kind = CONTROL_KINDS.get(control.kind)
    if kind is None:
        _fail(f"{what}: control kind {Control.Kind.Name(control.kind)} is not supported")
    pairs = {
        "INT32": list(control.int32_false_true),
        "FP32": list(control.fp32_false_true),
        "BOOL": list(control.bool_false_true),
    }
    given = {datatype: values for datatype, values in pairs.items() if values}
    if kind == "CORRID":
        if given:
            _fail(f"{what}: CONTROL_SEQUENCE_CORRID takes data_type, not *_false_true")
        datatype = _datatype(control.data_type, what)
        if datatype not in CORRID_DATATYPES:
            allowed = ", ".join(pb.DataType.Name(DATATYPE_TO_TYPE[d]) for d in CORRID_DATATYPES)
            _fail(f"{what}: the correlation id's data_type must be one of {allowed}")
        return ControlInput(name=msg.name, kind=kind, datatype=datatype)
    if len(given) != 1:
        _fail(
            f"{what}: CONTROL_SEQUENCE_{kind} needs exactly one of "
            "int32_false_true, fp32_false_true, bool_false_true"
        )
    ((datatype, values),) = given.items()
    if len(values) != 2:
        _fail(f"{what}: {datatype.lower()}_false_true needs exactly 2 entries, not {len(values)}")
    if control.data_type != pb.TYPE_INVALID:
        _fail(f"{what}: data_type is only for CONTROL_SEQUENCE_CORRID")
    false_value, true_value = (float(v) if datatype == "FP32" else int(v) for v in values)
    return ControlInput(
        name=msg.name,
        kind=kind,
        datatype=datatype,
        false_value=false_value,
        true_value=true_value,
    )


def _state(msg: pb.ModelSequenceBatching.State) -> StateSpec:
    if not msg.input_name or not msg.output_name:
        _fail("sequence_batching: every state must set input_name and output_name")
    what = f"sequence_batching state '{msg.input_name}'"
    if not msg.dims:
        _fail(f"{what} must set dims")
    datatype = _datatype(msg.data_type, what)
    initial = None
    if len(msg.initial_state) > 1:
        _fail(f"{what}: one initial_state at most, not {len(msg.initial_state)}")
    if msg.initial_state:
        source = msg.initial_state[0]
        which = source.WhichOneof("state_data")
        if which is None:
            _fail(f"{what}: initial_state must set zero_data or data_file")
        initial_type = _datatype(source.data_type, f"{what} initial_state")
        if initial_type != datatype:
            _fail(f"{what}: initial_state is {initial_type}, the state {datatype}")
        initial = InitialState(
            datatype=initial_type,
            dims=_dims(source.dims, f"{what} initial_state", wildcard=False),
            zero=which == "zero_data",
            data_file=(
                _relative_file(source.data_file, f"{what} initial_state data_file")
                if which == "data_file"
                else None
            ),
        )
    return StateSpec(
        input_name=msg.input_name,
        output_name=msg.output_name,
        datatype=datatype,
        dims=_dims(msg.dims, what),
        initial=initial,
    )


def _version_policy(msg: pb.ModelConfig) -> VersionPolicy:
    policy = msg.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy(kind="all")
    if which == "specific":
        versions = tuple(int(v) for v in policy.specific.versions)
        if not versions:
            _fail("version_policy.specific must list versions")
        return VersionPolicy(kind="specific", versions=versions)
    num_versions = policy.latest.num_versions if which == "latest" else 1
    if num_versions < 1:
        _fail("version_policy.latest.num_versions must be 1 or more")
    return VersionPolicy(kind="latest", num_versions=num_versions)


def _instances(groups: Any) -> tuple[Literal["auto", "cpu", "gpu"], int | None]:
    """All groups on one device kind; their counts add up (a count left unset counts 1).
    No group: the device is `auto` and the service's setting decides the count."""
    devices: set[Literal["auto", "cpu", "gpu"]] = set()
    count = 0
    for index, group in enumerate(groups):
        what = f"instance_group[{index}]"
        device = GROUP_DEVICES.get(group.kind)
        if device is None:
            kind = Group.Kind.Name(group.kind)
            _fail(f"{what}: kind {kind} is not supported (KIND_AUTO, KIND_CPU or KIND_GPU)")
        gpus = list(group.gpus)
        if gpus and device == "cpu":
            _fail(f"{what}: KIND_CPU cannot list gpus")
        if gpus not in ([], [0]):
            _fail(
                f"{what}: gpus {gpus} is not supported: "
                "this service runs a model on one device (gpus: [0])"
            )
        if group.count < 0:
            _fail(f"{what}: count must be 1 or more")
        devices.add(device)
        count += group.count or 1
    if len(devices) > 1:
        _fail(
            f"instance_group mixes kinds {sorted(devices)}: "
            "this service runs a model on one device kind"
        )
    if not devices:
        return "auto", None
    return devices.pop(), count


def _task(parameters: dict[str, str]) -> str | None:
    task = parameters.get("task")
    if task is not None and task not in TASKS:
        _fail(f"parameters task '{task}' is not one of {', '.join(TASKS)}")
    return task


def _warn_backend_parameters(parameters: dict[str, str], model: str) -> None:
    for key in sorted(ORT_BACKEND_PARAMETERS & parameters.keys()):
        log.warning(
            "model %s: config.pbtxt: parameters %s is ignored "
            "(an onnxruntime backend setting this service does not apply)",
            model,
            key,
        )


def _intra_op_threads(parameters: dict[str, str]) -> int | None:
    """Triton's onnxruntime backend parameter, honoured as the model's intra_op_threads."""
    value = parameters.get("intra_op_thread_count")
    if value is None:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if threads < 0:
        _fail(f"parameters intra_op_thread_count '{value}' must be an integer >= 0")
    return threads or None  # 0: onnxruntime's default, as in Triton's backend


def _warmup(msg: pb.ModelWarmup, max_batch_size: int) -> Warmup:
    if not msg.name:
        _fail("every model_warmup sample must set name")
    what = f"model_warmup '{msg.name}'"
    if not 1 <= msg.batch_size <= max(max_batch_size, 1):
        _fail(
            f"{what}: batch_size must lie in 1..{max(max_batch_size, 1)} "
            f"(max_batch_size, or 1 without batching), not {msg.batch_size}"
        )
    inputs: dict[str, WarmupInput] = {}
    for name, source in msg.inputs.items():
        where = f"{what} input '{name}'"
        which = source.WhichOneof("input_data_type")
        if which is None:
            _fail(f"{where} must set zero_data, random_data or input_data_file")
        inputs[name] = WarmupInput(
            datatype=_datatype(source.data_type, where),
            dims=_dims(source.dims, where, wildcard=False),
            fill="zero" if which == "zero_data" else "random" if which == "random_data" else "file",
            data_file=(
                _relative_file(source.input_data_file, f"{where} input_data_file")
                if which == "input_data_file"
                else None
            ),
        )
    if not inputs:
        _fail(f"{what} must list inputs")
    # Triton: count 0 (unset) runs the sample once
    return Warmup(name=msg.name, batch_size=msg.batch_size, inputs=inputs, count=msg.count or 1)


def to_message(config: ModelConfig) -> pb.ModelConfig:
    """The completed config as Triton holds a loaded model's config (its normalised form).

    What Triton adds when it completes a config is added too: backend and default_model_filename,
    `version_policy: latest { num_versions: 1 }` when none is set, dynamic batching's preferred
    size [max_batch_size] when none is listed, pinned host buffers in `optimization`, one
    instance group named after the model. Values the service's settings decide (the version
    policy, the queue delay, the device `auto` resolves to, the instance count) are rendered as the
    config holds them (None as Triton's default): `dataclasses.replace` the config with the
    resolved ones first to show those.
    """
    msg = pb.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend="onnxruntime",
        max_batch_size=config.max_batch_size,
        default_model_filename=MODEL_FILENAME,
    )
    _policy_message(config.version_policy or VersionPolicy(), msg.version_policy)
    for spec in config.inputs:
        _tensor_message(spec, msg.input.add(), config.batches)
        msg.input[-1].optional = spec.optional
    for spec in config.outputs:
        _tensor_message(spec, msg.output.add(), config.batches)
        if spec.label_filename:
            msg.output[-1].label_filename = spec.label_filename
    if config.dynamic_batching is not None:
        batching = config.dynamic_batching
        msg.dynamic_batching.SetInParent()
        preferred = batching.preferred_batch_sizes or (
            (config.max_batch_size,) if config.batches else ()
        )
        msg.dynamic_batching.preferred_batch_size.extend(preferred)
        msg.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us or 0
    if config.sequence_batching is not None:
        _sequence_message(config.sequence_batching, msg.sequence_batching)
    group = msg.instance_group.add(
        name=config.name, kind=DEVICE_TO_KIND[config.device], count=config.instance_count or 1
    )
    if config.device == "gpu":
        group.gpus.append(0)
    msg.optimization.input_pinned_memory.enable = True
    msg.optimization.output_pinned_memory.enable = True
    for key, value in config.parameters.items():
        msg.parameters[key].string_value = value
    if config.task is not None:
        msg.parameters["task"].string_value = config.task
    for warmup in config.warmup:
        _warmup_message(warmup, msg.model_warmup.add())
    return msg


def _policy_message(policy: VersionPolicy, msg: pb.ModelVersionPolicy) -> None:
    if policy.kind == "all":
        msg.all.SetInParent()
    elif policy.kind == "specific":
        msg.specific.versions.extend(policy.versions)
    else:
        msg.latest.num_versions = policy.num_versions


def _tensor_message(spec: TensorSpec, msg: pb.ModelInput | pb.ModelOutput, batches: bool) -> None:
    msg.name = spec.name
    msg.data_type = DATATYPE_TO_TYPE[spec.datatype]
    msg.dims.extend(spec.dims)
    # Triton cannot express a scalar reshape without batching: it shows dims [1] alone
    if spec.reshape is not None and (spec.reshape or batches):
        msg.reshape.SetInParent()
        msg.reshape.shape.extend(spec.reshape)


def _sequence_message(seq: SequenceBatching, msg: pb.ModelSequenceBatching) -> None:
    msg.SetInParent()
    msg.max_sequence_idle_microseconds = seq.max_sequence_idle_us
    for control in seq.controls:
        entry = msg.control_input.add(name=control.name).control.add(
            kind=KIND_TO_CONTROL[control.kind]
        )
        pair = (control.false_value, control.true_value)
        if control.kind == "CORRID":
            entry.data_type = DATATYPE_TO_TYPE[control.datatype]
        elif control.datatype == "FP32":
            entry.fp32_false_true.extend(float(v) for v in pair)
        elif control.datatype == "BOOL":
            entry.bool_false_true.extend(bool(v) for v in pair)
        else:
            entry.int32_false_true.extend(int(v) for v in pair)
    for state in seq.states:
        item = msg.state.add(
            input_name=state.input_name,
            output_name=state.output_name,
            data_type=DATATYPE_TO_TYPE[state.datatype],
            dims=state.dims,
        )
        if state.initial is not None:
            initial = item.initial_state.add(
                data_type=DATATYPE_TO_TYPE[state.initial.datatype], dims=state.initial.dims
            )
            if state.initial.data_file is not None and not state.initial.zero:
                initial.data_file = state.initial.data_file
            else:
                initial.zero_data = True


def _warmup_message(warmup: Warmup, msg: pb.ModelWarmup) -> None:
    msg.name = warmup.name
    msg.batch_size = warmup.batch_size
    msg.count = warmup.count
    for name, source in warmup.inputs.items():
        entry = msg.inputs[name]
        entry.data_type = DATATYPE_TO_TYPE[source.datatype]
        entry.dims.extend(source.dims)
        if source.fill == "file" and source.data_file is not None:
            entry.input_data_file = source.data_file
        elif source.fill == "random":
            entry.random_data = True
        else:
            entry.zero_data = True


def triton_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's `GET /v2/models/{m}/config` answers it.

    Triton prints the protobuf as JSON with field names as in the .proto and every field without
    presence (empty strings, zeros, empty lists and maps) shown, then turns the int64 fields that
    protobuf writes as strings back into numbers (core `ModelConfigToJson`). That fix-up misses
    `sequence_batching.state.initial_state.dims` (it looks for `initial_state` beside `state`),
    so those stay strings there and here. (Triton's gRPC ModelConfig, printed as JSON by
    tritonclient's `as_json=True`, keeps every int64 a string.)
    """
    msg = to_message(config)
    answer = _message_to_dict(msg)
    _int64_as_numbers(answer)
    order = [field.name for field in pb.ModelConfig.DESCRIPTOR.fields]  # Triton's (proto) order
    return {name: answer[name] for name in order if name in answer}


_MESSAGE_TO_DICT_PARAMETERS = inspect.signature(json_format.MessageToDict).parameters


def _message_to_dict(msg: Message) -> dict[str, Any]:
    options: dict[str, Any] = {"preserving_proto_field_name": True}
    if "always_print_fields_with_no_presence" in _MESSAGE_TO_DICT_PARAMETERS:
        options["always_print_fields_with_no_presence"] = True
    else:  # protobuf < 5.26 named it differently
        options["including_default_value_fields"] = True
    answer: dict[str, Any] = json_format.MessageToDict(msg, **options)
    return answer


def _int64_as_numbers(config: dict[str, Any]) -> None:
    """Triton's fix-up of the int64 fields this service renders (core `ModelConfigToJson`)."""
    for key in ("input", "output"):
        for io in config.get(key, []):
            _ints(io, "dims")
            if "reshape" in io:
                _ints(io["reshape"], "shape")
    specific = config.get("version_policy", {}).get("specific")
    if specific is not None:
        _ints(specific, "versions")
    dynamic = config.get("dynamic_batching")
    if dynamic is not None:
        for name in ("max_queue_delay_microseconds", "priority_levels", "default_priority_level"):
            _int(dynamic, name)
    sequence = config.get("sequence_batching")
    if sequence is not None:
        _int(sequence, "max_sequence_idle_microseconds")
        for strategy in ("oldest", "direct"):
            if strategy in sequence:
                _int(sequence[strategy], "max_queue_delay_microseconds")
        for state in sequence.get("state", []):
            _ints(state, "dims")  # not initial_state's dims: see triton_config_dict
    for warmup in config.get("model_warmup", []):
        for source in warmup.get("inputs", {}).values():
            _ints(source, "dims")


def _ints(holder: dict[str, Any], name: str) -> None:
    if name in holder:
        holder[name] = [int(v) for v in holder[name]]


def _int(holder: dict[str, Any], name: str) -> None:
    if name in holder:
        holder[name] = int(holder[name])
