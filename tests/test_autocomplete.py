"""A config completed from its ONNX graph as Triton's auto-complete does, and checked against it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from service.autocomplete import complete
from service.errors import ModelLoadError
from service.modelconfig import DynamicBatching, ModelConfig, TensorSpec
from service.pbtxt import from_message, parse
from service.runtime import Graph, GraphTensor
from service.settings import Settings


def save(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opsets: tuple[tuple[str, int], ...] = (("", 18),),
) -> Graph:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return Graph(path, Settings())


def tensor(
    name: str, shape: Sequence[int | str], elem: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def relu_graph(tmp_path: Path, shape: Sequence[int | str]) -> Graph:
    """x -> Relu -> y, both of `shape`."""
    node = helper.make_node("Relu", ["x"], ["y"])
    return save(tmp_path, [node], [tensor("x", shape)], [tensor("y", shape)])


def accumulator_graph(tmp_path: Path) -> Graph:
    """Triton's ONNX implicit-state test model, less its If: OUTPUT = OUTPUT_STATE =
    (INPUT + INPUT_STATE + START) * READY, every tensor int32 [batch, 1]."""
    names = ["INPUT", "INPUT_STATE", "START", "READY"]
    nodes = [
        helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["sum"]),
        helper.make_node("Add", ["sum", "START"], ["started"]),
        helper.make_node("Mul", ["READY", "started"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["OUTPUT_STATE"]),
    ]
    int32 = TensorProto.INT32
    return save(
        tmp_path,
        nodes,
        [tensor(n, ["batch", 1], int32) for n in names],
        [tensor(n, ["batch", 1], int32) for n in ("OUTPUT", "OUTPUT_STATE")],
    )


def no_config(name: str = "m") -> ModelConfig:
    return ModelConfig(name=name, source="none")


def pbtxt(text: str) -> ModelConfig:
    return from_message(parse(text), "m")


def test_batchable_model_without_config(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3, "width"])
    config = complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=8)
    assert config.max_batch_size == 8
    assert config.inputs == (TensorSpec("x", "FP32", (3, -1)),)
    assert config.outputs == (TensorSpec("y", "FP32", (3, -1)),)
    assert config.dynamic_batching == DynamicBatching()


def test_scalar_model_does_not_batch(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, [])
    config = complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=8)
    assert config.max_batch_size == 0 and config.dynamic_batching is None
    assert config.inputs == (TensorSpec("x", "FP32", (1,), reshape=()),)


def test_fixed_first_axis_does_not_batch(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, [1, 3])
    config = complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=8)
    assert config.max_batch_size == 0 and config.dynamic_batching is None
    assert config.inputs == (TensorSpec("x", "FP32", (1, 3)),)


def test_batch_of_one_needs_no_dynamic_batching(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3])
    config = complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=1)
    assert config.max_batch_size == 1 and config.dynamic_batching is None  # Triton: only > 1


def test_batch_vector_becomes_a_scalar_reshape(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch"])
    config = complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=4)
    assert config.max_batch_size == 4
    assert config.inputs == (TensorSpec("x", "FP32", (1,), reshape=()),)


def test_non_tensor_output_is_refused(tmp_path: Path) -> None:
    """skl2onnx's default classifier output: ZipMap gives a sequence of maps."""
    probabilities = helper.make_value_info(
        "output_probability",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(
                TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
            )
        ),
    )
    nodes = [
        helper.make_node("Softmax", ["x"], ["probabilities"], axis=1),
        helper.make_node(
            "ZipMap",
            ["probabilities"],
            ["output_probability"],
            domain="ai.onnx.ml",
            classlabels_int64s=[0, 1],
        ),
    ]
    graph = save(
        tmp_path,
        nodes,
        [tensor("x", ["batch", 2])],
        [probabilities],
        opsets=(("", 18), ("ai.onnx.ml", 3)),
    )
    with pytest.raises(ModelLoadError) as info:
        complete(no_config(), graph.inputs, graph.outputs, default_max_batch_size=8)
    assert str(info.value) == (
        "output 'output_probability' is seq(map(int64,tensor(float))), not a tensor: the Open "
        "Inference Protocol carries tensors only; re-export without it "
        "(skl2onnx: options={'zipmap': False}) or drop it from the graph's outputs"
    )


def test_unsupported_element_type_is_refused() -> None:
    inputs = [GraphTensor("x", "tensor(complex64)", (2,))]
    with pytest.raises(ModelLoadError, match=r"input 'x' is a tensor\(complex64\)"):
        complete(no_config(), inputs, [], default_max_batch_size=8)


