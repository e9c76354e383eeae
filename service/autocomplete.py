"""Complete a model's config from its ONNX graph, as Triton's auto-complete does.

Triton's onnxruntime backend fills a config's missing `input`/`output` from the session's
inputs and outputs, decides `max_batch_size` when the config leaves it to the graph, and then
checks every tensor the config names against the graph (its `ValidateInputs`/`ValidateOutputs`).
`complete` does the same in one pass; what differs from Triton is said where it happens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from service.errors import ModelLoadError
from service.modelconfig import (
    DATATYPES,
    ControlInput,
    DynamicBatching,
    ModelConfig,
    StateSpec,
    TensorSpec,
)
from service.runtime import GraphTensor

Dim = int | str | None


def complete(
    config: ModelConfig,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    default_max_batch_size: int,
) -> ModelConfig:
    """`config` with inputs, outputs and batching taken from the graph where it left them open,
    checked against the graph where it did not.

    - Every graph input and output must be a tensor of an Open Inference Protocol datatype.
    - `max_batch_size` is decided only for a folder without a config (source "none"): Triton's
      rule, `default_max_batch_size` when every graph input and output (state and control ones
      included) has a first axis of any size, else 0; dynamic batching is then turned on when
      the batch exceeds 1 (Triton's `AutoCompleteMaxBatch`). Triton also decides it for a
      config.pbtxt that lists no inputs or outputs and no max_batch_size; here a config file
      that says nothing means 0.
    - Empty `inputs`: every graph input but the sequence batcher's state and control inputs.
      Empty `outputs`: every graph output but the state outputs. Dims are the graph's shape with
      -1 for any axis that is not a fixed size, the batch axis left out when batching; a tensor
      with no axis left becomes dims [1] with an empty reshape (Triton's form of a scalar).
    - Listed tensors must be in the graph with the same datatype and as many axes (their
      `reshape` if they have one, plus the batch axis); where both the config and the graph fix
      an axis, the sizes agree. (Triton also refuses -1 in the config against a fixed graph
      axis; here -1 matches anything.) Every graph input must be fed: listed, or a state or
      control input.
    - When batching, every tensor's first graph axis must be of any size: it is the batch.
    """
    _require_tensors(inputs, "input")
    _require_tensors(outputs, "output")
    graph_inputs = {t.name: t for t in inputs}
    graph_outputs = {t.name: t for t in outputs}
    max_batch_size, dynamic = config.max_batch_size, config.dynamic_batching
    if config.source == "none":
        batchable = all(_batchable(t) for t in (*inputs, *outputs))
        max_batch_size = max(default_max_batch_size, 0) if batchable else 0
        dynamic = DynamicBatching() if max_batch_size > 1 else None
    batching = max_batch_size > 0

    input_specs = _inputs(config, inputs, batching)
    output_specs = _outputs(config, outputs, batching)
    for state in _states(config):
        _check_state(state, graph_inputs, graph_outputs, batching)
    for control in config.sequence_batching.controls if config.sequence_batching else ():
        _check_control(control, graph_inputs, batching)
    _check_warmup(config, {spec.name for spec in input_specs})
    return dataclasses.replace(
        config,
        inputs=input_specs,
        outputs=output_specs,
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic,
    )


def _inputs(
    config: ModelConfig, inputs: Sequence[GraphTensor], batching: bool
) -> tuple[TensorSpec, ...]:
    """The config's inputs checked, or the graph's taken: all but those the sequence batcher
    feeds (states and controls), which the config may not list either."""
    fed = config.state_inputs | config.control_inputs
    if not config.inputs:
        return tuple(_from_graph(t, batching, "input") for t in inputs if t.name not in fed)
    graph = {t.name: t for t in inputs}
    specs = tuple(_checked(spec, graph, "input", batching) for spec in config.inputs)
    for spec in specs:
        if spec.name in fed:
            raise ModelLoadError(
                f"input '{spec.name}' is a sequence state or control input, which the "
                "sequence batcher feeds: remove it from the config's inputs"
            )
    listed = {spec.name for spec in specs} | fed
    for name in graph:
        if name not in listed:
            raise ModelLoadError(
                f"the graph's input '{name}' is not in the config's inputs (nor a sequence "
                "state or control input): onnxruntime needs every graph input fed"
            )
    return specs


def _outputs(
    config: ModelConfig, outputs: Sequence[GraphTensor], batching: bool
) -> tuple[TensorSpec, ...]:
    """The config's outputs checked (any subset of the graph's), or the graph's taken: all but
    the state outputs (a config may list those, for clients that want to see the state)."""
    if config.outputs:
        graph = {t.name: t for t in outputs}
        return tuple(_checked(spec, graph, "output", batching) for spec in config.outputs)
    state_outputs = {state.output_name for state in _states(config)}
    return tuple(_from_graph(t, batching, "output") for t in outputs if t.name not in state_outputs)


def _check_warmup(config: ModelConfig, served: set[str]) -> None:
    for warmup in config.warmup:
        for name in warmup.inputs:
            if name not in served:
                raise ModelLoadError(
                    f"model_warmup '{warmup.name}' feeds '{name}', which is not one of the "
                    f"model's inputs ({', '.join(sorted(served))})"
                )


def _states(config: ModelConfig) -> tuple[StateSpec, ...]:
    return config.sequence_batching.states if config.sequence_batching else ()


def _require_tensors(tensors: Iterable[GraphTensor], kind: str) -> None:
    """The Open Inference Protocol carries tensors only, of its own datatypes."""
    for t in tensors:
        if t.datatype in DATATYPES:
            continue
        if not t.datatype.startswith("tensor("):
            hint = (
                "re-export without it (skl2onnx: options={'zipmap': False}) "
                if t.datatype.startswith("seq(map(")
                else "re-export without it "
            )
            remedy = f"{hint}or drop it from the graph's {kind}s"
            raise ModelLoadError(
                f"{kind} '{t.name}' is {t.datatype}, not a tensor: the Open Inference Protocol "
                f"carries tensors only; {remedy}"
            )
        raise ModelLoadError(
            f"{kind} '{t.name}' is a {t.datatype}, which the Open Inference Protocol has no "
            "datatype for: re-export it as another type (float32, say)"
        )


def _dynamic(dim: Dim) -> bool:
    """A symbolic name, an unknown size, or a negative one: an axis of any size."""
    return not isinstance(dim, int) or dim < 0


def _batchable(t: GraphTensor) -> bool:
    return len(t.shape) >= 1 and _dynamic(t.shape[0])


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _graph_dims(t: GraphTensor, kind: str, batching: bool) -> tuple[Dim, ...]:
    """The graph's shape without its batch axis (which must be of any size) when batching."""
    if not batching:
        return t.shape
    if not _batchable(t):
        raise ModelLoadError(
            f"{kind} '{t.name}': with max_batch_size > 0 the graph's first axis is the batch "
            f"and must be of any size, but the graph's shape is {_shape_text(t.shape)}; "
            "set max_batch_size to 0 or re-export with a dynamic batch axis"
        )
    return t.shape[1:]


def _from_graph(t: GraphTensor, batching: bool, kind: str) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in _graph_dims(t, kind, batching))
    if not dims:  # Triton's auto-complete: a scalar is dims [1] reshaped to []
        return TensorSpec(name=t.name, datatype=t.datatype, dims=(1,), reshape=())
    return TensorSpec(name=t.name, datatype=t.datatype, dims=dims)


