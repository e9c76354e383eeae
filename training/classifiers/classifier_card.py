"""What people read about a classifier version: the training-curves PNG and card.md, and the
docs/models.md's table of the shipped classifiers (`python -m training.classifiers.classifier_card`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
import matplotlib.pyplot as plt

from training.cards import markdown_table, save_figure
from training.families import of_group


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
    return save_figure(figure, title, path)


def classifier_card_markdown(card: dict[str, Any], labels: list[str]) -> str:
    """card.md: the card.json of the same version, for people."""
    name, version = card["name"], card["version"]
    onnx_sha256 = card["files"]["model.onnx"]["sha256"]
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
                *graph_conversion_markdown(training.get("graph")),
                "![training curves](curves.png)",
                "## Export",
                f"ONNX opset {export['opset']}; onnxruntime and torch agree to "
                f"{export['max_abs_diff']:.2g} (tolerance {export['tolerance']:g}) on "
                f"{export['verified_on']}.",
                *comparison_markdown(card.get("comparison")),
            ]
        )
        + "\n"
    )


def graph_conversion_markdown(graph: dict[str, Any] | None) -> list[str]:
    if not graph:
        return []
    values = " ".join(f"{k}={v}" for k, v in graph.items() if not isinstance(v, list | str))
    return [
        f"Pictures become graphs by `service/tasks/graphs.py` (the service's code): `{values}`, "
        f"node features {', '.join(graph['features'])}."
    ]


def comparison_markdown(comparison: dict[str, Any] | None) -> list[str]:
    """The card's "Compared with the CNN" section: accuracy, size and onnxruntime latency."""
    if not comparison:
        return []
    rows = []
    for side in (comparison["this"], comparison.get("cnn")):
        if side is None:
            continue
        latency = side["latency_ms"]
        rows.append(
            [
                side["name"],
                f"{side['test_accuracy']:.4f}",
                f"{side['parameters']:,}",
                *(f"{latency[b]:.3f}" for b in sorted(latency, key=int)),
            ]
        )
    batches = sorted(comparison["this"]["latency_ms"], key=int)
    note = "" if comparison.get("cnn") else "\n\nNo CNN of this dataset was in the repository."
    return [
        "## Compared with the CNN",
        markdown_table(
            ["model", "test accuracy", "parameters", *(f"ms at batch {b}" for b in batches)],
            rows,
        )
        + f"\n\nMeasured with {comparison['measured_with']}.{note}",
    ]


def latest_card(model_dir: Path) -> dict[str, Any] | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        return None
    card_path = max(versions, key=lambda p: int(p.name)) / "card.json"
    return json.loads(card_path.read_text()) if card_path.is_file() else None


def classifier_table(models_dir: Path) -> str:
    """docs/models.md's shipped-classifier tables, from the newest card of each classifier: quality of
    every one, then each ViT / GNN beside the CNN of its dataset (accuracy, size, latency)."""
    cards = []
    for family in of_group("classifier"):
        for model_dir in sorted(models_dir.glob(f"{family}-*")):
            card = latest_card(model_dir)
            if card is not None and card.get("task") == "classification":
                cards.append(card)
    quality = markdown_table(
        ["model", "test accuracy", "test loss", "parameters", "epochs", "training (s)"],
        [
            [
                f"`{c['name']}`",
                f"{c['metrics']['test_accuracy']:.2%}",
                f"{c['metrics']['test_loss']:.4f}",
                f"{c['training']['parameters']:,}",
                c["training"]["epochs_run"],
                f"{c['training']['seconds']:.0f}",
            ]
            for c in cards
        ],
    )
    rows = []
    for card in cards:
        comparison = card.get("comparison")
        if not comparison:
            continue
        for side in (comparison["this"], comparison.get("cnn")):
            if side is not None:
                latency = side["latency_ms"]
                rows.append(
                    [
                        f"`{side['name']}`"
                        + ("" if side is comparison["this"] else " (beside it)"),
                        f"{side['test_accuracy']:.2%}",
                        f"{side['parameters']:,}",
                        f"{latency['1']:.3f}",
                        f"{latency['64']:.2f}",
                    ]
                )
    compared = markdown_table(
        ["model", "test accuracy", "parameters", "ms, batch 1", "ms, batch 64"], rows
    )
    return (
        "Official test splits (10,000 images), measured with onnxruntime on the shipped files:\n\n"
        f"{quality}\n\nViT and GNN beside the CNN of the same dataset: onnxruntime latency per "
        "call (one thread, median of 50 calls, the two models timed in turns on a shared 2-core "
        "machine, so small differences are noise; the GNN's time excludes turning pictures into "
        f"graphs):\n\n{compared}"
    )


if __name__ == "__main__":
    from training.publish import DEFAULT_MODELS_DIR

    print(classifier_table(DEFAULT_MODELS_DIR))
