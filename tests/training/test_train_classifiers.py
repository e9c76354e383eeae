"""A whole run in seconds: train on digits, export, verify, measure and publish into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import publish
from training.classifiers import train_classifier as classify
from training.classifiers.classifier_eval import evaluate_shipped
from training.classifiers.train_classifier import TrainConfig, fit, random_shift, train
from training.data.images import load_dataset
from training.families import shipped_runs
from training.files import sha256_of
from training.models.logreg import LogisticRegression, LogRegConfig
from training.onnx_export import ExportMismatch

CONFIG_KEYS = {
    "name", "task", "family", "dataset", "platform", "max_batch_size", "inputs", "outputs",
    "labels", "preprocessing", "graphs", "batching",
}  # fmt: skip


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn-digits version 1, trained for two epochs through the command line."""
    models = tmp_path_factory.mktemp("models")
    argv = ["--dataset", "digits", "--epochs", "2", "--models-dir", str(models), "--lr", "3e-3"]
    argv += ["--widths", "8,16", "--hidden", "32", "--shift", "1", "--verify-images", "300"]
    assert classify.main("train", "cnn", argv) == 0
    return models / "cnn-digits"


def test_config_follows_the_repository_contract(published: Path) -> None:
    config = json.loads((published / "config.json").read_text())
    assert set(config) == CONFIG_KEYS
    assert config["name"] == "cnn-digits" and config["task"] == "classification"
    assert (config["family"], config["dataset"]) == ("cnn", "digits")
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 256
    assert config["inputs"] == [{"name": "image", "datatype": "FP32", "dims": [1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["dims"]) for o in config["outputs"]] == [
        ("logits", "FP32", [10]),
        ("probabilities", "FP32", [10]),
    ]
    assert config["labels"] == [str(i) for i in range(10)]
    pre = config["preprocessing"]
    assert pre["type"] == "image" and (pre["height"], pre["width"], pre["channels"]) == (28, 28, 1)
    assert pre["background"] == "dark" and pre["center"] == "mass"
    assert 0 < pre["mean"] < 1 and 0 < pre["std"] < 1
    assert config["graphs"] == {}
    assert config["batching"] == {"max_queue_delay_ms": 0.0, "preferred_batch_sizes": []}


def test_card_records_data_metrics_training_and_export(published: Path) -> None:
    version = published / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "card.json", "card.md", "curves.png", "model.onnx",
    ]  # fmt: skip
    assert not list(published.parent.glob(".staging*")), "staging folder left behind"
    card = json.loads((version / "card.json").read_text())
    assert (card["name"], card["version"], card["family"]) == ("cnn-digits", 1, "cnn")
    assert card["task"] == "classification" and card["created"]
    assert card["dataset"]["splits"] == {"train": 1295, "validation": 143, "test": 359}
    assert card["dataset"]["source"].startswith("scikit-learn")
    assert list(card["dataset"]["sha256"]) == ["digits.csv.gz"]
    metrics = card["metrics"]
    assert metrics["test_accuracy"] > 0.5 and metrics["test_loss"] > 0
    assert abs(metrics["test_accuracy"] - metrics["torch_test_accuracy"]) < 0.01
    assert len(metrics["per_class_accuracy"]) == 10
    matrix = np.array(card["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359
    assert np.trace(matrix) / 359 == pytest.approx(metrics["test_accuracy"])
    training = card["training"]
    assert training["epochs_run"] == 2 and training["parameters"] > 0 and training["seconds"] > 0
    assert training["config"]["epochs"] == 2 and training["config"]["model"]["widths"] == [8, 16]
    assert card["export"]["tolerance"] == 1e-4 and card["export"]["max_abs_diff"] <= 1e-4
    assert card["export"]["opset"] == 18 and card["export"]["verified_on"] == "300 test images"
    assert card["files"]["model.onnx"]["sha256"] == sha256_of(version / "model.onnx")
    assert set(card["versions"]) == {"torch", "onnx", "onnxruntime"}
    markdown = (version / "card.md").read_text()
    assert "![training curves](curves.png)" in markdown and "Confusion matrix" in markdown
    assert f"{metrics['test_accuracy']:.4f}" in markdown
    assert (version / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_onnxruntime_serves_it_and_evaluate_agrees(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = ort.InferenceSession(str(published / "1" / "model.onnx"))
    logits, probabilities = session.run(None, {"image": np.zeros((3, 1, 28, 28), np.float32)})
    assert logits.shape == probabilities.shape == (3, 10)
    metrics, card = evaluate_shipped(published)
    assert metrics["accuracy"] == card["metrics"]["test_accuracy"]
    argv = ["--dataset", "digits", "--models-dir", str(published.parent)]
    assert classify.main("evaluate", "cnn", argv) == 0
    assert "cnn-digits version 1: test accuracy" in capsys.readouterr().out


def test_a_mismatching_export_is_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = publish.export_onnx

    def export_something_else(module: torch.nn.Module, *args: object, **kwargs: object) -> Path:
        other = classify.WithProbabilities(LogisticRegression(LogRegConfig()))
        return real_export(other, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(publish, "export_onnx", export_something_else)  # the pipeline's exporter
    cfg = TrainConfig(dataset="digits", epochs=1, models_dir=tmp_path, verify_images=100)
    with pytest.raises(ExportMismatch):
        train("logreg", cfg, LogRegConfig())
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.glob(".staging*"))


def test_training_is_reproducible() -> None:
    data = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", epochs=2, shift=2)
    runs = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        model = LogisticRegression(LogRegConfig())
        history, _ = fit(model, data, cfg)
        runs.append(([h["val_loss"] for h in history], model.linear.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_random_shift_moves_each_image_within_bounds() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    shifted = random_shift(x, 2, fill=-1.0, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    rows, cols = (shifted[:, 0] == 1.0).nonzero()[:, 1:].T
    assert len(rows) == 64 and rows.sub(14).abs().max() <= 2 and cols.sub(14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 10
    edge = random_shift(torch.zeros(8, 1, 28, 28), 3, fill=-1.0, generator=torch.Generator())
    assert (edge == -1.0).any(), "pixels shifted in from outside take the background value"


def test_shipped_runs_cover_the_shipped_classifiers() -> None:
    runs = shipped_runs("classifier")
    names = [f"{family}-{argv[argv.index('--dataset') + 1]}" for family, argv in runs]
    assert set(names) == {
        f"{f}-{d}" for f in ("logreg", "mlp", "cnn", "vit") for d in ("mnist", "fashion-mnist")
    } | {"gnn-mnist"}
    assert names[:2] == ["cnn-mnist", "cnn-fashion-mnist"], "the ViT/GNN cards compare with them"
    for family, argv in runs:  # every option parses
        classify.apply_overrides(argv, *classify.option_configs(family), fixed=classify.DATA_FIELDS)