def _checked(
    spec: TensorSpec, graph: dict[str, GraphTensor], kind: str, batching: bool
) -> TensorSpec:
    """A listed tensor checked against the graph (possibly given the scalar reshape)."""
    _check_reshape(spec, kind)
    what = f"{kind} '{spec.name}'"
    t = _find(graph, spec.name, what, kind)
    if spec.reshape is None and spec.dims == (1,) and not _graph_dims(t, kind, batching):
        # dims [1] for a graph scalar: Triton's onnxruntime backend accepts it too
        spec = dataclasses.replace(spec, reshape=())
    _check_tensor(what, spec.datatype, spec.graph_dims, t, kind, batching)
    return spec


def _find(graph: dict[str, GraphTensor], name: str, what: str, kind: str) -> GraphTensor:
    t = graph.get(name)
    if t is None:
        raise ModelLoadError(
            f"{what} is not in the graph; the graph's {kind}s are: {', '.join(graph) or 'none'}"
        )
    return t


def _check_tensor(
    what: str, datatype: str, dims: tuple[int, ...], t: GraphTensor, kind: str, batching: bool
) -> None:
    """The config's datatype and dims (without the batch axis) against the graph's tensor."""
    if datatype != t.datatype:
        raise ModelLoadError(f"{what}: the config says {datatype}, the graph has {t.datatype}")
    _check_dims(what, dims, t.shape, _graph_dims(t, kind, batching), batching)


