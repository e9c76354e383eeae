"""Every shipped language model: its files, its promised quality, and step.onnx == model.onnx.

The step graph is driven through the same generic code the service uses (StepModel reads only
config.json's "step" section), so a family whose state description is wrong fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from bench.decoding import decoder_of, generate
from service.tasks.sampling import SamplingParams
from service.tasks.textgen import StepModel
from service.tasks.tokenizer import WordTokenizer
from training.data.corpus import AUSTEN_DIR, Corpus, load_corpus
from training.files import sha256_of
from training.language_models.lm_card import SHIPPED_LMS, lm_quality_table
from training.language_models.lm_eval import evaluate_stream, onnx_logits_fn

MODELS = Path(__file__).resolve().parents[2] / "models"
QUALITY_DOC = MODELS.parent / "docs" / "models.md"  # holds the lm-quality table
FAMILIES = ("rnn", "lstm", "gru", "transformer", "mamba")
PROMPT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    'must be in want of a wife. "My dear Mr. Bennet," said his lady to him one day, "have you '
    'heard that Netherfield Park is let at last?"'
)


def shipped(family: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    model_dir = MODELS / f"{family}-austen"
    assert (model_dir / "config.json").exists(), f"{model_dir.name} is not in models/"
    config = json.loads((model_dir / "config.json").read_text())
    folder = model_dir / str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
    return folder, config, json.loads((folder / "card.json").read_text())


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", FAMILIES)
def test_files_config_and_card(family: str) -> None:
    folder, config, card = shipped(family)
    assert config["task"] == "language-model" and config["family"] == family
    assert config["graphs"] == {"step": "step.onnx"}
    assert config["tokenizer"]["vocab"] == "vocab.json"
    for name in ("model.onnx", "step.onnx", "vocab.json"):
        assert card["files"][name]["sha256"] == sha256_of(folder / name), f"{name} changed"
        assert (folder / name).stat().st_size < 8_000_000, f"{name} is not a few MB"
    assert (folder / "card.md").exists() and (folder / "curves.png").exists()
    assert card["export"]["step_vs_full_max_abs_diff"] <= 1e-4
    assert card["training"]["seconds"] <= 15 * 60 and card["training"]["threads"] == 1


@pytest.fixture(scope="module")
def austen() -> Corpus:
    if not (AUSTEN_DIR / "data").exists():
        pytest.skip("data/austen is missing: run `make data`")
    return load_corpus()


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_on_a_test_slice_is_the_cards(family: str, austen: Corpus) -> None:
    """Re-measure the card's test-slice numbers on the committed model.onnx (same windows)."""
    folder, _, card = shipped(family)
    recorded = card["metrics"]["test_slice"]
    ids = austen.encode(WordTokenizer.load(folder / "vocab.json"), "test")
    block = int(card["training"]["config"]["block_size"])
    measured = evaluate_stream(
        onnx_logits_fn(session(folder / "model.onnx")), ids[: recorded["tokens"] + 1], block
    )
    assert measured["tokens"] == recorded["tokens"]
    assert measured["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-3)
    assert measured["top1"] == pytest.approx(recorded["top1"], abs=2 / recorded["tokens"])
    # the whole split's number is in the same range as the slice's (the slice is no outlier)
    assert 0.5 < recorded["perplexity"] / card["metrics"]["test_perplexity"] < 2.0


@pytest.mark.parametrize("family", FAMILIES)
def test_step_graph_fed_token_by_token_matches_the_full_graph(family: str) -> None:
    folder, config, _ = shipped(family)
    tokenizer = WordTokenizer.load(folder / "vocab.json")
    ids = np.array([tokenizer.encode(PROMPT, add_bos=True)] * 2, dtype=np.int64)  # batch of 2
    full = session(folder / "model.onnx").run(["logits"], {"input_ids": ids})[0]
    step = StepModel(session(folder / "step.onnx"), config)
    state = step.initial_state(batch=2)
    pieces = []
    # a 7-token prompt, then one token per call, as generation does
    for start, end in [(0, 7), *((i, i + 1) for i in range(7, ids.shape[1]))]:
        logits, state = step.run(ids[:, start:end], state)
        pieces.append(logits)
    stepped = np.concatenate(pieces, axis=1)
    assert stepped.shape == full.shape == (2, ids.shape[1], len(tokenizer))
    assert float(np.abs(stepped - full).max()) <= 1e-4


def test_quality_against_the_kneser_ney_baseline() -> None:
    cards = {f: shipped(f)[2] for f in FAMILIES}
    ratio = {f: c["metrics"]["perplexity_vs_ngram"] for f, c in cards.items()}
    assert ratio["lstm"] < 0 and ratio["transformer"] < 0, ratio  # both beat the n-gram
    assert min(ratio.values()) <= -0.15, ratio  # the best by at least 15%
    baselines = {
        round(c["metrics"]["ngram_baseline"]["test_perplexity"], 6) for c in cards.values()
    }
    assert len(baselines) == 1, "all models must be compared on the same split and vocabulary"


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_generation_reads_like_austen(family: str) -> None:
    folder, _, _ = shipped(family)
    decoder = decoder_of(folder.parent)
    expected = {"Lady Catherine de": "Bourgh", '"My dear Mr': ".", "I do not": "know"}
    for prompt, word in expected.items():
        best = decoder.next_word_distribution(prompt, k=3)
        assert best[0].word == word, (prompt, best)
    text = "".join(t.text for t in generate(decoder, "Elizabeth", 30, SamplingParams(seed=0)))
    assert len(text.split()) >= 15 and "<unk>" not in text


def test_docs_quality_table_is_the_cards() -> None:
    for family in FAMILIES:
        shipped(family)
    doc = QUALITY_DOC.read_text()
    start, end = "<!-- lm-quality:start -->\n", "<!-- lm-quality:end -->"
    table = doc[doc.index(start) + len(start) : doc.index(end)].strip()
    assert table == lm_quality_table(MODELS, SHIPPED_LMS), (
        "run python -m training.language_models.lm_card"
    )
