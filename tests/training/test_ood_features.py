"""The feature score's graph head (training/classifiers/ood_features.py): the graph computes what
numpy computes, the head comes off again, and the weights underneath are untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from training.classifiers.ood_features import (
    KINDS,
    OUTPUT,
    LayerBank,
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


HEADED = sorted(
    p.parent.name for p in MODEL.glob("*/card.json") if "ood_head" in json.loads(p.read_text())
)


def test_the_latest_version_has_a_head() -> None:
    assert HEADED and int(HEADED[-1]) == max(int(p.name) for p in MODEL.glob("[0-9]*"))


@pytest.mark.parametrize("version", HEADED)
def test_a_shipped_head_sits_on_the_earlier_version_unchanged(version: str) -> None:
    card = json.loads((MODEL / version / "card.json").read_text())
    base = card["ood_head"]["weights_of_version"]
    headed = onnx.load(str(MODEL / version / "model.onnx"))
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


@pytest.mark.parametrize("kind", [LayerGaussian, LayerBank])
def test_the_head_computes_the_numpy_score(kind: type) -> None:
    base = strip_head(onnx.load(str(MODEL / "1" / "model.onnx")))
    probe = SummaryProbe(base)
    assert probe.pooled == ["relu", "relu_1", "relu_2"]
    train, labels = pictures(400, 1), np.arange(400) % 10
    validation = pictures(100, 2)
    layers = fit_layers(probe, probe(train), labels, probe(validation), bank=300)
    assert all(g.scale > 0 for fitted in layers.values() for g in fitted)
    scores = [s for s in candidates(layers) if type(s.layers[0]) is kind]
    # each layer alone, (the bank: every pair,) then all together
    pairs = len(layers) * (len(layers) - 1) // 2 if kind is LayerBank else 0
    assert len(scores) == len(layers) + pairs + 1
    assert {s.score for s in scores} == {KINDS[kind]}
    x = pictures(16, 3) * 3  # further out than the training pictures
    summaries = probe(x)
    for score in (scores[0], scores[-1]):
        graph = onnx_session(with_head(base, score).SerializeToString())
        (computed,) = graph.run([OUTPUT], {"image": x})
        assert computed.shape == (16,)
        np.testing.assert_allclose(computed, score.numpy(summaries), rtol=1e-3, atol=1e-3)
    inside = scores[-1].numpy(probe(validation))
    assert np.median(scores[-1].numpy(summaries)) > np.median(inside)


def test_a_bank_finds_its_own_pictures_at_no_distance() -> None:
    """feature-knn: a training picture of the bank is at distance 0 (cosine 1) from itself,
    a picture between two bank rows at the distance from the nearer one."""
    bank = LayerBank.fit("x", False, np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    assert bank.bank.shape == (3, 2)
    np.testing.assert_allclose(bank.distance(np.array([[5.0, 0.0], [0.0, 0.1]])), 0, atol=1e-6)
    np.testing.assert_allclose(
        bank.distance(np.array([[1.0, 0.2]])), 1 - 1 / np.sqrt(1.04), rtol=1e-3
    )
