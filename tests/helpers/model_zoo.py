"""A zoo of small ONNX models for teaching the server to serve *any* ONNX model.

Each builder writes one Triton model folder, `<repo>/<name>/1/model.onnx` with no config, and
returns the model folder. Between them they cover what a generic server meets in the wild:
every tensor type, rank-0 inputs, names that are not identifiers, many mixed inputs and
outputs, implicit state, dynamic spatial axes, models that cannot be warmed up with size-1
axes, non-tensor (sequence, map) outputs, and scikit-learn models converted by skl2onnx.
The graphs are built with onnx.helper (no torch) and are deterministic.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # as tests/helpers/onnx_builders.py; onnxruntime 1.32 runs up to 23
IR_VERSION = 9

# Open Inference Protocol datatype -> (ONNX element type, numpy dtype), for Identity per type.
# BF16 is not here: onnxruntime's Python API takes no bfloat16 numpy array (see identity_bf16).
IDENTITY_TYPES: dict[str, tuple[int, type[np.generic]]] = {
    "BOOL": (TensorProto.BOOL, np.bool_),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "UINT16": (TensorProto.UINT16, np.uint16),
    "UINT32": (TensorProto.UINT32, np.uint32),
    "UINT64": (TensorProto.UINT64, np.uint64),
    "INT8": (TensorProto.INT8, np.int8),
    "INT16": (TensorProto.INT16, np.int16),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP64": (TensorProto.DOUBLE, np.float64),
    "BYTES": (TensorProto.STRING, np.object_),
}


def write_model(folder: Path, model: onnx.ModelProto, version: int = 1) -> Path:
    """Checks the model and saves it as `<folder>/<version>/model.onnx`; returns folder."""
    onnx.checker.check_model(model, full_check=True)
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / str(version) / "model.onnx"))
    return folder


def graph_model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def tensor(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def fp32(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return tensor(name, TensorProto.FLOAT, shape)


def constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def identity_all_types(repo: Path, name: str = "all-types") -> Path:
    """`in_<TYPE>` -> Identity -> `out_<TYPE>`, [batch, 3], for every TYPE in IDENTITY_TYPES."""
    nodes, inputs, outputs = [], [], []
    for type_name, (elem_type, _) in IDENTITY_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{type_name}"], [f"out_{type_name}"]))
        inputs.append(tensor(f"in_{type_name}", elem_type, ["batch", 3]))
        outputs.append(tensor(f"out_{type_name}", elem_type, ["batch", 3]))
    return write_model(repo / name, graph_model("all_types", nodes, inputs, outputs))


def identity_bf16(repo: Path, name: str = "bf16") -> Path:
    """x bf16 [batch, 4] -> y = x, y2 = x + x (both bf16).

    onnxruntime's CPU provider has no bfloat16 Add, so y2 adds in float32 between two Casts.
    From Python, feed and read bf16 through OrtValues over uint16 buffers (io_binding).
    """
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Cast", ["x"], ["x_fp32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x_fp32", "x_fp32"], ["twice_fp32"]),
        helper.make_node("Cast", ["twice_fp32"], ["y2"], to=TensorProto.BFLOAT16),
    ]
    inputs = [tensor("x", TensorProto.BFLOAT16, ["batch", 4])]
    outputs = [
        tensor("y", TensorProto.BFLOAT16, ["batch", 4]),
        tensor("y2", TensorProto.BFLOAT16, ["batch", 4]),
    ]
    return write_model(repo / name, graph_model("bf16", nodes, inputs, outputs))


def scalar_input(repo: Path, name: str = "scalar-input") -> Path:
    """scale FP32 [] (rank 0) and x FP32 [n] -> y = x * scale, [n]; no batch axis."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"])]
    inputs = [fp32("scale", []), fp32("x", ["n"])]
    return write_model(repo / name, graph_model("scalar", nodes, inputs, [fp32("y", ["n"])]))


def odd_names(repo: Path, name: str = "odd-names") -> Path:
    """`input/0:x.y`, `a:b/c.d` FP32 [batch, 2] -> `out/put:0` = sum, `other.out/1` = difference."""
    first, second = "input/0:x.y", "a:b/c.d"
    nodes = [
        helper.make_node("Add", [first, second], ["out/put:0"]),
        helper.make_node("Sub", [first, second], ["other.out/1"]),
    ]
    inputs = [fp32(first, ["batch", 2]), fp32(second, ["batch", 2])]
    outputs = [fp32("out/put:0", ["batch", 2]), fp32("other.out/1", ["batch", 2])]
    return write_model(repo / name, graph_model("odd_names", nodes, inputs, outputs))


