"""Key/value caches of different lengths share one step call through the Transformer step
graph's attention_mask (padding at the start), and give what each sequence gets alone.

Checked on the shipped transformer-austen and on a graph without the mask (old exports: equal
lengths only); tests/lm/test_lm_training.py runs the same check on a smoke-trained transformer
published by the training entry point."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from padded_batching_check import (
    Counted,
    counted_decoder,
    greedy,
    prompts_of,
    step_together_and_alone,
)

from service.tasks.textgen import Decoder, StepModel
from service.tasks.tokenizer import PARAGRAPH, WordTokenizer
from training.families import build_model, default_model_config
from training.language_models.lm_graphs import step_graph_export, step_section
from training.onnx_export import OPSET

MODELS = Path(__file__).resolve().parents[2] / "models"
AUSTEN = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    'must be in want of a wife. "My dear Mr. Bennet," said his lady to him one day, "have you '
    'heard that Netherfield Park is let at last?" Mr. Bennet replied that he had not. "But it '
    'is," returned she; "for Mrs. Long has just been here, and she told me all about it." Mr. '
    'Bennet made no answer. "Do you not want to know who has taken it?" cried his wife '
    'impatiently. "You want to tell me, and I have no objection to hearing it." This was '
    'invitation enough. "Why, my dear, you must know, Mrs. Long says that Netherfield is taken '
    "by a young man of large fortune from the north of England; that he came down on Monday in "
    "a chaise and four to see the place, and was so much delighted with it, that he agreed "
    "with Mr. Morris immediately."
)


def test_shipped_transformer_steps_different_lengths_in_one_call() -> None:
    decoder, runner = counted_decoder(MODELS / "transformer-austen")
    assert decoder.model.attention_mask == "attention_mask"
    # 10 .. 80 tokens, and one that reaches the 128-position limit and restarts on the way
    prompts = prompts_of(decoder, AUSTEN, [10, 23, 37, 51, 80, 122])
    worst, restarts = step_together_and_alone(decoder, runner, prompts)
    assert worst <= 1e-4 and restarts == 1


def test_shipped_transformer_prefill_of_left_padded_prompts() -> None:
    """Whole prompts padded at the start in one call: no NaN, and each row's real logits are the
    prompt's alone (the padded rows' own outputs are never used)."""
    decoder, _ = counted_decoder(MODELS / "transformer-austen")
    model = decoder.model
    rows = [
        decoder.tokenizer.encode(p, add_bos=True) for p in prompts_of(decoder, AUSTEN, [4, 17, 30])
    ]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    logits, state = model.run(ids, model.initial_state(len(rows)), mask)
    assert np.isfinite(logits).all()
    for i, (row, own) in enumerate(zip(rows, model.split(state, mask), strict=True)):
        alone, alone_state = model.run(np.array([row]), model.initial_state(1))
        np.testing.assert_allclose(logits[i, width - len(row) :], alone[0], atol=1e-4)
        for got, expected in zip(own, alone_state, strict=True):  # split drops the padding
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4)
    # the next decode step of the same batch gets the batch back as it is (no copy), in any order
    parts = model.split(state, mask)
    again = model.join(parts)
    assert again is not None and again.state[0] is state[0] and again.mask is mask
    assert again.rows == [0, 1, 2] and model.join(parts[::-1]).rows == [2, 1, 0]  # type: ignore[union-attr]
    # one sequence gone: its row stays, spare, its past masked out; two of three: a compact copy
    fewer = model.join(parts[1:])
    assert fewer is not None and fewer.state[0] is state[0] and fewer.rows == [1, 2]
    assert fewer.mask is not None and not fewer.mask[0].any() and (fewer.mask[1:] == mask[1:]).all()
    compact = model.join(parts[2:])
    assert compact is not None and compact.state[0] is not state[0] and compact.rows == [0]
    with pytest.raises(ValueError, match="attention mask"):
        StepModel(model.run_graph, {"step": {"state": []}}).run(ids, [], mask)


def test_a_graph_without_the_mask_batches_only_equal_lengths(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(
        default_model_config("transformer"),
        vocab_size=40, adaptive_cutoffs=(10, 20), n_embd=8, n_head=2, n_layer=1, block_size=32,
    )  # fmt: skip
    model = build_model("transformer", config).eval()
    model.step_attention_mask = False  # as exported before the mask existed
    ids = np.random.default_rng(0).integers(2, 40, size=64)
    step_graph_export(model, torch.from_numpy(ids[:16].reshape(2, 8))).export(tmp_path, OPSET, 0.0)
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    assert "attention_mask" not in {i.name for i in session.get_inputs()}
    section = step_section(model)
    assert "attention_mask" not in section
    runner = Counted(session)
    words = ["<unk>", PARAGRAPH, *(f"w{i}" for i in range(2, 40))]
    decoder = Decoder(runner, {"step": section, "max_length": 32}, WordTokenizer(words))
    assert decoder.model.attention_mask is None
    assert decoder.model.join([decoder.restart([1, 2]).state, decoder.restart([1]).state]) is None
    prompts = ["w3 w4 w5", "w6 w7", "w8 w9", "w10 w11 w12 w13"]  # lengths 4, 3, 3, 5 with <s>
    runner.batches.clear()
    together = decoder.read_many(prompts)
    assert sorted(runner.batches) == [1, 1, 2], runner.batches  # only equal lengths share
    alone = [decoder.read(p) for p in prompts]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    for _ in range(3):
        runner.batches.clear()
        decoder.feed_many(together, [greedy(c) for c in together])
        assert sorted(runner.batches) == [1, 1, 2], runner.batches  # only equal lengths share
        for context in alone:
            decoder.feed(context, greedy(context))
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


def test_a_newcomer_takes_the_spare_row_of_one_that_left() -> None:
    """A sequence that leaves the batch leaves its row spare; one that arrives is written into
    it in place (no new batch, one call of 3) and every sequence still decodes what it decodes
    alone; a row freed in the last step (a sequence held back for its reader, a part somebody
    read) is never written over."""
    decoder, runner = counted_decoder(MODELS / "transformer-austen")
    first, second, third, late = prompts_of(decoder, AUSTEN, [30, 20, 12, 8])
    together = {p: decoder.read(p) for p in (first, second, third)}
    alone = {p: decoder.read(p) for p in (first, second, third, late)}

    def step(prompts: list[str]) -> None:
        batch = [together[p] for p in prompts]
        decoder.feed_many(batch, [greedy(c) for c in batch])
        for p in prompts:
            decoder.feed(alone[p], greedy(alone[p]))
            np.testing.assert_allclose(together[p].logits, alone[p].logits, atol=1e-4)

    step([first, second, third])
    step([first, second])  # `third` is done: its row stays, spare
    batch_state = decoder.model._last_split[1][0]
    together[late] = decoder.read(late)
    joined = decoder.model.join([together[p].state for p in (second, first, late)])
    assert joined is not None and joined.state[0] is batch_state and joined.rows == [1, 0, 2]
    runner.batches.clear()
    step([second, first, late])  # the newcomer takes row 2 (written again: the same bytes)
    assert runner.batches == [3, 1, 1, 1]  # one shared call, then each alone
    for _ in range(3):
        step([late, first, second])
    assert [together[p].ids for p in (first, second, late)] == [
        alone[p].ids for p in (first, second, late)
    ]
    # `second` sits a step out (held back) while a newcomer arrives: its row is not the
    # newcomer's (a new batch is made), and `second` comes back to what it had
    together[third] = decoder.read(third)
    alone[third] = decoder.read(third)
    batch_before = decoder.model._last_split[1][0]
    step([late, first, third])
    assert decoder.model._last_split[1][0] is not batch_before
    for _ in range(2):
        step([first, second, late, third])  # `second`'s logits still match its lone decoding
    assert batch_state is not batch_before  # (each step's outputs are new arrays)


@pytest.mark.parametrize("family", ["lstm", "mamba"])
def test_a_recurrent_model_reads_prompts_of_one_length_together(family: str) -> None:
    """Without a mask, prompts are read together where their lengths agree, and each one's
    logits and state are what it gets alone."""
    decoder, runner = counted_decoder(MODELS / f"{family}-austen")
    tokens = decoder.tokenizer.tokenize(AUSTEN)
    # different words, in groups of one length: 9 tokens three times, 14 twice, 3 once
    spans = [(0, 9), (20, 9), (40, 14), (60, 9), (80, 14), (100, 3)]
    prompts = [AUSTEN[tokens[a].start : tokens[a + n - 1].end] for a, n in spans]
    assert [len(decoder.tokenizer.tokenize(p)) for p in prompts] == [n for _, n in spans]
    together = decoder.read_many(prompts, [None, 2, None, None, None, None])
    assert sorted(runner.batches) == [1, 2, 3], runner.batches
    for prompt, context in zip(prompts, together, strict=True):
        alone = decoder.read(prompt, 2 if context.prompt_logprobs else None)
        np.testing.assert_allclose(context.logits, alone.logits, atol=1e-4)
        for got, expected in zip(context.state, alone.state, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-4)
        assert context.ids == alone.ids and context.text == prompt
        assert context.prompt_top == alone.prompt_top
        np.testing.assert_allclose(
            np.array(context.prompt_logprobs, dtype=float),
            np.array(alone.prompt_logprobs, dtype=float),
            atol=1e-4,
        )
