"""From a trained language model to a published version: two ONNX graphs, vocabulary, card.

    model.onnx  input_ids INT64 (batch, seq) -> logits FP32 (batch, seq, vocab), from empty state
    step.onnx   (input_ids (batch, new), *state) -> (logits (batch, new, vocab), *next state)

Both have dynamic batch and length for every family (the recurrent layers are native ONNX
RNN/LSTM/GRU ops, Mamba's scan is a masked matrix product, the Transformer's cache is concatenated
on a dynamic past axis). Export fails when onnxruntime differs from torch by more than the
tolerance, or when decoding a text in pieces through step.onnx differs from model.onnx.
The test metrics in the card are measured through onnxruntime on the shipped model.onnx.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.tasks.tokenizer import WordTokenizer
from training.data.corpus import load_corpus
from training.lm_eval import evaluate_stream, onnx_logits_fn
from training.lm_report import lm_card_markdown, plot_lm_curves
from training.models.lm_common import BATCH, PAST, StateSpec, dynamic_state_shapes
from training.models.recurrent import ONNX_TRANSLATIONS
from training.onnx_export import OPSET, ExportMismatch, verify
from training.repository import DEFAULT_MODELS_DIR, next_version, publish_version, sha256_of

MAX_BATCH_SIZE = 64
# a prompt of 9 tokens then single tokens then a chunk: past lengths 0, 9, 10, 11, ...
STEP_CHUNKS = (9, 1, 1, 1, 7, 1, 12)
TEST_SLICE_TOKENS = 2048  # scored tokens of the card's "test_slice" (tests re-measure it)


@dataclass
class Checkpoint:
    """Everything needed to rebuild the trained model and describe how it was trained."""

    family: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    vocab: dict[str, Any]
    history: list[dict[str, float]]
    best_step: int
    iters_run: int
    seconds: float
    stopped_early: bool
    parameters: int

    def save(self, path: Path) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        return cls(**torch.load(path, weights_only=True))

    def build(self) -> nn.Module:
        from training.lm import FAMILIES

        config_class, model_class = FAMILIES[self.family]
        model = model_class(config_class(**self.model_config))
        model.load_state_dict(self.state_dict)
        return model.eval()


class FullGraph(nn.Module):
    """model.onnx: the whole sequence from empty state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.full(input_ids)  # type: ignore[operator]


