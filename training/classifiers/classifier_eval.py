"""Classifier metrics measured through onnxruntime, the runtime the service uses.

The card's numbers, `python -m training evaluate` and the shipped-model test all go through
`evaluate_onnx` with the same batch size and thread count, so they agree to the last digit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.tasks.graphs import GraphSample, GraphSpec, batch_graphs, image_to_graph
from training.data.images import load_test_split, normalise
from training.onnx_export import onnx_session
from training.publish import latest_version

BATCH_SIZE = 500  # fixed: the same batches give bit-identical logits on every re-measurement


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the "image" input (N, 1, 28, 28) through the graph in batches: logits (N, classes)."""
    return onnx_outputs(path, images, ["logits"])[0]


def onnx_outputs(path: Path | bytes, images: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    """Run the "image" input through the graph in batches: each named output, (N, ...)."""
    session = onnx_session(path)
    batches = [
        session.run(list(names), {"image": images[i : i + BATCH_SIZE]})
        for i in range(0, len(images), BATCH_SIZE)
    ]
    return [np.concatenate([batch[k] for batch in batches]) for k in range(len(names))]


def onnx_graph_logits(path: Path, graphs: Sequence[GraphSample]) -> np.ndarray:
    """Run graphs through a graph classifier's (x, edge_index, batch) inputs: logits (N, classes)."""
    session = onnx_session(path)
    batches = [
        session.run(["logits"], batch_graphs(graphs[i : i + BATCH_SIZE]))[0]
        for i in range(0, len(graphs), BATCH_SIZE)
    ]
    return np.concatenate(batches)


def median_latency_ms(
    path: Path, feeds: Mapping[str, np.ndarray], repeats: int = 50, threads: int = 1
) -> float:
    """Median wall time of one onnxruntime call on `feeds` (one intra-op thread), after warm-up."""
    return interleaved_latency_ms([(path, feeds)], repeats, threads)[0]


def interleaved_latency_ms(
    runs: Sequence[tuple[Path, Mapping[str, np.ndarray]]], repeats: int = 50, threads: int = 1
) -> list[float]:
    """Median milliseconds per call of each (model, feeds), the calls taken in turns so that
    models compared with each other meet the same load on a shared machine."""
    sessions = [(onnx_session(path, threads), dict(feeds)) for path, feeds in runs]
    for session, inputs in sessions:
        for _ in range(3):  # warm-up
            session.run(None, inputs)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for (session, inputs), samples in zip(sessions, times, strict=True):
            started = time.perf_counter()
            session.run(None, inputs)
            samples.append(time.perf_counter() - started)
    return [float(np.median(samples) * 1e3) for samples in times]


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (rows: truth)."""
    assert logits.shape == (len(labels), len(class_names)), f"logits {logits.shape} vs labels"
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probabilities = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    n = len(class_names)
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "loss": float(-log_probabilities[np.arange(len(labels)), labels].mean()),
        "per_class_accuracy": {
            name: float(a) for name, a in zip(class_names, per_class, strict=True)
        },
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_onnx(
    path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    return classification_metrics(onnx_logits(path, images), labels, class_names)


def evaluate_onnx_graphs(
    path: Path, graphs: Sequence[GraphSample], labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    return classification_metrics(onnx_graph_logits(path, graphs), labels, class_names)


def evaluate_shipped(
    model_dir: Path, data_dir: Path | None = None, image_folder: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-measure the latest version of a shipped classifier on its dataset's official test split.

    The images are normalised with the config's preprocessing, as the service would, so a wrong
    mean or std in config.json shows up here. Returns (metrics, the version's card).
    """
    config = json.loads((model_dir / "config.json").read_text())
    version = latest_version(model_dir)
    card = json.loads((version / "card.json").read_text())
    test = load_test_split(config["dataset"], data_dir, image_folder)
    pre = config["preprocessing"]
    images = normalise(test.images, pre["mean"], pre["std"]).numpy()
    path, labels, names = version / "model.onnx", test.labels, config["labels"]
    if "graph" in config:  # a graph classifier: the pictures become graphs as in the service
        spec = GraphSpec.from_config(config["graph"])
        graphs = [image_to_graph(image[0], spec) for image in images]
        return evaluate_onnx_graphs(path, graphs, labels, names), card
    return evaluate_onnx(path, images, labels, names), card
