"""Graphs pruned to the outputs their config serves (service/runtime.py: prune_outputs):
onnxruntime runs every node whatever a call asks for, so protocol requests run a graph without
the nodes only unserved outputs need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from helpers.shipped_models import copy_models
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from service.metrics import Metrics
from service.registry import Registry
from service.repository import Repository
from service.runtime import prune_outputs
from service.runtimes.classifier import Classifier
from service.scheduling.wide_batches import WideBatches
from service.settings import Settings

CONFIG = """
name: "two-heads"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
"""


def two_heads() -> onnx.ModelProto:
    """x (N, 4) -> y = x W1 (served) and extra = relu(x W2) W3 (not in the config)."""
    rng = np.random.default_rng(0)
    weights = {
        name: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in [("w1", (4, 3)), ("w2", (4, 16)), ("w3", (16, 2))]
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y"]),
        helper.make_node("MatMul", ["x", "w2"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w3"], ["extra"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two-heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 2]),
        ],
        list(weights.values()),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def outer_scope_if() -> onnx.ModelProto:
    """An If whose branches read `a`, computed outside and not an input of the If node."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4])],
    )
    nodes = [
        helper.make_node("Add", ["x", "x"], ["a"]),
        helper.make_node("If", ["c"], ["out"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Mul", ["x", "x"], ["extra"]),
    ]
    graph = helper.make_graph(
        nodes,
        "if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def session(content: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(content, providers=["CPUExecutionProvider"])


def test_pruning_keeps_what_the_outputs_need(tmp_path: Path) -> None:
    path = save(two_heads(), tmp_path / "model.onnx")
    content = prune_outputs(path, ["y"])
    assert content is not None
    pruned = onnx.load_from_string(content)
    assert [n.op_type for n in pruned.graph.node] == ["MatMul"]
    assert [t.name for t in pruned.graph.initializer] == ["w1"]
    assert [o.name for o in pruned.graph.output] == ["y"]
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    (expected,) = session(str(path)).run(["y"], {"x": x})
    (got,) = session(content).run(None, {"x": x})
    assert np.array_equal(got, expected)
    assert prune_outputs(path, ["y", "extra"]) is None  # every node is needed: nothing to do


def test_pruning_keeps_what_subgraphs_read_from_the_outer_scope(tmp_path: Path) -> None:
    path = save(outer_scope_if(), tmp_path / "model.onnx")
    content = prune_outputs(path, ["out"])
    assert content is not None
    assert [n.op_type for n in onnx.load_from_string(content).graph.node] == ["Add", "If"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for condition in (True, False):
        feeds = {"x": x, "c": np.array(condition)}
        (got,) = session(content).run(None, feeds)
        assert np.array_equal(got, (2 * x) if condition else -(2 * x))


def user_model(root: Path) -> Path:
    save(two_heads(), root / "two-heads" / "1" / "model.onnx")
    (root / "two-heads" / "config.pbtxt").write_text(CONFIG)
    return root


@pytest.mark.parametrize("prune", [True, False])
def test_a_config_serving_fewer_outputs_runs_the_pruned_graph(tmp_path: Path, prune: bool) -> None:
    root = user_model(tmp_path / "models")
    settings = Settings(models_dir=root, prune_outputs=prune)
    registry = Registry(Repository(root), settings, Metrics())
    registry.load("two-heads")
    model = registry.get("two-heads")
    assert model.protocol is model.primary  # nothing reads `extra`: one session only
    assert model.protocol.output_names == (["y"] if prune else ["y", "extra"])
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    (expected,) = session(str(root / "two-heads" / "1" / "model.onnx")).run(["y"], {"x": x})
    body = {
        "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    with TestClient(create_app(settings)) as client:
        response = client.post("/v2/models/two-heads/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "y"
        assert np.allclose(np.reshape(output["data"], (3, 3)), expected, atol=1e-6)
        asked = client.post(
            "/v2/models/two-heads/infer", json=body | {"outputs": [{"name": "extra"}]}
        )
        assert asked.status_code == 400 and "extra" in asked.json()["error"]


def test_the_ood_head_is_left_out_of_protocol_requests(tmp_path: Path) -> None:
    """cnn-fashion-mnist's graph computes `ood_score` for classify; V2 requests run the graph
    without it (the whole one is kept for classify), with the same answers."""
    root = copy_models(["cnn-fashion-mnist"], tmp_path / "models")
    settings = Settings(models_dir=root, access_log=False, wide_batch_threads=2)
    registry = Registry(Repository(root), settings, Metrics())
    registry.load("cnn-fashion-mnist")
    model = registry.get("cnn-fashion-mnist")
    assert isinstance(model, Classifier) and model.ood is not None
    assert "ood_score" in model.primary.output_names
    assert model.protocol.output_names == ["logits", "probabilities"]
    assert model.internal_batcher is not None and model.batcher is not None
    internal, protocol = model.internal_batcher.graph, model.batcher.graph
    assert isinstance(internal, WideBatches) and internal.narrow is model.primary
    assert isinstance(protocol, WideBatches) and protocol.narrow is model.protocol
    x = np.random.default_rng(3).random((4, 1, 28, 28)).astype(np.float32)
    name = model.primary.inputs[0].name
    whole = model.primary.run({name: x}, ["logits"])[0]
    pruned = model.protocol.run({name: x}, ["logits"])[0]
    assert np.array_equal(whole, pruned)