def _check_dims(
    what: str,
    config_dims: tuple[int, ...],
    graph_shape: Sequence[Dim],
    graph_dims: Sequence[Dim],
    batching: bool,
) -> None:
    batch = " plus the batch axis" if batching else ""
    if len(config_dims) != len(graph_dims):
        raise ModelLoadError(
            f"{what}: the graph's shape {_shape_text(graph_shape)} has {len(graph_shape)} axes "
            f"but the config's {list(config_dims)}{batch} makes {len(config_dims) + batching}"
        )
    for config_dim, graph_dim in zip(config_dims, graph_dims, strict=True):
        if config_dim != -1 and not _dynamic(graph_dim) and config_dim != graph_dim:
            raise ModelLoadError(
                f"{what}: the config's dims {list(config_dims)}{batch} do not fit the graph's "
                f"shape {_shape_text(graph_shape)}"
            )


def _check_reshape(spec: TensorSpec, kind: str) -> None:
    """Triton's rule (`ValidateIOShape`): dims and reshape hold as many elements; with axes of
    any size, each run of fixed axes between them holds as many on both sides."""
    if spec.reshape is None:
        return
    dims, reshape = spec.dims, spec.reshape
    bad = f"{kind} '{spec.name}': bad reshape: dims {list(dims)} do not reshape to {list(reshape)}"
    if -1 not in dims and -1 not in reshape:
        if math.prod(dims) != math.prod(reshape):
            raise ModelLoadError(f"{bad} ({math.prod(dims)} elements against {math.prod(reshape)})")
        return
    if _runs(dims) != _runs(reshape):
        raise ModelLoadError(f"{bad} (the fixed axes around the -1 axes hold different counts)")


def _runs(dims: tuple[int, ...]) -> list[int]:
    """Element counts of the fixed axes between the axes of any size."""
    runs: list[int] = []
    count = 1
    for dim in dims:
        if dim == -1:
            runs.append(count)
            count = 1
        else:
            count *= dim
    return [*runs, count]


def _check_state(
    state: StateSpec,
    graph_inputs: dict[str, GraphTensor],
    graph_outputs: dict[str, GraphTensor],
    batching: bool,
) -> None:
    """Implicit state: the graph has both ends, of the state's datatype and dims."""
    for kind, name, graph in (
        ("input", state.input_name, graph_inputs),
        ("output", state.output_name, graph_outputs),
    ):
        what = f"sequence state {kind} '{name}'"
        t = _find(graph, name, what, kind)
        _check_tensor(what, state.datatype, state.dims, t, kind, batching)


def _check_control(
    control: ControlInput, graph_inputs: dict[str, GraphTensor], batching: bool
) -> None:
    """A control input is one value per request: shape [1] (after the batch axis), as Triton's
    onnxruntime backend requires."""
    what = f"sequence control input '{control.name}'"
    t = _find(graph_inputs, control.name, what, "input")
    _check_tensor(what, control.datatype, (1,), t, "input", batching)
