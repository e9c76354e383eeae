"""Every shipped classifier, re-measured through onnxruntime on its official test split."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.classifiers.classifier_eval import evaluate_shipped
from training.data.images import DATA_DIR, IDX_FILES, KNOWN_DATASETS, idx_file
from training.files import sha256_of

MODELS = Path(__file__).resolve().parent.parent / "models"
# test-accuracy floors, the quality promised for each shipped model
FLOORS = {
    "cnn-mnist": 0.990,
    "cnn-fashion-mnist": 0.91,
    "mlp-mnist": 0.975,
    "mlp-fashion-mnist": 0.88,
    "logreg-mnist": 0.915,
    "logreg-fashion-mnist": 0.83,
    "vit-mnist": 0.985,
    "vit-fashion-mnist": 0.885,
    "gnn-mnist": 0.975,  # pictures converted to graphs by the service's code, then classified
}


def has_test_split(dataset: str) -> bool:
    folder = DATA_DIR / KNOWN_DATASETS[dataset].folder
    return all(idx_file(folder, IDX_FILES["test", kind]) for kind in ("images", "labels"))


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_classifier(name: str) -> None:
    dataset = name.split("-", 1)[1]
    if not has_test_split(dataset):
        pytest.skip(f"data/{dataset} is absent: run `make data` to measure {name}")
    metrics, card = evaluate_shipped(MODELS / name)
    onnx_path = MODELS / name / str(card["version"]) / "model.onnx"
    assert card["files"]["model.onnx"]["sha256"] == sha256_of(onnx_path), "card is for another file"
    assert metrics["accuracy"] >= FLOORS[name], f"{name}: {metrics['accuracy']:.4f} < floor"
    assert abs(metrics["accuracy"] - card["metrics"]["test_accuracy"]) <= 1e-6
    assert card["dataset"]["splits"]["test"] == sum(map(sum, metrics["confusion_matrix"])) == 10000