def many_io(repo: Path, name: str = "many-io") -> Path:
    """Five inputs of mixed types, six outputs, each a simple function of the inputs:

    i0 FP32 [batch, 4], i1 INT64 [batch, 4], i2 INT32 [batch, 2], i3 FP64 [batch, 4],
    i4 BOOL [batch, 4] ->
    o0 FP32 = i0 + float(i1)      o1 INT64 = 2 * i1        o2 INT32 = -i2
    o3 FP64 = i3 * double(i0)     o4 FP32 = float(i4) * i0 o5 BOOL = not i4
    """
    nodes = [
        helper.make_node("Cast", ["i1"], ["i1_fp32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["i0", "i1_fp32"], ["o0"]),
        helper.make_node("Mul", ["i1", "two"], ["o1"]),
        helper.make_node("Neg", ["i2"], ["o2"]),
        helper.make_node("Cast", ["i0"], ["i0_fp64"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["i3", "i0_fp64"], ["o3"]),
        helper.make_node("Cast", ["i4"], ["i4_fp32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["i4_fp32", "i0"], ["o4"]),
        helper.make_node("Not", ["i4"], ["o5"]),
    ]
    inputs = [
        fp32("i0", ["batch", 4]),
        tensor("i1", TensorProto.INT64, ["batch", 4]),
        tensor("i2", TensorProto.INT32, ["batch", 2]),
        tensor("i3", TensorProto.DOUBLE, ["batch", 4]),
        tensor("i4", TensorProto.BOOL, ["batch", 4]),
    ]
    outputs = [
        fp32("o0", ["batch", 4]),
        tensor("o1", TensorProto.INT64, ["batch", 4]),
        tensor("o2", TensorProto.INT32, ["batch", 2]),
        tensor("o3", TensorProto.DOUBLE, ["batch", 4]),
        fp32("o4", ["batch", 4]),
        tensor("o5", TensorProto.BOOL, ["batch", 4]),
    ]
    two = [constant("two", np.array(2, dtype=np.int64))]
    return write_model(repo / name, graph_model("many_io", nodes, inputs, outputs, two))


def stateful_accumulator(repo: Path, name: str = "accumulator") -> Path:
    """Triton implicit-state style: INPUT, STATE_IN FP32 [batch, 4] ->
    OUTPUT = STATE_OUT = INPUT + STATE_IN (a running sum over a sequence's requests)."""
    nodes = [
        helper.make_node("Add", ["INPUT", "STATE_IN"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
    ]
    inputs = [fp32("INPUT", ["batch", 4]), fp32("STATE_IN", ["batch", 4])]
    outputs = [fp32("OUTPUT", ["batch", 4]), fp32("STATE_OUT", ["batch", 4])]
    return write_model(repo / name, graph_model("accumulator", nodes, inputs, outputs))


def controlled_accumulator(repo: Path, name: str = "controlled") -> Path:
    """A stateful model that reads Triton's control inputs: START (FP32) resets the sum, READY
    (INT32) and END (FP32) are echoed, CORRID (UINT64) comes back as FP64. All [batch, 1]:
    SUM = INPUT + STATE_IN * (1 - START); outputs SUM, STATE_OUT = SUM, FLAGS = [READY, END],
    CORR = CORRID."""
    nodes = [
        helper.make_node("Sub", ["one", "START"], ["keep"]),
        helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
        helper.make_node("Add", ["INPUT", "kept"], ["SUM"]),
        helper.make_node("Identity", ["SUM"], ["STATE_OUT"]),
        helper.make_node("Cast", ["READY"], ["ready_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["ready_f", "END"], ["FLAGS"], axis=1),
        helper.make_node("Cast", ["CORRID"], ["CORR"], to=TensorProto.DOUBLE),
    ]
    inputs = [
        fp32("INPUT", ["batch", 1]),
        fp32("STATE_IN", ["batch", 1]),
        fp32("START", ["batch", 1]),
        fp32("END", ["batch", 1]),
        tensor("READY", TensorProto.INT32, ["batch", 1]),
        tensor("CORRID", TensorProto.UINT64, ["batch", 1]),
    ]
    outputs = [
        fp32("SUM", ["batch", 1]),
        fp32("STATE_OUT", ["batch", 1]),
        fp32("FLAGS", ["batch", 2]),
        tensor("CORR", TensorProto.DOUBLE, ["batch", 1]),
    ]
    one = constant("one", np.ones((1, 1), np.float32))
    return write_model(repo / name, graph_model("controlled", nodes, inputs, outputs, [one]))


def audio_like_step(chunk: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference for stateful_audio_like: (score, state_out) for one chunk."""
    activation = np.tanh(chunk)
    state_out = np.tanh(0.9 * state + np.concatenate([activation, activation], axis=1))
    return state_out.mean(axis=1, keepdims=True), state_out


def stateful_audio_like(repo: Path, name: str = "audio-like") -> Path:
    """chunk FP32 [batch, 8], state FP32 [batch, 16] ->
    state_out = tanh(0.9 * state + [tanh(chunk), tanh(chunk)]) FP32 [batch, 16],
    score = mean(state_out) FP32 [batch, 1].

    Nonlinear and position dependent, so feeding chunks in the wrong order, or one sequence's
    state to another, changes the scores (see audio_like_step).
    """
    nodes = [
        helper.make_node("Tanh", ["chunk"], ["activation"]),
        helper.make_node("Concat", ["activation", "activation"], ["activation_x2"], axis=1),
        helper.make_node("Mul", ["state", "decay"], ["decayed"]),
        helper.make_node("Add", ["decayed", "activation_x2"], ["pre_state"]),
        helper.make_node("Tanh", ["pre_state"], ["state_out"]),
        helper.make_node("ReduceMean", ["state_out", "feature_axis"], ["score"], keepdims=1),
    ]
    inputs = [fp32("chunk", ["batch", 8]), fp32("state", ["batch", 16])]
    outputs = [fp32("score", ["batch", 1]), fp32("state_out", ["batch", 16])]
    initializers = [
        constant("decay", np.array(0.9, dtype=np.float32)),
        constant("feature_axis", np.array([1], dtype=np.int64)),
    ]
    model = graph_model("audio_like", nodes, inputs, outputs, initializers)
    return write_model(repo / name, model)


def conv_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The fixed 3x3 kernel (4, 3, 3, 3) and bias (4,) of dynamic_hw_conv."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (4,)).astype(np.float32)
    return weight, bias


def dynamic_hw_conv(repo: Path, name: str = "dynamic-hw-conv") -> Path:
    """image FP32 [batch, 3, H, W] -> Conv 3x3 pad 1 -> ReLU -> features [batch, 4, H, W],
    GlobalAveragePool -> pooled [batch, 4, 1, 1]; H and W symbolic."""
    weight, bias = conv_weights()
    nodes = [
        helper.make_node("Conv", ["image", "weight", "bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
    ]
    inputs = [fp32("image", ["batch", 3, "H", "W"])]
    outputs = [fp32("features", ["batch", 4, "H", "W"]), fp32("pooled", ["batch", 4, 1, 1])]
    initializers = [constant("weight", weight), constant("bias", bias)]
    model = graph_model("dynamic_hw_conv", nodes, inputs, outputs, initializers)
    return write_model(repo / name, model)


def pad_needs_real_shape(repo: Path, name: str = "needs-real-shape") -> Path:
    """x FP32 [batch, T] -> Reshape [batch, T/4, 4] -> y = ReduceSum over the last axis.

    A warm-up with 1 on every dynamic axis fails (T = 1 is not a multiple of 4); T = 8 works.
    """
    nodes = [
        helper.make_node("Reshape", ["x", "groups_of_four"], ["grouped"]),
        helper.make_node("ReduceSum", ["grouped", "last_axis"], ["y"], keepdims=0),
    ]
    initializers = [
        constant("groups_of_four", np.array([0, -1, 4], dtype=np.int64)),  # 0 keeps batch
        constant("last_axis", np.array([-1], dtype=np.int64)),
    ]
    inputs = [fp32("x", ["batch", "T"])]
    outputs = [fp32("y", ["batch", "groups"])]
    model = graph_model("needs_real_shape", nodes, inputs, outputs, initializers)
    return write_model(repo / name, model)


def sequence_output(repo: Path, name: str = "sequence-output") -> Path:
    """x FP32 [batch, 3] -> y = -x FP32 [batch, 3] and seq = [x, y] (seq(tensor(float)))."""
    nodes = [
        helper.make_node("Neg", ["x"], ["y"]),
        helper.make_node("SequenceConstruct", ["x", "y"], ["seq"]),
    ]
    outputs = [
        helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["batch", 3]),
        fp32("y", ["batch", 3]),
    ]
    model = graph_model("sequence_output", nodes, [fp32("x", ["batch", 3])], outputs)
    return write_model(repo / name, model)


@functools.cache
def digits_classifier() -> Any:  # a LogisticRegression; sklearn ships no type hints
    """LogisticRegression fitted on all of load_digits (pixels 0..16, 64 features)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    pixels, digits = load_digits(return_X_y=True)
    # BLAS threads fighting over two cores made this fit twenty times slower.
    with threadpool_limits(limits=1):
        return LogisticRegression(max_iter=2000).fit(pixels.astype(np.float32), digits)


def zipmap_classifier(repo: Path, name: str = "digits-zipmap") -> Path:
    """skl2onnx with default options: input FP32 [None, 64] ->
    output_label INT64 [None] and output_probability seq(map(int64, tensor(float)))."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        digits_classifier(), initial_types=[("input", FloatTensorType([None, 64]))]
    )
    return write_model(repo / name, model)


TOPIC_SENTENCES: dict[str, list[str]] = {
    "animals": [
        "the cat sat on the mat",
        "a dog barked at the mailman",
        "the horse ran across the field",
        "my cat chases mice in the barn",
        "the puppy wagged its tail",
        "birds sing in the tall trees",
        "a cow grazed on green grass",
        "the kitten slept all afternoon",
        "wolves howl at the moon",
        "the dog fetched a stick",
        "fish swim in the cold river",
        "the rabbit hid from the fox",
    ],
    "money": [
        "stocks fell sharply today",
        "the market rallied on strong earnings",
        "the bank raised interest rates",
        "investors sold their shares",
        "the price of gold went up",
        "the company reported a loss",
        "bond yields rose this week",
        "she saved money for a house",
        "the budget deficit grew again",
        "inflation hurt household savings",
        "the loan was paid back early",
        "shares of the bank dropped",
    ],
    "weather": [
        "rain is expected tomorrow",
        "sunny skies all week long",
        "a storm hit the coast last night",
        "snow covered the mountain roads",
        "the wind blew hard this morning",
        "clouds will clear by the evening",
        "a cold front brings frost",
        "heavy rain flooded the streets",
        "it will be hot and humid",
        "fog settled over the valley",
        "thunder rolled across the sky",
        "the forecast says light showers",
    ],
}


@functools.cache
def text_pipeline() -> Any:  # a Pipeline; sklearn ships no type hints
    """Pipeline(TfidfVectorizer, LogisticRegression) over TOPIC_SENTENCES; labels 0, 1, 2."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts = [text for sentences in TOPIC_SENTENCES.values() for text in sentences]
    labels = [label for label, sentences in enumerate(TOPIC_SENTENCES.values()) for _ in sentences]
    pipeline = Pipeline([("tfidf", TfidfVectorizer()), ("classifier", LogisticRegression())])
    return pipeline.fit(texts, labels)


def sklearn_text_pipeline(repo: Path, name: str = "text-topics") -> Path:
    """text BYTES [None, 1] -> label INT64 [None], probabilities FP32 [None, 3] (no ZipMap).

    The ONNX StringNormalizer lowercases in the locale named in the graph, en_US.UTF-8 unless
    told otherwise, and onnxruntime refuses to load the model where that locale is not
    installed (as on this machine); "C" exists everywhere and is enough for ASCII text.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    pipeline = text_pipeline()
    options = {
        id(pipeline.named_steps["classifier"]): {"zipmap": False},
        id(pipeline.named_steps["tfidf"]): {"locale": "C"},
    }
    model = convert_sklearn(
        pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=options
    )
    return write_model(repo / name, model)
