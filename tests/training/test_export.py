"""The ONNX export check must catch an exported graph that does not compute what torch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.classifiers.train_classifier import WithProbabilities
from training.models.cnn import CNN, CNNConfig
from training.models.logreg import LogisticRegression, LogRegConfig
from training.onnx_export import ExportMismatch, export_onnx, verify


def export(module: torch.nn.Module, path: Path) -> Path:
    return export_onnx(
        module,
        (torch.randn(2, 1, 28, 28),),
        path,
        ["image"],
        ["logits", "probabilities"],
        dynamic_shapes=({0: "batch"},),
    )


def test_verify_fails_above_the_tolerance(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = LogisticRegression(LogRegConfig())
    model = WithProbabilities(classifier).eval()
    path = export(model, tmp_path / "model.onnx")
    images = {"image": torch.randn(50, 1, 28, 28)}
    assert verify(model, path, images, tolerance=1e-4) <= 1e-4

    with torch.no_grad():
        classifier.linear.bias.add_(1e-3)  # torch now differs from the exported graph
    with pytest.raises(ExportMismatch, match="max \\|onnxruntime - torch\\|"):
        verify(model, path, images, tolerance=1e-4)
    with pytest.raises(ExportMismatch):
        verify(model, path, images, tolerance=0.0)

    other = WithProbabilities(LogisticRegression(LogRegConfig())).eval()  # other weights
    with pytest.raises(ExportMismatch):
        verify(other, path, images, tolerance=1e-4)


def test_cnn_export_has_a_dynamic_batch_and_two_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithProbabilities(CNN(CNNConfig(widths=(4, 8), hidden=16))).eval()
    path = export(model, tmp_path / "cnn.onnx")
    assert not (tmp_path / "cnn.onnx.data").exists(), "one self-contained file"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for batch in (1, 7, 300):
        images = torch.randn(batch, 1, 28, 28)
        logits, probabilities = session.run(None, {"image": images.numpy()})
        assert logits.shape == probabilities.shape == (batch, 10)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
        assert verify(model, path, {"image": images}, tolerance=1e-4) < 1e-4
