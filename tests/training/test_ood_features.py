"""The feature score's graph head (training/classifiers/ood_features.py): the graph computes what
numpy computes, the head comes off again, and the weights underneath are untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx

from training.classifiers.ood_features import (
    OUTPUT,
    LayerGaussian,
    SummaryProbe,
    candidates,
    fit_layers,
    strip_head,
    with_head,
)
from training.onnx_export import onnx_session
from training.publish import DEFAULT_MODELS_DIR

MODEL = DEFAULT_MODELS_DIR / "cnn-fashion-mnist"


def pictures(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 1, 28, 28)).astype(np.float32)


def test_the_shipped_head_sits_on_the_earlier_version_unchanged() -> None:
    card = json.loads((MODEL / "2" / "card.json").read_text())
    base = card["ood_head"]["weights_of_version"]
    headed = onnx.load(str(MODEL / "2" / "model.onnx"))
    earlier = onnx.load(str(MODEL / str(base) / "model.onnx"))
    stripped = strip_head(headed)
    assert OUTPUT in {o.name for o in headed.graph.output}
    assert [o.name for o in stripped.graph.output] == [o.name for o in earlier.graph.output]
    assert stripped.graph.SerializeToString() == earlier.graph.SerializeToString()
    x = pictures(8, 0)
    new = onnx_session(headed.SerializeToString()).run(["logits", "probabilities"], {"image": x})
    old = onnx_session(earlier.SerializeToString()).run(["logits", "probabilities"], {"image": x})
    for a, b in zip(new, old, strict=True):
        assert np.array_equal(a, b)


def test_the_head_computes_the_numpy_score() -> None:
    base = strip_head(onnx.load(str(MODEL / "1" / "model.onnx")))
    probe = SummaryProbe(base)
    assert probe.pooled == ["relu", "relu_1", "relu_2"]
    train, labels = pictures(400, 1), np.arange(400) % 10
    validation = pictures(100, 2)
    layers = fit_layers(probe, probe(train), labels, probe(validation))
    assert all(isinstance(g, LayerGaussian) and g.scale > 0 for g in layers.values())
    scores = candidates(layers)
    assert len(scores) == len(layers) + 1  # each layer alone, then all together
    x = pictures(16, 3) * 3  # further out than the training pictures
    summaries = probe(x)
    for score in (scores[0], scores[-1]):
        graph = onnx_session(with_head(base, score).SerializeToString())
        (computed,) = graph.run([OUTPUT], {"image": x})
        assert computed.shape == (16,)
        np.testing.assert_allclose(computed, score.numpy(summaries), rtol=1e-3, atol=1e-3)
    inside = scores[-1].numpy(probe(validation))
    assert np.median(scores[-1].numpy(summaries)) > np.median(inside)
