"""The generation metrics: Fréchet distance, classifier features taken from an ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.onnx_builders import classifier_config

from training.generators.generator_eval import (
    ClassifierProbe,
    class_consistency,
    frechet_distance,
    penultimate_tensor,
)


def test_identical_sets_are_at_distance_zero() -> None:
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_shifted_gaussians_are_at_the_squared_mean_shift() -> None:
    features = np.random.default_rng(1).normal(size=(2000, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(features, features + shift) == pytest.approx(
        float(shift @ shift), rel=1e-6
    )


def test_scaled_gaussians_follow_the_closed_form() -> None:
    # N(0, I) vs N(0, s^2 I) in D dims: D (1 - s)^2
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200_000, 3)), 2.0 * rng.normal(size=(200_000, 3))
    assert frechet_distance(a, b) == pytest.approx(3 * (1 - 2.0) ** 2, rel=0.02)


def two_layer_classifier(folder: Path) -> Path:
    """image -> Flatten -> Gemm(784, 16) -> Relu -> Gemm(16, 10) -> logits, Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.05, (784, 16)), rng.normal(0, 0.3, (16, 10))
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["features"]),
        helper.make_node("Gemm", ["features", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        ],
        [numpy_helper.from_array(w.astype(np.float32), n) for w, n in ((w1, "w1"), (w2, "w2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    (folder / "mlp-test" / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "mlp-test" / "1" / "model.onnx"))
    (folder / "mlp-test" / "config.json").write_text(json.dumps(classifier_config("mlp-test")))
    return folder / "mlp-test" / "1"


def test_probe_exposes_the_penultimate_layer(tmp_path: Path) -> None:
    version = two_layer_classifier(tmp_path)
    assert penultimate_tensor(onnx.load(str(version / "model.onnx"))) == "features"
    probe = ClassifierProbe(version)
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    features, logits = probe(images)
    assert features.shape == (7, 16) and logits.shape == (7, 10)
    assert (features >= 0).all(), "features are the ReLU's output"
    assert 0.0 <= class_consistency(logits, np.zeros(7, np.int64)) <= 1.0