def test_config_listing_a_missing_input(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3])
    config = pbtxt('max_batch_size: 8 input [{ name: "image" data_type: TYPE_FP32 dims: [ 3 ] }]')
    with pytest.raises(
        ModelLoadError, match="input 'image' is not in the graph; the graph's inputs are: x"
    ):
        complete(config, graph.inputs, graph.outputs, default_max_batch_size=8)


def test_config_listing_a_missing_output(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3])
    config = pbtxt('max_batch_size: 8 output [{ name: "z" data_type: TYPE_FP32 dims: [ 3 ] }]')
    with pytest.raises(ModelLoadError, match="output 'z' is not in the graph"):
        complete(config, graph.inputs, graph.outputs, default_max_batch_size=8)


def test_listed_tensors_are_checked(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3, "n"])
    good = pbtxt(
        'max_batch_size: 8 input [{ name: "x" data_type: TYPE_FP32 dims: [ 3, 5 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] }]'
    )
    config = complete(good, graph.inputs, graph.outputs, default_max_batch_size=4)
    assert config.max_batch_size == 8  # the config's, not the default
    assert config.inputs == (TensorSpec("x", "FP32", (3, 5)),)
    assert config.outputs == (TensorSpec("y", "FP32", (-1, -1)),)
    assert config.dynamic_batching is None  # the config asked for none
    cases = {
        'input [{ name: "x" data_type: TYPE_FP16 dims: [ 3, 5 ] }]': (
            "input 'x': the config says FP16, the graph has FP32"
        ),
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]': (
            "input 'x': the graph's shape [batch, 3, n] has 3 axes but the config's [3] plus "
            "the batch axis makes 2"
        ),
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4, 5 ] }]': (
            "input 'x': the config's dims [4, 5] plus the batch axis do not fit the graph's "
            "shape [batch, 3, n]"
        ),
    }
    for text, message in cases.items():
        with pytest.raises(ModelLoadError) as info:
            complete(pbtxt("max_batch_size: 8 " + text), graph.inputs, graph.outputs, 8)
        assert str(info.value) == message


def test_batching_needs_a_batch_axis(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, [1, 3])
    with pytest.raises(ModelLoadError, match=r"first axis is the batch .* shape is \[1, 3\]"):
        complete(pbtxt("max_batch_size: 8"), graph.inputs, graph.outputs, 8)


def test_every_graph_input_is_fed() -> None:
    inputs = [GraphTensor("a", "FP32", (2,)), GraphTensor("b", "FP32", (2,))]
    outputs = [GraphTensor("y", "FP32", (2,))]
    config = pbtxt('input [{ name: "a" data_type: TYPE_FP32 dims: [ 2 ] }]')
    with pytest.raises(ModelLoadError, match="the graph's input 'b' is not in the config's inputs"):
        complete(config, inputs, outputs, 8)


def test_config_file_without_max_batch_size_does_not_batch(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3])
    config = complete(pbtxt(""), graph.inputs, graph.outputs, default_max_batch_size=8)
    assert config.max_batch_size == 0
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 3)),)


def test_densenet_example_against_its_graph() -> None:
    """Triton's densenet_onnx config (max_batch_size 1, the output reshaped) against the
    shapes of a batching densenet export."""
    config = pbtxt(
        'max_batch_size : 1 input [{ name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW'
        " dims: [ 3, 224, 224 ] }]"
        ' output [{ name: "fc6_1" data_type: TYPE_FP32 dims: [ 1000 ]'
        ' reshape { shape: [ 1000, 1, 1 ] } label_filename: "densenet_labels.txt" }]'
    )
    inputs = [GraphTensor("data_0", "FP32", ("N", 3, 224, 224))]
    outputs = [GraphTensor("fc6_1", "FP32", ("N", 1000, 1, 1))]
    completed = complete(config, inputs, outputs, default_max_batch_size=8)
    assert completed.outputs[0].graph_dims == (1000, 1, 1)
    assert completed.max_batch_size == 1


