"""From a trained language model to a published version: two ONNX graphs, vocabulary, card.

    model.onnx  input_ids INT64 (batch, seq) -> logits FP32 (batch, seq, vocab), from empty state
    step.onnx   (input_ids (batch, new), *state) -> (logits (batch, new, vocab), *next state)
                the Transformer's also takes attention_mask INT64 (batch, past + new) after
                input_ids: 1 = real token, 0 = padding at the start of a shorter cache


Both have dynamic batch and length for every family (the recurrent layers are native ONNX
RNN/LSTM/GRU ops, Mamba's scan is a masked matrix product, the Transformer's cache is concatenated
on a dynamic past axis). Export fails when onnxruntime differs from torch by more than the
tolerance, or when decoding a text in pieces through step.onnx differs from model.onnx (and,
with an attention mask, when left-padded rows differ from the same texts unpadded).
The test metrics in the card are measured through onnxruntime on the shipped model.onnx.
"""

from __future__ import annotations

import datetime as dt
import json
import os
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
from training.families import FAMILIES
from training.files import sha256_of, write_json
from training.language_models.lm_card import lm_card_markdown, plot_lm_curves
from training.language_models.lm_eval import evaluate_stream, onnx_logits_fn
from training.language_models.ngram import ngram_baseline
from training.models.lm_common import BATCH, PAST, StateSpec, dynamic_state_shapes
from training.models.recurrent import ONNX_TRANSLATIONS
from training.onnx_export import OPSET, ExportMismatch, onnx_session, verify
from training.publish import DEFAULT_MODELS_DIR, Graph, Release, library_versions, publish

MAX_BATCH_SIZE = 64
# a prompt of 9 tokens then single tokens then a chunk: past lengths 0, 9, 10, 11, ...
STEP_CHUNKS = (9, 1, 1, 1, 7, 1, 12)
STEP_PADDING = (0, 8, 3)  # left padding of the check windows' rows (inside the first chunk)
ATTENTION_MASK = "attention_mask"
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
        family = FAMILIES[self.family]
        assert family.config is not None, f"{self.family} is not a neural language model"
        model = family.build(family.config(**self.model_config))
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


class MaskedStepGraph(nn.Module):
    """step.onnx with an attention mask (B, past + new): caches of different lengths, padded at
    the start, share one call (the Transformer's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self.model.step_masked(input_ids, attention_mask, *state)  # type: ignore[operator]


def state_specs(model: nn.Module) -> list[StateSpec]:
    return model.state_specs()  # type: ignore[operator]


def takes_attention_mask(model: nn.Module) -> bool:
    return bool(getattr(model, "step_attention_mask", False))


def step_graph(model: nn.Module) -> nn.Module:
    return (MaskedStepGraph if takes_attention_mask(model) else StepGraph)(model).eval()


def step_inputs(
    model: nn.Module, ids: torch.Tensor, state: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The step graph's inputs by name, in its argument order (no padding: mask all ones)."""
    specs = state_specs(model)
    inputs = {"input_ids": ids}
    if takes_attention_mask(model):
        past = [t.shape[s.length_axis] for s, t in zip(specs, state, strict=True)
                if s.length_axis is not None]  # fmt: skip
        inputs[ATTENTION_MASK] = torch.ones(ids.shape[0], past[0] + ids.shape[1], dtype=torch.int64)
    return inputs | {s.input: t for s, t in zip(specs, state, strict=True)}


def full_graph(model: nn.Module, example_ids: torch.Tensor) -> Graph:
    """model.onnx: (B, T) token ids from empty state -> logits (B, T, V)."""
    return Graph(
        "model.onnx",
        FullGraph(model).eval(),
        {"input_ids": example_ids[:2, :5]},
        ["logits"],
        dynamic_shapes=({0: BATCH, 1: "seq"},),
        translations=ONNX_TRANSLATIONS,
    )


