"""What people read about a classifier version: the training-curves PNG and card.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
import matplotlib.pyplot as plt


def plot_curves(history: list[dict[str, float]], best_epoch: int, path: Path, title: str) -> Path:
    """Loss and accuracy per epoch for train and validation, the kept (best) epoch marked."""
    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        axis.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", label="validation")
        axis.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def classifier_card_markdown(
    name: str, version: int, card: dict[str, Any], labels: list[str], onnx_sha256: str
) -> str:
    """card.md: the card.json of the same version, for people."""
    metrics, training, export, dataset = (
        card["metrics"],
        card["training"],
        card["export"],
        card["dataset"],
    )
    per_class = [[label, f"{metrics['per_class_accuracy'][label]:.4f}"] for label in labels]
    confusion = [[label, *row] for label, row in zip(labels, card["confusion_matrix"], strict=True)]
    config = training["config"]
    return (
        "\n\n".join(
            [
                f"# {name}, version {version}",
                f"A {card['family']} classifier for {dataset['name']} ({dataset['source']}), "
                f"served from `model.onnx` (sha256 `{onnx_sha256}`).",
                "## Metrics on the test split (onnxruntime, the shipped file)",
                markdown_table(
                    ["metric", "value"],
                    [
                        ["test accuracy", f"{metrics['test_accuracy']:.4f}"],
                        ["test loss", f"{metrics['test_loss']:.4f}"],
                        [
                            "validation accuracy (kept epoch)",
                            f"{metrics['validation_accuracy']:.4f}",
                        ],
                        [
                            "test accuracy in torch before export",
                            f"{metrics['torch_test_accuracy']:.4f}",
                        ],
                    ],
                ),
                "### Per class",
                markdown_table(["class", "accuracy"], per_class),
                "### Confusion matrix (rows: true class, columns: predicted)",
                markdown_table(["true \\ predicted", *labels], confusion),
                "## Training",
                markdown_table(
                    ["", ""],
                    [
                        ["parameters", f"{training['parameters']:,}"],
                        ["epochs run", training["epochs_run"]],
                        ["kept epoch", training["best_epoch"]],
                        ["seconds", f"{training['seconds']:.0f}"],
                        ["splits", ", ".join(f"{k} {v:,}" for k, v in dataset["splits"].items())],
                    ],
                ),
                "Training config: `"
                + " ".join(f"{k}={v}" for k, v in config.items() if k != "model" and v is not None)
                + "`",
                "Model config: `" + " ".join(f"{k}={v}" for k, v in config["model"].items()) + "`",
                "![training curves](curves.png)",
                "## Export",
                f"ONNX opset {export['opset']}; onnxruntime and torch agree to "
                f"{export['max_abs_diff']:.2g} (tolerance {export['tolerance']:g}) on "
                f"{export['verified_on']}.",
            ]
        )
        + "\n"
    )
