"""Small real ONNX models built with onnx.helper (no torch), for tests of the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIGIT_LABELS = [str(i) for i in range(10)]


def linear_classifier_onnx(seed: int = 0, classes: int = 10, pixels: int = 784) -> onnx.ModelProto:
    """image (N,1,28,28) -> Flatten -> MatMul -> Add -> logits, Softmax -> probabilities."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, (pixels, classes)).astype(np.float32)
    bias = rng.normal(0, 0.05, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def classifier_config(name: str, max_batch_size: int = 64) -> dict:
    return {
        "name": name,
        "task": "classification",
        "family": "linear",
        "dataset": "test",
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "inputs": [{"name": "image", "datatype": "FP32", "dims": [1, 28, 28]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "dims": [10]},
            {"name": "probabilities", "datatype": "FP32", "dims": [10]},
        ],
        "labels": DIGIT_LABELS,
        "preprocessing": {
            "type": "image",
            "height": 28,
            "width": 28,
            "channels": 1,
            "mean": 0.1307,
            "std": 0.3081,
            "background": "dark",
            "center": "mass",
        },
        "graphs": {},
        "batching": {"max_queue_delay_ms": 0, "preferred_batch_sizes": []},
    }


def write_classifier(
    root: Path, name: str = "linear-test", version: int = 1, seed: int = 0
) -> Path:
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(classifier_config(name)))
    onnx.save(linear_classifier_onnx(seed), str(model_dir / str(version) / "model.onnx"))
    card = {"name": name, "version": version, "metrics": {"test_accuracy": 0.1}}
    (model_dir / str(version) / "card.json").write_text(json.dumps(card))
    return model_dir