def step_graph_export(
    model: nn.Module, example_ids: torch.Tensor, file: str = "step.onnx"
) -> Graph:
    """step.onnx: new ids, (the mask,) the state in; their logits and the next state out."""
    specs = state_specs(model)
    # batch 2 and a past of 3 in the examples: sizes 0 and 1 would be specialised by the exporter
    inputs = step_inputs(model, example_ids[:2, :5], [torch.zeros(s.shape(2, 3)) for s in specs])
    # varargs: the state shapes are one tuple, like the arguments they describe
    shapes: list[Any] = [{0: BATCH, 1: "new"}, tuple(dynamic_state_shapes(specs))]
    if ATTENTION_MASK in inputs:
        shapes.insert(1, {0: BATCH, 1: "past_and_new"})
    return Graph(
        file,
        step_graph(model),
        inputs,
        ["logits", *(s.output for s in specs)],
        dynamic_shapes=tuple(shapes),
        translations=ONNX_TRANSLATIONS,
    )


def export_graphs(model: nn.Module, folder: Path, example_ids: torch.Tensor, opset: int) -> None:
    """Write folder/model.onnx and folder/step.onnx (checked by `check_export`)."""
    for graph in (full_graph(model, example_ids), step_graph_export(model, example_ids)):
        graph.export(folder, opset, tolerance=0.0)


