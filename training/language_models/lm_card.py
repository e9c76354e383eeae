"""What people read about a language-model version: curves.png and card.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless
import matplotlib.pyplot as plt

from training.cards import markdown_table, save_figure


def plot_lm_curves(
    history: list[dict[str, float]],
    best_step: int,
    baseline: dict[str, Any],
    path: Path,
    title: str,
) -> Path:
    """Train and validation loss per step (left) and validation perplexity against the n-gram."""
    steps = [h["step"] for h in history]
    figure, (loss_axis, ppl_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(steps, [h["train_loss"] for h in history], "o-", label="train (mean since last)")
    loss_axis.plot(steps, [h["val_loss"] for h in history], "o-", label="validation")
    loss_axis.set_ylabel("cross-entropy (nats / token)")
    ppl_axis.plot(steps, [h["val_perplexity"] for h in history], "o-", label="validation")
    ppl_axis.axhline(
        baseline["validation_perplexity"],
        color="red",
        linestyle="--",
        label=f"Kneser-Ney {baseline['order']}-gram ({baseline['validation_perplexity']:.1f})",
    )
    ppl_axis.set_ylabel("perplexity")
    ppl_axis.set_yscale("log")
    for axis in (loss_axis, ppl_axis):
        axis.axvline(best_step, color="grey", linestyle=":", label=f"kept (step {best_step})")
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend()
    return save_figure(figure, title, path)


def lm_card_markdown(card: dict[str, Any]) -> str:
    """card.md: the card.json of the same version, for people."""
    name, version = card["name"], card["version"]
    hashes = {file: entry["sha256"] for file, entry in card["files"].items()}
    metrics, training, export, dataset = (
        card["metrics"],
        card["training"],
        card["export"],
        card["dataset"],
    )
    base = metrics["ngram_baseline"]
    gap = metrics["perplexity_vs_ngram"]
    verdict = f"{-gap:.1%} lower" if gap < 0 else f"{gap:.1%} higher"
    config = training["config"]
    rows = [
        [
            f"{name} (this model)",
            f"{metrics['test_perplexity']:.2f}",
            f"{metrics['test_top1_accuracy']:.4f}",
            f"{metrics['test_top5_accuracy']:.4f}",
        ],
        [
            base["model"],
            f"{base['test_perplexity']:.2f}",
            f"{base['test_top1_accuracy']:.4f}",
            f"{base['test_top5_accuracy']:.4f}",
        ],
    ]
    minutes = training["seconds"] / 60
    return (
        "\n\n".join(
            [
                f"# {name}, version {version}",
                f"A word-level {card['family']} language model trained on {dataset['name']} "
                f"({dataset['source']}). `model.onnx` (sha256 `{hashes['model.onnx']}`) reads a "
                f"whole sequence; `step.onnx` (sha256 `{hashes['step.onnx']}`) carries state "
                "between calls for generation (config.json, section `step`).",
                "## Quality on the test split (onnxruntime, the shipped file)",
                markdown_table(["model", "perplexity", "top-1 accuracy", "top-5 accuracy"], rows),
                f"Perplexity is {verdict} than the n-gram baseline's on the same "
                f"{metrics['test_tokens']:,} test tokens and vocabulary. "
                f"Validation perplexity {metrics['validation_perplexity']:.2f}. "
                f"Measured with {metrics['measured_with']}.",
                "## Data",
                f"Split: {dataset['split']}. Tokens: "
                + ", ".join(f"{k} {v:,}" for k, v in dataset["splits"].items())
                + ". <unk> rate: "
                + ", ".join(f"{k} {v:.2%}" for k, v in dataset["unk_rate"].items())
                + f". Vocabulary {config['vocab_size']:,} words, case "
                + ("folded." if config["lowercase"] else "kept."),
                "## Training",
                markdown_table(
                    ["", ""],
                    [
                        ["parameters", f"{training['parameters']:,}"],
                        ["steps run", f"{training['iters_run']:,} of {config['max_iters']:,}"],
                        ["kept step (best validation)", training["best_step"]],
                        ["wall time", f"{training['seconds']:.0f} s ({minutes:.1f} min)"],
                        ["torch threads", training["threads"]],
                        ["stopped by the time budget", training["stopped_early"]],
                    ],
                ),
                "Model: `"
                + ", ".join(f"{k}={v}" for k, v in config["model"].items())
                + "`\n\nTraining: `"
                + ", ".join(f"{k}={v}" for k, v in config.items() if k != "model")
                + "`",
                "![training curves](curves.png)",
                "## Export",
                f"ONNX opset {export['opset']}. onnxruntime vs torch: model.onnx "
                f"{export['model_onnx_max_abs_diff']:.2g}, step.onnx "
                f"{export['step_onnx_max_abs_diff']:.2g}; step.onnx fed in pieces vs model.onnx "
                f"{export['step_vs_full_max_abs_diff']:.2g}"
                + padded_rows_text(export)
                + f" (tolerance {export['tolerance']:g}), on {export['verified_on']}.",
            ]
        )
        + "\n"
    )


def padded_rows_text(export: dict[str, Any]) -> str:
    """The step graph's attention_mask check, for a graph that has one (the Transformer's)."""
    if "step_padded_vs_full_max_abs_diff" not in export:
        return ""
    return (
        "; step.onnx also takes `attention_mask` (1 = real token, 0 = padding at the start), so "
        "caches of different lengths share a call: left-padded rows vs model.onnx "
        f"{export['step_padded_vs_full_max_abs_diff']:.2g}"
    )


def lm_quality_table(models_dir: Path, names: list[str]) -> str:
    """docs/models.md's language-model table, read from the shipped cards (newest version of each).

    The Kneser-Ney row comes from the first card; every card holds the same baseline numbers
    (same split, same vocabulary), which tests/lm/test_shipped_lms.py checks.
    """
    rows, baseline = [], None
    for name in names:
        versions = sorted(int(p.name) for p in (models_dir / name).iterdir() if p.name.isdigit())
        card = json.loads((models_dir / name / str(versions[-1]) / "card.json").read_text())
        metrics, training = card["metrics"], card["training"]
        baseline = baseline or metrics["ngram_baseline"]
        rows.append(
            [
                f"`{name}`",
                f"{metrics['test_perplexity']:.2f}",
                f"{metrics['perplexity_vs_ngram']:+.1%}",
                f"{metrics['test_top1_accuracy']:.2%}",
                f"{metrics['test_top5_accuracy']:.2%}",
                f"{training['parameters'] / 1e6:.2f} M",
                f"{training['seconds']:.0f} s, {training['iters_run']:,} steps",
            ]
        )
    if baseline is not None:
        rows.append(
            [
                f"{baseline['model']} (baseline)",
                f"{baseline['test_perplexity']:.2f}",
                "",
                f"{baseline['test_top1_accuracy']:.2%}",
                f"{baseline['test_top5_accuracy']:.2%}",
                "",
                "",
            ]
        )
    header = ["model", "test perplexity", "vs n-gram", "top-1", "top-5", "parameters", "training"]
    return markdown_table(header, rows)


# the table's order: the seed articles' story, from the plain recurrence to selective state
SHIPPED_LMS = ["rnn-austen", "lstm-austen", "gru-austen", "transformer-austen", "mamba-austen"]

if (
    __name__ == "__main__"
):  # python -m training.language_models.lm_card: the table to paste into docs/models.md
    from training.publish import DEFAULT_MODELS_DIR

    print(lm_quality_table(DEFAULT_MODELS_DIR, SHIPPED_LMS))