class StepGraph(nn.Module):
    """step.onnx: new tokens plus the state in, their logits plus the next state out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.step(input_ids, *state)  # type: ignore[operator]


def state_specs(model: nn.Module) -> list[StateSpec]:
    return model.state_specs()  # type: ignore[operator]


def export_graphs(model: nn.Module, folder: Path, example_ids: torch.Tensor, opset: int) -> None:
    """Write folder/model.onnx and folder/step.onnx (dynamo exporter, one file each)."""
    specs = state_specs(model)
    # batch 2 and a past of 3 in the examples: sizes 0 and 1 would be specialised by the exporter
    example_state = [torch.zeros(s.shape(2, 3)) for s in specs]
    common: dict[str, Any] = {
        "opset_version": opset,
        "dynamo": True,
        "external_data": False,
        "verbose": False,
        "custom_translation_table": ONNX_TRANSLATIONS,
    }
    with torch.no_grad():
        torch.onnx.export(
            FullGraph(model).eval(),
            (example_ids[:2, :5],),
            str(folder / "model.onnx"),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes=({0: BATCH, 1: "seq"},),
            **common,
        )
        torch.onnx.export(
            StepGraph(model).eval(),
            (example_ids[:2, :5], *example_state),
            str(folder / "step.onnx"),
            input_names=["input_ids", *(s.input for s in specs)],
            output_names=["logits", *(s.output for s in specs)],
            # varargs: the state shapes are one tuple, like the arguments they describe
            dynamic_shapes=({0: BATCH, 1: "new"}, tuple(dynamic_state_shapes(specs))),
            **common,
        )


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def step_in_pieces(
    step: ort.InferenceSession, specs: list[StateSpec], ids: np.ndarray, chunks: tuple[int, ...]
) -> np.ndarray:
    """Logits (B, T, V) for ids (B, T) fed through step.onnx a few tokens at a time."""
    state = [np.zeros(s.shape(ids.shape[0], 0), dtype=np.float32) for s in specs]
    outputs, start = [], 0
    for size in chunks:
        if start >= ids.shape[1]:
            break
        feed = {
            "input_ids": ids[:, start : start + size],
            **{s.input: v for s, v in zip(specs, state, strict=True)},
        }
        logits, *state = step.run(None, feed)
        outputs.append(logits)
        start += size
    return np.concatenate(outputs, axis=1)


def sample_windows(ids: np.ndarray, count: int, length: int) -> np.ndarray:
    """`count` windows of `length` tokens spread over the stream (repeated if it is too short)."""
    if len(ids) < length:
        ids = np.tile(ids, length // len(ids) + 1)
    starts = np.linspace(0, len(ids) - length, count).astype(int)
    return np.stack([ids[s : s + length] for s in starts])


def check_export(
    model: nn.Module,
    folder: Path,
    test_ids: np.ndarray,
    tolerance: float,
    max_length: int | None,
) -> dict[str, Any]:
    """onnxruntime vs torch for both graphs on real test text, and step pieces vs full graph."""
    specs = state_specs(model)
    length = min(sum(STEP_CHUNKS), max_length or sum(STEP_CHUNKS))
    prefix = length * 5 // 8  # the step graph is checked from the state after these tokens
    windows = sample_windows(test_ids, 3, length)  # (3, length)
    ids = torch.from_numpy(windows)
    with torch.no_grad():
        training_path, _ = model(ids)  # the fused/training code path
        export_path = model.full(ids)  # type: ignore[operator]
    path_diff = float((training_path - export_path).abs().max())
    if not path_diff <= tolerance:
        raise ExportMismatch(f"export path differs from the training path by {path_diff:.3g}")
    full_diff = verify(FullGraph(model), folder / "model.onnx", {"input_ids": ids}, tolerance)
    # the step graph, from a mid-text state (the torch state after the prefix)
    with torch.no_grad():
        zeros = [torch.zeros(s.shape(3, 0)) for s in specs]
        first = model.step(ids[:, :prefix], *zeros)  # type: ignore[operator]
    state = {s.input: t for s, t in zip(specs, first[1:], strict=True)}
    inputs = {"input_ids": ids[:, prefix:], **state}
    step_diff = verify(StepGraph(model), folder / "step.onnx", inputs, tolerance)
    full = session(folder / "model.onnx").run(["logits"], {"input_ids": windows})[0]
    pieces = step_in_pieces(session(folder / "step.onnx"), specs, windows, STEP_CHUNKS)
    step_vs_full = float(np.abs(pieces - full).max())
    if not step_vs_full <= tolerance:
        raise ExportMismatch(f"step.onnx in pieces vs model.onnx: {step_vs_full:.3g} > {tolerance}")
    return {
        "opset": OPSET,
        "max_abs_diff": max(full_diff, step_diff),
        "model_onnx_max_abs_diff": full_diff,
        "step_onnx_max_abs_diff": step_diff,
        "step_vs_full_max_abs_diff": step_vs_full,
        "tolerance": tolerance,
        "verified_on": (
            f"3 test windows of {length} tokens; step.onnx from a {prefix}-token state, fed in "
            f"pieces of {list(STEP_CHUNKS)} tokens against model.onnx"
        ),
    }


def step_section(model: nn.Module) -> dict[str, Any]:
    """config.json "step": how to drive step.onnx for any family (service/tasks/textgen.py)."""
    return {
        "graph": "step.onnx",
        "input_ids": "input_ids",
        "logits": "logits",
        "axes": {BATCH: "number of sequences", PAST: "tokens already in the state"},
        "max_new_tokens": None,  # any number of tokens per call
        "state": [s.to_json() for s in state_specs(model)],
    }


def language_model_config(
    family: str, dataset: str, model: nn.Module, tokenizer: WordTokenizer, max_length: int | None
) -> dict[str, Any]:
    return {
        "task": "language-model",
        "family": family,
        "dataset": dataset,
        "platform": "onnxruntime_onnx",
        "max_batch_size": MAX_BATCH_SIZE,
        "inputs": [{"name": "input_ids", "datatype": "INT64", "dims": [-1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "dims": [-1, len(tokenizer)]}],
        "max_length": max_length,  # longest sequence either graph accepts; null = unlimited
        "graphs": {"step": "step.onnx"},
        "tokenizer": {
            "vocab": "vocab.json",
            "type": "word",
            "lowercase": tokenizer.lowercase,
            "unk_id": tokenizer.unk_id,
            "bos_id": tokenizer.bos_id,
            "vocab_size": len(tokenizer),
        },
        "step": step_section(model),
        "batching": {"max_queue_delay_ms": 0.0, "preferred_batch_sizes": []},
    }


def publish_checkpoint(checkpoint: Checkpoint, models_dir: Path, version: int = 0) -> Path:
    """Export, verify, measure on the test split (onnxruntime) and publish a version of it.

    The data is read again from the checkpoint's config and encoded with its vocabulary, so a
    saved checkpoint can be exported later (`python -m training.lm_export runs/lstm-austen.pt`).
    """
    from training.lm import ngram_baseline

    model = checkpoint.build()
    tokenizer = WordTokenizer.from_json(checkpoint.vocab)
    train_cfg = checkpoint.train_config
    text = Path(train_cfg["text"]) if train_cfg["text"] else None
    corpus = load_corpus(text)
    ids = {split: corpus.encode(tokenizer, split) for split in corpus.splits}
    block_size, tolerance = int(train_cfg["block_size"]), float(train_cfg["tolerance"])
    dataset = train_cfg["dataset"] or corpus.name
    name = f"{checkpoint.family}-{dataset}"
    max_length = checkpoint.model_config.get("block_size")
    models_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside the repository so publishing is a rename on the same file system.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=models_dir))
    staging.chmod(0o755)
    try:
        export_graphs(model, staging, torch.from_numpy(sample_windows(ids["test"], 2, 8)), OPSET)
        export = check_export(model, staging, ids["test"], tolerance, max_length)
        test = evaluate_stream(
            onnx_logits_fn(session(staging / "model.onnx")), ids["test"], block_size
        )
        validation = evaluate_stream(
            onnx_logits_fn(session(staging / "model.onnx")), ids["validation"], block_size
        )
        # the start of the test split, scored alone: tests re-measure it in well under a second
        test_slice = evaluate_stream(
            onnx_logits_fn(session(staging / "model.onnx")),
            ids["test"][: TEST_SLICE_TOKENS + 1],
            block_size,
        )
        baseline = ngram_baseline(tokenizer, ids)
        print(
            f"{name}: test perplexity {test['perplexity']:.2f} (Kneser-Ney trigram "
            f"{baseline['perplexity']:.2f}), top-1 {test['top1']:.4f}, top-5 {test['top5']:.4f}",
            flush=True,
        )
        tokenizer.save(staging / "vocab.json")
        plot_lm_curves(
            checkpoint.history, checkpoint.best_step, baseline, staging / "curves.png", name
        )
        card = {
            "family": checkpoint.family,
            "task": "language-model",
            "dataset": {
                "name": corpus.name,
                "source": corpus.source,
                "sha256": corpus.sha256,
                "split": "each book cut into contiguous 90% / 5% / 5% at paragraph boundaries",
                "splits": {split: len(a) for split, a in ids.items()},
                "unk_rate": {
                    split: float(np.mean(a == tokenizer.unk_id)) for split, a in ids.items()
                },
            },
            "metrics": {
                "test_perplexity": test["perplexity"],
                "test_loss": test["loss"],
                "test_top1_accuracy": test["top1"],
                "test_top5_accuracy": test["top5"],
                "test_tokens": test["tokens"],
                "validation_perplexity": validation["perplexity"],
                "test_slice": {
                    "tokens": test_slice["tokens"],
                    "perplexity": test_slice["perplexity"],
                    "top1": test_slice["top1"],
                    "what": "the first tokens of the test split, scored the same way",
                },
                "ngram_baseline": {
                    "model": f"interpolated Kneser-Ney, order {baseline['order']}",
                    "test_perplexity": baseline["perplexity"],
                    "test_top1_accuracy": baseline["top1"],
                    "test_top5_accuracy": baseline["top5"],
                    "validation_perplexity": baseline["validation_perplexity"],
                },
                "perplexity_vs_ngram": test["perplexity"] / baseline["perplexity"] - 1.0,
                "measured_with": (
                    f"onnxruntime on model.onnx, windows of {block_size} tokens overlapping by "
                    "half (training/lm_eval.py); <unk> and paragraph tokens count as tokens"
                ),
            },
            "training": {
                "config": {
                    **train_cfg,
                    "models_dir": None,  # where it was published and saved: local paths
                    "checkpoint_dir": None,
                    "model": checkpoint.model_config,
                },
                "iters_run": checkpoint.iters_run,
                "best_step": checkpoint.best_step,
                "stopped_early": checkpoint.stopped_early,
                "seconds": round(checkpoint.seconds, 1),
                "threads": train_cfg["threads"],
                "parameters": checkpoint.parameters,
                "history": checkpoint.history,
            },
            "export": export,
        }
        version = version or next_version(models_dir / name)
        hashes = {f: sha256_of(staging / f) for f in ("model.onnx", "step.onnx")}
        (staging / "card.md").write_text(lm_card_markdown(name, version, card, hashes))
        config = language_model_config(checkpoint.family, dataset, model, tokenizer, max_length)
        target = publish_version(staging, models_dir, name, config, card, version=version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
    print(f"published {target}", flush=True)
    return target


def evaluate_shipped(
    model_dir: Path, version: int = 0, text: Path | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Test metrics of a published version, re-measured like the card's (same windows)."""
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    folder = model_dir / str(version or versions[-1])
    card = json.loads((folder / "card.json").read_text())
    tokenizer = WordTokenizer.load(folder / "vocab.json")
    corpus = load_corpus(text)
    ids = corpus.encode(tokenizer, "test")
    block = int(card["training"]["config"]["block_size"])
    metrics = evaluate_stream(onnx_logits_fn(session(folder / "model.onnx")), ids, block)
    return metrics, card


def main(argv: list[str]) -> int:
    """python -m training.lm_export CHECKPOINT [MODELS_DIR]: publish a saved checkpoint."""
    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 2
    models_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_MODELS_DIR
    publish_checkpoint(Checkpoint.load(Path(argv[0])), models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