def step_in_pieces(
    step: ort.InferenceSession,
    specs: list[StateSpec],
    ids: np.ndarray,
    chunks: tuple[int, ...],
    attention_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Logits (B, T, V) for ids (B, T) fed through step.onnx a few tokens at a time (the mask,
    (B, T), is all ones unless given; only for a graph with that input)."""
    state = [np.zeros(s.shape(ids.shape[0], 0), dtype=np.float32) for s in specs]
    if attention_mask is None:
        attention_mask = np.ones(ids.shape, dtype=np.int64)
    masked = ATTENTION_MASK in {i.name for i in step.get_inputs()}
    outputs, start = [], 0
    for size in chunks:
        if start >= ids.shape[1]:
            break
        feed = {
            "input_ids": ids[:, start : start + size],
            **{s.input: v for s, v in zip(specs, state, strict=True)},
        }
        if masked:
            feed[ATTENTION_MASK] = attention_mask[:, : start + size]
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
    inputs = step_inputs(model, ids[:, prefix:], list(first[1:]))
    step_diff = verify(step_graph(model), folder / "step.onnx", inputs, tolerance)
    full_session, step_session = (
        onnx_session(folder / "model.onnx"),
        onnx_session(folder / "step.onnx"),
    )
    full = full_session.run(["logits"], {"input_ids": windows})[0]
    pieces = step_in_pieces(step_session, specs, windows, STEP_CHUNKS)
    step_vs_full = float(np.abs(pieces - full).max())
    if not step_vs_full <= tolerance:
        raise ExportMismatch(f"step.onnx in pieces vs model.onnx: {step_vs_full:.3g} > {tolerance}")
    report: dict[str, Any] = {
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
    if takes_attention_mask(model):
        padded = padded_vs_full(full_session, step_session, specs, windows)
        if not padded <= tolerance:
            raise ExportMismatch(f"left-padded rows vs model.onnx: {padded:.3g} > {tolerance}")
        report["step_padded_vs_full_max_abs_diff"] = padded
        report["verified_on"] += (
            f"; the same rows left-padded by {list(STEP_PADDING)} tokens (attention_mask) "
            "against model.onnx on each row alone"
        )
    return report


def padded_vs_full(
    full: ort.InferenceSession,
    step: ort.InferenceSession,
    specs: list[StateSpec],
    windows: np.ndarray,
) -> float:
    """Rows with different amounts of padding at the start share the step calls: the logits of
    their real tokens against model.onnx on each row alone."""
    mask = np.ones(windows.shape, dtype=np.int64)
    ids = windows.copy()
    for row, pad in enumerate(STEP_PADDING[: len(windows)]):
        mask[row, :pad] = 0
        ids[row, :pad] = 0  # any id: padded tokens must not matter
    pieces = step_in_pieces(step, specs, ids, STEP_CHUNKS, mask)
    diffs = []
    for row, pad in enumerate(STEP_PADDING[: len(windows)]):
        alone = full.run(["logits"], {"input_ids": windows[row : row + 1, pad:]})[0][0]
        diffs.append(float(np.abs(pieces[row, pad:] - alone).max()))
    return max(diffs)


def step_section(model: nn.Module) -> dict[str, Any]:
    """config.json "step": how to drive step.onnx for any family (service/tasks/textgen.py)."""
    return {
        "graph": "step.onnx",
        "input_ids": "input_ids",
        "logits": "logits",
        "axes": {BATCH: "number of sequences", PAST: "tokens already in the state"},
        "max_new_tokens": None,  # any number of tokens per call
        "state": [s.to_json() for s in state_specs(model)],
    } | ({"attention_mask": ATTENTION_MASK} if takes_attention_mask(model) else {})


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


def release(checkpoint: Checkpoint) -> Release:
    """The version to publish from a checkpoint: both graphs, checked against torch and each
    other, measured on the test split through onnxruntime.

    The data is read again from the checkpoint's config and encoded with its vocabulary, so a
    saved checkpoint can be exported later (`python -m training.language_models.lm_graphs runs/lstm-austen.pt`).
    """
    model = checkpoint.build()
    tokenizer = WordTokenizer.from_json(checkpoint.vocab)
    train_cfg = checkpoint.train_config
    corpus = load_corpus(Path(train_cfg["text"]) if train_cfg["text"] else None)
    ids = {split: corpus.encode(tokenizer, split) for split in corpus.splits}
    block_size, tolerance = int(train_cfg["block_size"]), float(train_cfg["tolerance"])
    dataset = train_cfg["dataset"] or corpus.name
    name = f"{checkpoint.family}-{dataset}"
    max_length = checkpoint.model_config.get("block_size")
    example_ids = torch.from_numpy(sample_windows(ids["test"], 2, 8))
    baseline = ngram_baseline(tokenizer, ids)

    def measure(staging: Path) -> dict[str, Any]:
        metrics = lm_metrics(onnx_session(staging / "model.onnx"), ids, block_size, baseline)
        print(
            f"{name}: test perplexity {metrics['test_perplexity']:.2f} (Kneser-Ney trigram "
            f"{baseline['perplexity']:.2f}), top-1 {metrics['test_top1_accuracy']:.4f}, "
            f"top-5 {metrics['test_top5_accuracy']:.4f}",
            flush=True,
        )
        return {"metrics": metrics}

    def write_files(staging: Path) -> None:
        tokenizer.save(staging / "vocab.json")
        history, best = checkpoint.history, checkpoint.best_step
        plot_lm_curves(history, best, baseline, staging / "curves.png", name)

    card = {
        "family": checkpoint.family,
        "task": "language-model",
        "dataset": {
            "name": corpus.name,
            "source": corpus.source,
            "sha256": corpus.sha256,
            "split": "each book cut into contiguous 90% / 5% / 5% at paragraph boundaries",
            "splits": {split: len(a) for split, a in ids.items()},
            "unk_rate": {split: float(np.mean(a == tokenizer.unk_id)) for split, a in ids.items()},
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
    }
    return Release(
        name=name,
        config=language_model_config(checkpoint.family, dataset, model, tokenizer, max_length),
        card=card,
        graphs=[full_graph(model, example_ids), step_graph_export(model, example_ids)],
        tolerance=tolerance,
        check=lambda staging: check_export(model, staging, ids["test"], tolerance, max_length),
        measure=measure,
        write_files=write_files,
        describe=lm_card_markdown,
    )


def lm_metrics(
    full: ort.InferenceSession,
    ids: dict[str, np.ndarray],
    block_size: int,
    baseline: dict[str, Any],
) -> dict[str, Any]:
    """The card's "metrics": the test and validation splits through model.onnx, beside the
    n-gram baseline's."""
    test = evaluate_stream(onnx_logits_fn(full), ids["test"], block_size)
    validation = evaluate_stream(onnx_logits_fn(full), ids["validation"], block_size)
    # the start of the test split, scored alone: tests re-measure it in well under a second
    test_slice = evaluate_stream(
        onnx_logits_fn(full), ids["test"][: TEST_SLICE_TOKENS + 1], block_size
    )
    return {
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
            "half (training/language_models/lm_eval.py); <unk> and paragraph tokens count as tokens"
        ),
    }


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
    metrics = evaluate_stream(onnx_logits_fn(onnx_session(folder / "model.onnx")), ids, block)
    return metrics, card


PROOF_WINDOWS = 4  # test windows of block_size tokens on which the checkpoint must be model.onnx


