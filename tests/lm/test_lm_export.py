"""Every family, tiny and untrained, exported to ONNX: both graphs match torch, and step.onnx fed
a prompt and then token by token (through the service's generic StepModel) matches model.onnx."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.tasks.textgen import StepModel
from training.families import build_model, default_model_config
from training.language_models.lm_graphs import check_export, export_graphs, step_section
from training.onnx_export import OPSET

VOCAB = 50
TINY = {
    "rnn": {"n_embd": 8, "hidden": 12, "n_layer": 2},
    "lstm": {"n_embd": 8, "hidden": 12, "n_layer": 2},
    "gru": {"n_embd": 8, "hidden": 12, "n_layer": 2},
    "transformer": {"n_embd": 8, "n_head": 2, "n_layer": 2, "block_size": 48},
    "mamba": {"n_embd": 8, "n_layer": 2, "head_dim": 4, "d_state": 4},
}


@pytest.mark.parametrize("family", list(TINY))
def test_step_graph_equals_full_graph(tmp_path: Path, family: str) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(
        default_model_config(family), vocab_size=VOCAB, adaptive_cutoffs=(10, 30), **TINY[family]
    )
    model = build_model(family, config).eval()
    ids = np.random.default_rng(0).integers(0, VOCAB, size=300)
    export_graphs(model, tmp_path, torch.from_numpy(ids[:16].reshape(2, 8)), OPSET)

    report = check_export(model, tmp_path, ids, tolerance=1e-4, max_length=48)
    assert report["step_vs_full_max_abs_diff"] <= 1e-4
    assert report["max_abs_diff"] <= 1e-4

    # the same through the service's decoder code, which knows only config.json's "step" section
    full = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    stepper = StepModel(step, {"step": step_section(model)})
    batch = ids[:80].reshape(2, 40)
    expected = full.run(["logits"], {"input_ids": batch})[0]  # (2, 40, V)
    state = stepper.initial_state(batch=2)
    pieces = []
    for start, end in [(0, 11), *((t, t + 1) for t in range(11, 40))]:
        logits, state = stepper.run(batch[:, start:end], state)
        pieces.append(logits)
    stepped = np.concatenate(pieces, axis=1)
    assert stepped.shape == expected.shape == (2, 40, VOCAB)
    np.testing.assert_allclose(stepped, expected, atol=1e-4)
    # the outputs are log-probabilities of an exact distribution (adaptive softmax)
    np.testing.assert_allclose(np.exp(expected).sum(-1), 1.0, atol=1e-4)
