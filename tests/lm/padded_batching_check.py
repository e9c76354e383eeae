"""Shared by the tests of padded key/value-cache batching (tests/lm/test_padded_kv_batching.py,
and the transformer smoke run in tests/lm/test_lm_training.py): several sequences decoded greedily
with one `Decoder.feed_many` call per token must match each decoded alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.tasks.textgen import Context, Decoder
from service.tasks.tokenizer import WordTokenizer

STEPS = 10


class Counted:
    """A step runner that records the batch size of every graph call."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.batches: list[int] = []

    def __call__(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        self.batches.append(int(feeds["input_ids"].shape[0]))
        return self.session.run(list(names), dict(feeds))


def counted_decoder(model_dir: Path) -> tuple[Decoder, Counted]:
    config = json.loads((model_dir / "config.json").read_text())
    folder = model_dir / str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
    runner = Counted(
        ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    )
    tokenizer = WordTokenizer.load(folder / "vocab.json")
    return Decoder(runner, config, tokenizer), runner


def prompts_of(decoder: Decoder, text: str, lengths: list[int]) -> list[str]:
    """Prefixes of `text` with these numbers of tokens."""
    tokens = decoder.tokenizer.tokenize(text)
    assert len(tokens) >= max(lengths), "the sample text is too short"
    return [text[: tokens[n - 1].end] for n in lengths]


def step_together_and_alone(
    decoder: Decoder, runner: Counted, prompts: list[str]
) -> tuple[float, int]:
    """Greedy decoding of every prompt, all read in one call and stepped in one feed_many per
    token, and each alone, the first
    one stopping half way (the batch changes); checks the tokens and the number of calls, and
    returns the largest logit difference and how many restarts (max_length) happened."""
    runner.batches.clear()
    together = decoder.read_many(prompts)  # read in one call, padded at the start
    assert runner.batches == [len(prompts)], runner.batches
    alone = [decoder.read(p) for p in prompts]
    worst = max(
        float(np.abs(a.logits - b.logits).max()) for a, b in zip(together, alone, strict=True)
    )
    restarts = 0
    active = list(range(len(prompts)))
    for step in range(STEPS):
        if step == STEPS // 2:
            active = active[1:]
        batch = [together[i] for i in active]
        restarting = sum(needs_restart(decoder, c) for c in batch)
        runner.batches.clear()
        decoder.feed_many(batch, [greedy(c) for c in batch])
        # one call for every sequence that keeps its cache, plus one per restart; the shared
        # call may keep the rows of sequences that left as spare ones (StepModel.join)
        calls = sorted(runner.batches)
        kept = len(batch) - restarting
        assert calls[:restarting] == [1] * restarting, runner.batches
        assert len(calls) == restarting + (kept > 0), runner.batches
        assert kept == 0 or kept <= calls[-1] <= kept + max(1, len(prompts) // 4), runner.batches
        restarts += restarting
        for i in active:
            decoder.feed(alone[i], greedy(alone[i]))
            a, b = together[i], alone[i]
            assert np.isfinite(a.logits).all()
            assert decoder.past_length(a) == decoder.past_length(b)
            worst = max(worst, float(np.abs(a.logits - b.logits).max()))
    assert [c.ids for c in together] == [c.ids for c in alone]  # the same greedy tokens
    return worst, restarts


def needs_restart(decoder: Decoder, context: Context) -> bool:
    limit = decoder.model.max_length
    return limit is not None and decoder.past_length(context) + 1 > limit


def greedy(context: Context) -> int:
    return int(np.argmax(context.logits))
