"""The generic decoder, driven by a numpy stand-in for a step graph (no ONNX, no torch).

The stand-in is a bigram model with a key/value-cache-like state: logits depend on the last
token only, and the state is every id read so far on a growing "past" axis, so the tests can see
exactly what the decoder fed, and in which batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from bench.decoding import continue_many, generate, generate_batch
from service.tasks.sampling import SamplingParams
from service.tasks.textgen import Decoder, StepModel
from service.tasks.tokenizer import WordTokenizer

TEXT = "the cat sat on the mat . the dog sat on the log ."
TOKENIZER = WordTokenizer.train([TEXT], vocab_size=100)


def successor_table(tokenizer: WordTokenizer, pairs: Mapping[str, str]) -> np.ndarray:
    """Logits (V, V): after word a, word pairs[a] is very likely, every other word possible."""
    v = len(tokenizer)
    table = np.zeros((v, v), dtype=np.float32)
    for a, b in pairs.items():
        table[tokenizer.token_id(a) if a != "\n" else tokenizer.bos_id, tokenizer.token_id(b)] = 8.0
    table[:, tokenizer.unk_id] = 20.0  # <unk> would always win if it were not banned
    return table


PAIRS = {"\n": "the", "the": "cat", "cat": "sat", "sat": "on", "on": "the", "dog": "sat"}


class CacheModel:
    """run(feeds, output_names) like the service's Graph; records each call's batch and sizes."""

    def __init__(self, table: np.ndarray, max_length: int | None = None) -> None:
        self.table = table
        self.max_length = max_length
        self.calls: list[tuple[int, int, int]] = []  # (batch, past, new)

    def config(self) -> dict[str, Any]:
        state = {
            "input": "past",
            "output": "present",
            "datatype": "FP32",
            "dims": ["batch", "past", 1],
            "batch_axis": 0,
            "length_axis": 1,
            "initial": "zeros",
        }
        return {
            "max_length": self.max_length,
            "step": {"input_ids": "input_ids", "logits": "logits", "state": [state]},
        }

    def __call__(self, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        assert list(names) == ["logits", "present"]
        ids, past = feeds["input_ids"], feeds["past"]
        assert ids.dtype == np.int64 and past.dtype == np.float32
        present = np.concatenate([past, ids[..., None].astype(np.float32)], axis=1)
        if self.max_length is not None:
            assert present.shape[1] <= self.max_length, "fed past the graph's limit"
        self.calls.append((ids.shape[0], past.shape[1], ids.shape[1]))
        return [self.table[ids], present]


def make_decoder(max_length: int | None = None) -> tuple[Decoder, CacheModel]:
    model = CacheModel(successor_table(TOKENIZER, PAIRS), max_length)
    return Decoder(model, model.config(), TOKENIZER), model


def test_prefill_is_one_call_then_one_call_per_token() -> None:
    decoder, model = make_decoder()
    out = list(generate(decoder, "the dog", max_tokens=4, params=SamplingParams(temperature=0)))
    assert [t.word for t in out] == ["sat", "on", "the", "cat"]
    assert "".join(t.text for t in out) == " sat on the cat"
    assert out[-1].finish_reason == "length" and all(t.finish_reason is None for t in out[:-1])
    # start token + 2 prompt tokens in one call, then the 3 tokens that were fed back
    assert model.calls == [(1, 0, 3), (1, 3, 1), (1, 4, 1), (1, 5, 1)]


def test_unk_is_never_generated_and_logprobs_are_the_models() -> None:
    decoder, _ = make_decoder()
    out = list(generate(decoder, "", max_tokens=6, params=SamplingParams(seed=0)))
    assert all(t.token_id != TOKENIZER.unk_id for t in out)
    assert all(t.logprob <= 0 for t in out)


def test_prompt_spacing_is_respected() -> None:
    decoder, _ = make_decoder()
    greedy = SamplingParams(temperature=0)
    assert "".join(t.text for t in generate(decoder, "", 3, greedy)) == "the cat sat"
    assert (
        "".join(t.text for t in generate(decoder, "the dog ", 1, greedy)) == "sat"
    )  # no 2nd space
    assert "".join(t.text for t in generate(decoder, "the dog", 1, greedy)) == " sat"


def test_stop_string_ends_generation_and_is_not_included() -> None:
    decoder, _ = make_decoder()
    out = list(generate(decoder, "the dog", 20, SamplingParams(temperature=0), stop=["the c"]))
    assert "".join(t.text for t in out) == " sat on "
    assert out[-1].finish_reason == "stop" and len(out) == 4  # sat, on, the, cat
    # a text that only starts like the stop string is released once it cannot match
    out = list(generate(decoder, "the dog", 3, SamplingParams(temperature=0), stop=["the dog"]))
    assert "".join(t.text for t in out) == " sat on the"


def test_closing_the_stream_stops_the_work() -> None:
    decoder, model = make_decoder()
    stream = generate(decoder, "the", 1000, SamplingParams(seed=1))
    next(stream), next(stream)
    stream.close()  # what a server does when the client disconnects
    assert len(model.calls) == 2


def test_same_seed_same_text() -> None:
    decoder, _ = make_decoder()
    params = SamplingParams(temperature=3.0, top_p=0.95, seed=7)
    first = [t.token_id for t in generate(decoder, "the", 30, params)]
    assert first == [t.token_id for t in generate(decoder, "the", 30, params)]
    other = SamplingParams(temperature=3.0, top_p=0.95, seed=8)
    assert first != [t.token_id for t in generate(decoder, "the", 30, other)]


def test_length_limit_restarts_on_the_recent_tokens() -> None:
    decoder, model = make_decoder(max_length=8)
    out = list(generate(decoder, "the dog", 12, SamplingParams(temperature=0)))
    assert [t.word for t in out[:4]] == ["sat", "on", "the", "cat"]
    assert len(out) == 12  # CacheModel asserts the cache never exceeded 8
    assert any(past == 0 and new == 4 for _, past, new in model.calls[1:]), "no restart seen"


def test_next_word_distribution() -> None:
    decoder, _ = make_decoder()
    words = decoder.next_word_distribution("the dog", k=3)
    assert words[0].word == "sat"
    assert all(w.word != "<unk>" for w in words)
    assert words[0].probability > words[1].probability >= words[2].probability
    assert abs(np.log(words[0].probability) - words[0].logprob) < 1e-9


def test_batched_generation_equals_one_at_a_time() -> None:
    decoder, model = make_decoder()
    prompts = ["the dog", "the cat", "on the", "the"]
    params = [SamplingParams(seed=s, temperature=1.2) for s in range(4)]
    alone = [
        [t.token_id for t in generate(decoder, p, 5, q)]
        for p, q in zip(prompts, params, strict=True)
    ]
    model.calls.clear()
    together = generate_batch(decoder, prompts, 5, params)
    assert [[t.token_id for t in seq] for seq in together] == alone
    # caches of equal length share a call: the three 3-token prompts step together
    assert (3, 3, 1) in model.calls and (1, 2, 1) in model.calls


def test_state_description_is_validated() -> None:
    config = CacheModel(np.zeros((3, 3))).config()
    config["step"]["state"][0]["initial"] = "ones"
    with pytest.raises(ValueError):
        StepModel(lambda feeds, names: [], config)


def test_prompt_logprobs_score_every_prompt_token() -> None:
    decoder, _ = make_decoder()
    context = decoder.read("the cat", prompt_logprobs=1)
    table = successor_table(TOKENIZER, PAIRS).astype(np.float64)
    previous, read = [TOKENIZER.bos_id, TOKENIZER.token_id("the")], TOKENIZER.encode("the cat")
    # the whole vocabulary's softmax, <unk> (the likeliest here) included
    expected = [
        row[t] - np.log(np.exp(row).sum()) for row, t in zip(table[previous], read, strict=True)
    ]
    np.testing.assert_allclose(context.prompt_logprobs, expected, rtol=1e-6)
    # the best word at each position is the one read; <unk> is never listed
    assert [[w for w, _ in top or ()] for top in context.prompt_top] == [["the"], ["cat"]]
    assert decoder.read("the cat").prompt_logprobs == []  # only when asked


def test_a_text_scores_the_same_written_or_read() -> None:
    """Sampled words, then the same text read as a prompt: the same scores and alternatives, and
    each word where its offset says in the completion's text."""
    decoder, _ = make_decoder()
    prompt = "the dog"
    params = SamplingParams(seed=3, temperature=3.0)
    written = [t for _, t in continue_many(decoder, [decoder.read(prompt)], 12, params, [], 2)]
    completion = "".join(t.text for t in written)
    read = decoder.read(prompt + completion, prompt_logprobs=2)
    assert [t.text for t in read.tokens[2:]] == [t.word for t in written]
    assert [t.start - len(prompt) for t in read.tokens[2:]] == [t.offset for t in written]
    assert all(completion[t.offset :].startswith(t.word) for t in written)
    np.testing.assert_allclose(read.prompt_logprobs[2:], [t.logprob for t in written], rtol=1e-9)
    assert [[w for w, _ in top or ()] for top in read.prompt_top[2:]] == [
        [w for w, _ in t.top] for t in written
    ]


def test_offsets_count_text_held_back_for_a_stop_string() -> None:
    decoder, _ = make_decoder()
    out = list(generate(decoder, "the dog", 4, SamplingParams(temperature=0), ["on the mat"]))
    assert [t.text for t in out] == [" sat", " ", "", "on the cat"]  # "on the" might be a stop
    assert [t.offset for t in out] == [1, 5, 8, 12]
    assert all(" sat on the cat"[t.offset :].startswith(t.word) for t in out)


def test_continuations_share_a_prefill_and_report_alternatives() -> None:
    decoder, model = make_decoder()
    first = decoder.read("the dog")
    contexts = [first, first.copy()]
    params = [SamplingParams(seed=1, temperature=2.0), SamplingParams(seed=2, temperature=2.0)]
    out = list(continue_many(decoder, contexts, 3, params, top_logprobs=2))
    assert [i for i, _ in out] == [0, 1, 0, 1, 0, 1]
    assert len(model.calls) == 3  # one prefill, then both sequences in one call per step
    for _, token in out:
        assert len(token.top) == 2 and token.top[0][1] >= token.top[1][1]
        assert all(word != "<unk>" for word, _ in token.top)
    assert first.ids[:3] == contexts[1].ids[:3] and first.ids is not contexts[1].ids
