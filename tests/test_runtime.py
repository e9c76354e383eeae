"""service/runtime.py: the optimised-graph disk cache and the int8 file choice, on real sessions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from helpers.onnx_builders import write_classifier

from service.runtime import Graph, cached_graph_path
from service.settings import Settings

X = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)


def test_optimised_graph_is_cached_and_reused(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models") / "1" / "model.onnx"
    cache = tmp_path / "cache"
    settings = Settings(optimized_model_cache=cache)
    reference = Graph(path, Settings()).run({"image": X})
    first = Graph(path, settings)
    cached = cached_graph_path(path, settings)
    assert cached is not None and cached.is_file()
    assert [p.name for p in cache.iterdir()] == [cached.name]  # no temporary file left behind
    stamp = cached.stat().st_mtime_ns
    second = Graph(path, settings)
    assert cached.stat().st_mtime_ns == stamp  # loaded, not rewritten
    for graph in (first, second):
        for got, want in zip(graph.run({"image": X}), reference, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cache_key_follows_the_file_and_the_level(tmp_path: Path) -> None:
    a = write_classifier(tmp_path / "a", seed=0) / "1" / "model.onnx"
    b = write_classifier(tmp_path / "b", seed=1) / "1" / "model.onnx"
    on = Settings(optimized_model_cache=tmp_path / "cache")
    assert cached_graph_path(a, on) != cached_graph_path(b, on)
    basic = Settings(optimized_model_cache=tmp_path / "cache", graph_optimization="basic")
    assert cached_graph_path(a, on) != cached_graph_path(a, basic)
    assert cached_graph_path(a, Settings()) is None  # off by default


def test_damaged_cache_file_is_replaced(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models") / "1" / "model.onnx"
    settings = Settings(optimized_model_cache=tmp_path / "cache")
    cached = cached_graph_path(path, settings)
    assert cached is not None
    cached.parent.mkdir()
    cached.write_bytes(b"not an onnx file")
    graph = Graph(path, settings)
    assert graph.run({"image": X})[0].shape == (3, 10)
    assert cached.read_bytes() != b"not an onnx file"


def test_unwritable_cache_still_serves(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "models") / "1" / "model.onnx"
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    graph = Graph(path, Settings(optimized_model_cache=blocker / "cache"))
    assert graph.run({"image": X})[0].shape == (3, 10)


def test_int8_file_is_served_only_when_asked_and_present(tmp_path: Path) -> None:
    version = write_classifier(tmp_path / "models") / "1"
    assert Graph(version / "model.onnx", Settings(int8=True)).path.name == "model.onnx"
    shutil.copy(version / "model.onnx", version / "model.int8.onnx")
    assert Graph(version / "model.onnx", Settings()).path.name == "model.onnx"
    assert Graph(version / "model.onnx", Settings(int8=True)).path.name == "model.int8.onnx"