@pytest.mark.parametrize(
    ("dims", "reshape", "ok"),
    [
        ("[ 1000 ]", "[ 1000, 1, 1 ]", True),
        ("[ 1 ]", "[ ]", True),  # a scalar in the graph
        ("[ 2, 4, -1, 6 ]", "[ 8, -1, 1, 6 ]", True),  # Triton's own example
        ("[ 1000 ]", "[ 999, 1, 1 ]", False),
        ("[ 2, 4, -1, 6 ]", "[ 4, -1, 2, 6 ]", False),
        ("[ -1, 6 ]", "[ 6 ]", False),
    ],
)
def test_reshape_element_counts(dims: str, reshape: str, ok: bool) -> None:
    config = pbtxt(
        f'max_batch_size: 4 input [{{ name: "x" data_type: TYPE_FP32 dims: {dims}'
        f" reshape {{ shape: {reshape} }} }}]"
    )
    graph_shape = ("batch", *("n" if d == -1 else d for d in config.inputs[0].graph_dims))
    inputs = [GraphTensor("x", "FP32", graph_shape)]
    if ok:
        complete(config, inputs, [], 8)
    else:
        with pytest.raises(ModelLoadError, match="input 'x': bad reshape: dims"):
            complete(config, inputs, [], 8)


def test_dims_one_for_a_graph_scalar() -> None:
    """Triton's onnxruntime backend also takes dims [1] for a scalar graph tensor."""
    config = pbtxt('input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]')
    completed = complete(config, [GraphTensor("x", "FP32", ())], [], 8)
    assert completed.inputs == (TensorSpec("x", "FP32", (1,), reshape=()),)


IMPLICIT_STATE = """
max_batch_size: 8
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
  state [
    {
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_INT32
      dims: [ -1 ]
      initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "initial state" }
    }
  ]
}
"""


def test_implicit_state_model(tmp_path: Path) -> None:
    graph = accumulator_graph(tmp_path)
    config = complete(pbtxt(IMPLICIT_STATE), graph.inputs, graph.outputs, 8)
    # the sequence batcher feeds the state and control inputs: they are not the model's inputs
    assert config.inputs == (TensorSpec("INPUT", "INT32", (1,)),)
    assert config.outputs == (TensorSpec("OUTPUT", "INT32", (1,)),)
    assert config.max_batch_size == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('input_name: "INPUT_STATE"', 'input_name: "STATE_IN"'),
            "sequence state input 'STATE_IN' is not in the graph; the graph's inputs are: "
            "INPUT, INPUT_STATE, START, READY",
        ),
        (
            ('output_name: "OUTPUT_STATE"', 'output_name: "STATE_OUT"'),
            "sequence state output 'STATE_OUT' is not in the graph",
        ),
        (
            ("TYPE_INT32", "TYPE_INT64"),  # the state and its initial_state
            "sequence state input 'INPUT_STATE': the config says INT64, the graph has INT32",
        ),
        (
            ("dims: [ -1 ]", "dims: [ 2 ]"),
            "sequence state input 'INPUT_STATE': the config's dims [2] plus the batch axis do "
            "not fit the graph's shape [batch, 1]",
        ),
        (
            ("CONTROL_SEQUENCE_READY int32_false_true", "CONTROL_SEQUENCE_READY fp32_false_true"),
            "sequence control input 'READY': the config says FP32, the graph has INT32",
        ),
        (
            ('name: "START"', 'name: "BEGIN"'),
            "sequence control input 'BEGIN' is not in the graph",
        ),
    ],
)
def test_implicit_state_checked(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    graph = accumulator_graph(tmp_path)
    text = IMPLICIT_STATE.replace(*change)
    assert text != IMPLICIT_STATE
    with pytest.raises(ModelLoadError) as info:
        complete(pbtxt(text), graph.inputs, graph.outputs, 8)
    assert str(info.value).startswith(message)


def test_state_input_listed_as_an_input(tmp_path: Path) -> None:
    graph = accumulator_graph(tmp_path)
    text = IMPLICIT_STATE + 'input [{ name: "INPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ] }]'
    with pytest.raises(ModelLoadError, match="input 'INPUT_STATE' is a sequence state or control"):
        complete(pbtxt(text), graph.inputs, graph.outputs, 8)


def test_warmup_feeds_model_inputs(tmp_path: Path) -> None:
    graph = relu_graph(tmp_path, ["batch", 3])
    text = (
        'max_batch_size: 8 model_warmup [{ name: "w" batch_size: 2 inputs { key: "image"'
        " value { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } }]"
    )
    with pytest.raises(ModelLoadError, match="model_warmup 'w' feeds 'image', which is not one"):
        complete(pbtxt(text), graph.inputs, graph.outputs, 8)
    fixed = pbtxt(text.replace('"image"', '"x"'))
    assert complete(fixed, graph.inputs, graph.outputs, 8).warmup == fixed.warmup