def reexport_step(checkpoint: Checkpoint, folder: Path, opset: int = OPSET) -> dict[str, Any]:
    """Replace a published version's step.onnx with a fresh export of the same weights (a new
    input, say), without retraining; model.onnx, vocab.json and the quality numbers stay.

    The checkpoint must first prove it is the shipped model: same vocabulary, and torch's logits
    equal to the shipped model.onnx's on real test text within the training tolerance. The new
    step.onnx then passes `check_export` against the shipped model.onnx. config.json's "step"
    section, the card's step.onnx hash and its step export numbers are rewritten to match.
    """
    model = checkpoint.build()
    tokenizer = WordTokenizer.from_json(checkpoint.vocab)
    if tokenizer.to_json() != json.loads((folder / "vocab.json").read_text()):
        raise ExportMismatch(f"{folder}: the checkpoint's vocabulary is not the shipped one")
    train_cfg = checkpoint.train_config
    corpus = load_corpus(Path(train_cfg["text"]) if train_cfg["text"] else None)
    test_ids = corpus.encode(tokenizer, "test")
    tolerance, block = float(train_cfg["tolerance"]), int(train_cfg["block_size"])
    windows = sample_windows(test_ids, PROOF_WINDOWS, block)
    shipped = onnx_session(folder / "model.onnx").run(["logits"], {"input_ids": windows})[0]
    with torch.no_grad():
        mine = model.full(torch.from_numpy(windows)).numpy()  # type: ignore[operator]
    proof = float(np.abs(mine - shipped).max())
    if not proof <= tolerance:
        raise ExportMismatch(f"checkpoint vs shipped model.onnx: {proof:.3g} > {tolerance:g}")
    model_dir = folder.parent
    config_path, card_path = model_dir / "config.json", folder / "card.json"
    config, card = json.loads(config_path.read_text()), json.loads(card_path.read_text())
    staging = Path(tempfile.mkdtemp(prefix=".staging-step-", dir=model_dir))
    try:
        shutil.copy2(folder / "model.onnx", staging / "model.onnx")
        step_graph_export(model, torch.from_numpy(windows[:2, :8])).export(
            staging, opset, tolerance
        )
        export = check_export(model, staging, test_ids, tolerance, config.get("max_length"))
        step_keys = [k for k in export if k.startswith("step_") or k == "verified_on"]
        card["export"] |= {k: export[k] for k in step_keys}
        card["export"]["max_abs_diff"] = max(
            card["export"]["model_onnx_max_abs_diff"], export["step_onnx_max_abs_diff"]
        )
        card["export"]["step_reexport"] = {
            "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "versions": library_versions(),
            "checkpoint_vs_model_onnx_max_abs_diff": proof,
            "proved_on": f"{PROOF_WINDOWS} test windows of {block} tokens",
            "why": "step.onnx exported again from the same weights (training/language_models/lm_graphs.py "
            "--reexport-step); model.onnx, vocab.json and the quality numbers are unchanged",
        }
        os.replace(staging / "step.onnx", folder / "step.onnx")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    step = folder / "step.onnx"
    old_hash = card["files"]["step.onnx"]["sha256"]
    card["files"]["step.onnx"] = {"sha256": sha256_of(step), "bytes": step.stat().st_size}
    write_json(card_path, card)
    # only the step.onnx hash and the export section change; the rest stays as published
    fresh = lm_card_markdown(card)
    text = (folder / "card.md").read_text().replace(old_hash, card["files"]["step.onnx"]["sha256"])
    section = "## Export"
    (folder / "card.md").write_text(text[: text.index(section)] + fresh[fresh.index(section) :])
    write_json(config_path, config | {"step": step_section(model)})
    print(
        f"{step}: re-exported ({step.stat().st_size:,} bytes); checkpoint vs model.onnx "
        f"{proof:.2g}, step vs full {export['step_vs_full_max_abs_diff']:.2g}",
        flush=True,
    )
    return card["export"]


def main(argv: list[str]) -> int:
    """python -m training.language_models.lm_graphs CHECKPOINT [MODELS_DIR]: publish a saved checkpoint.
    python -m training.language_models.lm_graphs --reexport-step CHECKPOINT VERSION_FOLDER: export step.onnx of a
    published version again from its checkpoint (see reexport_step), e.g.
    python -m training.language_models.lm_graphs --reexport-step runs/transformer-austen.pt models/transformer-austen/1
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 2
    if argv[0] == "--reexport-step":
        if len(argv) != 3:
            print(main.__doc__)
            return 2
        reexport_step(Checkpoint.load(Path(argv[1])), Path(argv[2]))
        return 0
    models_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_MODELS_DIR
    publish(release(Checkpoint.load(Path(argv[0]))), models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
