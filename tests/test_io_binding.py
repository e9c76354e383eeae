"""onnxruntime I/O binding (Graph.run): the same outputs as a plain run, on CPU sessions with
`always` (the CUDA path binds the same way, to device "cuda"); off on CPU by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.onnx_builders import write_classifier

from service.app import create_app
from service.runtime import Graph
from service.settings import Settings
from service.tasks.textgen import Decoder
from service.tasks.tokenizer import WordTokenizer

MODELS = Path(__file__).resolve().parent.parent / "models"
X = np.random.default_rng(1).normal(size=(5, 1, 28, 28)).astype(np.float32)


def test_default_binds_only_on_cuda(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models") / "1" / "model.onnx"
    graph = Graph(path, Settings())
    assert graph.provider == "CPUExecutionProvider" and not graph.io_binding
    assert Graph(path, Settings(io_binding="always")).io_binding


def test_bound_outputs_equal_a_plain_run(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models") / "1" / "model.onnx"
    plain = Graph(path, Settings(io_binding="off"))
    bound = Graph(path, Settings(io_binding="always"))
    view = X[:, :, ::-1, :]  # not contiguous: bound after a copy
    for feeds in ({"image": X}, {"image": view}, {"image": X[:1]}):
        for names in (None, ["probabilities"]):
            got, want = bound.run(feeds, names), plain.run(feeds, names)
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["transformer-austen", "mamba-austen"])
def test_decoding_with_bound_state_equals_plain(name: str) -> None:
    """Step graphs with state, the Transformer's starting from an empty (0-length) cache."""
    folder = MODELS / name / "1"
    if not (folder / "step.onnx").is_file():
        pytest.skip(f"{name} is not shipped")
    config = json.loads((MODELS / name / "config.json").read_text())
    tokenizer = WordTokenizer.load(folder / "vocab.json")
    logits = []
    for mode in ("off", "always"):
        decoder = Decoder(Graph(folder / "step.onnx", Settings(io_binding=mode)).run, config,
                          tokenizer)  # fmt: skip
        context = decoder.read("It is a truth universally")
        for token in (5, 7, 11):
            decoder.feed(context, token)
        logits.append(context.logits)
    np.testing.assert_array_equal(logits[0], logits[1])


def test_v2_answers_are_the_same_with_binding(tmp_path: Path) -> None:
    write_classifier(tmp_path / "models")
    body = {"inputs": [{"name": "image", "shape": [5, 1, 28, 28], "datatype": "FP32",
                        "data": X.ravel().tolist()}]}  # fmt: skip
    answers = []
    for mode in ("off", "always"):
        settings = Settings(models_dir=tmp_path / "models", access_log=False, io_binding=mode)
        with TestClient(create_app(settings)) as client:
            response = client.post("/v2/models/linear-test/infer", json=body)
            assert response.status_code == 200, response.text
            answers.append(response.json()["outputs"])
    assert answers[0] == answers[1]
