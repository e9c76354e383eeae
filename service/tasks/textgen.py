"""Next-word prediction and text generation with any family's step graph (numpy + onnxruntime).

The step graph is `(input_ids, *state) -> (logits, *next_state)`; config.json's "step" section
lists every state tensor (input and output names, dims with "batch"/"past" axes, which axis is
the batch, which grows with the text). `StepModel` reads only that, so the RNN, LSTM, GRU,
Transformer (key/value cache) and Mamba (conv + SSM state) are driven by the same code:

    prefill: state = zeros (past axis 0), one call with the whole prompt -> logits of its last token
    decode:  one call per new token, feeding each output state back as the matching input

A graph whose "step" section names an `attention_mask` input (the Transformer's: (batch, past +
new) INT64, 1 = real token, 0 = padding) lets key/value caches of different lengths share one
call: `join` pads the shorter caches at the start, `split` hands each sequence back its own.

The session is created by the caller (the service's runtime layer owns that): pass an
onnxruntime.InferenceSession, or any `run(feeds, output_names) -> list of arrays` function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from service.tasks.sampling import Choice, Sampler, SamplingParams, log_softmax, top_logprobs
from service.tasks.tokenizer import PARAGRAPH, Detokenizer, Token, WordTokenizer

# the runtime's calling convention: run(feeds, output_names) -> outputs in that order
StepRunner = Callable[[Mapping[str, np.ndarray], Sequence[str]], Sequence[np.ndarray]]


def as_runner(step: ort.InferenceSession | StepRunner) -> StepRunner:
    if isinstance(step, ort.InferenceSession):
        session = step
        return lambda feeds, names: session.run(list(names), dict(feeds))
    return step


@dataclass(frozen=True)
class StateTensor:
    """One entry of config.json's step.state list."""

    input: str
    output: str
    dims: tuple[int | str, ...]
    batch_axis: int
    length_axis: int | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateTensor:
        if data.get("initial", "zeros") != "zeros" or data.get("datatype", "FP32") != "FP32":
            raise ValueError(
                f"state {data.get('input')!r}: only FP32 zeros initial state is supported"
            )
        return cls(
            input=str(data["input"]),
            output=str(data["output"]),
            dims=tuple(data["dims"]),
            batch_axis=int(data["batch_axis"]),
            length_axis=None if data.get("length_axis") is None else int(data["length_axis"]),
        )

    def zeros(self, batch: int) -> np.ndarray:
        shape = [batch if d == "batch" else 0 if d == "past" else int(d) for d in self.dims]
        return np.zeros(shape, dtype=np.float32)


class StepModel:
    """A step graph and the description of its state, with no knowledge of the family."""

    def __init__(self, step: ort.InferenceSession | StepRunner, config: Mapping[str, Any]) -> None:
        section = config["step"]
        self.run_graph = as_runner(step)
        self.input_ids = str(section.get("input_ids", "input_ids"))
        self.logits = str(section.get("logits", "logits"))
        self.state = [StateTensor.from_json(s) for s in section["state"]]
        self.output_names = [self.logits, *(s.output for s in self.state)]
        self.max_new_tokens = section.get("max_new_tokens")  # None: any number per call
        self.max_length: int | None = config.get("max_length")  # positions the graph supports
        mask = section.get("attention_mask")  # input name; None: caches must be equally long
        self.attention_mask: str | None = None if mask is None else str(mask)
        # what the last split handed out, and the batched state and mask it was cut from
        self._last_split: tuple[tuple[list[np.ndarray], ...], list[np.ndarray], np.ndarray | None]
        self._last_split = ((), [], None)

    def initial_state(self, batch: int = 1) -> list[np.ndarray]:
        return [s.zeros(batch) for s in self.state]

    def past_length(self, state: Sequence[np.ndarray]) -> int:
        """Tokens in a (joined) state's cache, padding included; 0 for a fixed-size state."""
        for spec, tensor in zip(self.state, state, strict=True):
            if spec.length_axis is not None:
                return int(tensor.shape[spec.length_axis])
        return 0

    def run(
        self,
        ids: np.ndarray,
        state: Sequence[np.ndarray],
        attention_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids (B, T) int64 and the state -> logits (B, T, V) float32 and the next state.

        `attention_mask` (B, past + T), 1 = real and 0 = padding, only for a graph that takes
        one; without it every token is real."""
        if attention_mask is not None and self.attention_mask is None:
            raise ValueError("this step graph has no attention mask input")
        past = self.past_length(state)
        if self.attention_mask is not None and attention_mask is None:
            attention_mask = np.ones((ids.shape[0], past + ids.shape[1]), dtype=np.int64)
        chunk = self.max_new_tokens or ids.shape[1]
        all_logits = []
        for start in range(0, ids.shape[1], chunk):
            feeds = {
                self.input_ids: np.ascontiguousarray(ids[:, start : start + chunk], dtype=np.int64)
            }
            if self.attention_mask is not None and attention_mask is not None:
                end = past + min(start + chunk, ids.shape[1])
                feeds[self.attention_mask] = np.ascontiguousarray(
                    attention_mask[:, :end], dtype=np.int64
                )
            feeds.update({s.input: v for s, v in zip(self.state, state, strict=True)})
            logits, *state = self.run_graph(feeds, self.output_names)
            all_logits.append(logits)
        return np.concatenate(all_logits, axis=1), list(state)

    def join(
        self, states: Sequence[Sequence[np.ndarray]]
    ) -> tuple[list[np.ndarray], np.ndarray | None] | None:
        """Several sequences' states as one batch, and the mask of its past (B, past): None when
        no cache needed padding. Caches of different lengths are padded at the start when the
        graph takes an attention mask; without one they cannot be joined (None).

        The states the last `split` handed out, all of them in the same order (the next decode
        step of the same batch), are joined already: that batch comes back without a copy."""
        handed, batched, batched_mask = self._last_split
        if len(states) == len(handed) and all(s is h for s, h in zip(states, handed, strict=True)):
            return list(batched), batched_mask
        lengths = [self.past_length(s) for s in states]
        longest = max(lengths, default=0)
        if longest == min(lengths, default=0):
            joined = [
                np.concatenate([s[k] for s in states], axis=spec.batch_axis)
                for k, spec in enumerate(self.state)
            ]
            return joined, None
        if self.attention_mask is None:
            return None
        mask = np.zeros((len(states), longest), dtype=np.int64)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        return [
            self._pad_and_join(k, [s[k] for s in states], longest) for k in range(len(self.state))
        ], mask

    def _pad_and_join(self, k: int, parts: Sequence[np.ndarray], longest: int) -> np.ndarray:
        """State tensor k of every sequence in one array, caches padded with zeros at the start."""
        spec = self.state[k]
        if spec.length_axis is None:
            return np.concatenate(parts, axis=spec.batch_axis)
        shape = list(parts[0].shape)
        shape[spec.batch_axis] = sum(p.shape[spec.batch_axis] for p in parts)
        shape[spec.length_axis] = longest
        joined = np.zeros(shape, dtype=parts[0].dtype)
        row = 0
        for part in parts:
            where: list[slice] = [slice(None)] * len(shape)
            where[spec.batch_axis] = slice(row, row + part.shape[spec.batch_axis])
            where[spec.length_axis] = slice(longest - part.shape[spec.length_axis], longest)
            joined[tuple(where)] = part
            row += part.shape[spec.batch_axis]
        return joined

    def split(
        self, state: Sequence[np.ndarray], attention_mask: np.ndarray | None = None
    ) -> list[list[np.ndarray]]:
        """One batched state back into per-sequence states (each keeps a batch axis of 1); given
        the call's mask (B, past + new), each cache keeps only its own (real) entries. The parts
        are views of the batch (state arrays are never written in place)."""
        batch = state[0].shape[self.state[0].batch_axis] if state else 0
        real = None if attention_mask is None else (attention_mask > 0).sum(axis=1)
        parts = []
        for i in range(batch):
            own = []
            for spec, tensor in zip(self.state, state, strict=True):
                where = [slice(None)] * tensor.ndim
                where[spec.batch_axis] = slice(i, i + 1)
                if real is not None and spec.length_axis is not None:  # padding is at the start
                    where[spec.length_axis] = slice(
                        tensor.shape[spec.length_axis] - int(real[i]), None
                    )
                own.append(tensor[tuple(where)])
            parts.append(own)
        self._last_split = (tuple(parts), list(state), attention_mask)
        return parts


@dataclass
class Context:
    """One sequence being read or written: every id fed so far, the state after them."""

    ids: list[int]
    state: list[np.ndarray]
    logits: np.ndarray  # (V,) for the token after the last id
    tokens: list[Token] = field(default_factory=list)  # the prompt as the user typed it
    text: str = ""  # the prompt
    # log P(prompt token i | the tokens before it), when asked for; None beyond the graph's window
    prompt_logprobs: list[float | None] = field(default_factory=list)
    # the most likely words at each prompt token's position, as `GeneratedToken.top`
    prompt_top: list[tuple[tuple[str, float], ...] | None] = field(default_factory=list)

    def copy(self) -> Context:
        """An independent continuation of the same text (state arrays are never written in place)."""
        return Context(
            list(self.ids), list(self.state), self.logits, self.tokens, self.text,
            self.prompt_logprobs, self.prompt_top,
        )  # fmt: skip


@dataclass(frozen=True)
class WordProbability:
    word: str
    token_id: int
    probability: float
    logprob: float


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token. `text` is the text released with it: joining every `text` gives the
    completion (text can be empty while a possible stop string is held back)."""

    token_id: int
    word: str
    logprob: float
    text: str
    finish_reason: str | None = None  # "length" or "stop" on the last token, else None
    top: tuple[tuple[str, float], ...] = ()  # the most likely words and their log-probabilities
    # where `word` starts in the completion's text (after the space before it, if any); a word
    # cut out with a stop string points where it would have been
    offset: int = 0


class Decoder:
    """Reads prompts and writes continuations with one language model version."""

    def __init__(
        self,
        step: ort.InferenceSession | StepRunner,
        config: Mapping[str, Any],
        tokenizer: WordTokenizer,
    ) -> None:
        self.model = StepModel(step, config)
        self.tokenizer = tokenizer
        self.banned = np.array([tokenizer.unk_id], dtype=np.int64)  # never write <unk>

    # -- reading ---------------------------------------------------------------------------------
    def read(self, text: str, prompt_logprobs: int | None = None) -> Context:
        """Prefill: the start token and the prompt's tokens in one step call. With
        `prompt_logprobs` k (vLLM's parameter), each prompt token is scored as a generated one
        is (`Choice.scored`): its log-probability and the k most likely words at its position."""
        tokens = self.tokenizer.tokenize(text)
        ids = [self.tokenizer.bos_id, *(t.id for t in tokens)]
        context, logits = self._restart(ids)
        context.tokens, context.text = tokens, text
        if prompt_logprobs is not None:
            # logits[j] scores window token j + 1; the window is the last len(logits) ids
            logprobs = log_softmax(logits)
            skipped = len(ids) - len(logits)
            scores = [
                None
                if k < skipped
                else Choice.scored(logprobs[k - skipped], ids[k + 1], prompt_logprobs, self.banned)
                for k in range(len(tokens))
            ]
            context.prompt_logprobs = [None if c is None else c.logprob for c in scores]
            context.prompt_top = [None if c is None else self.named(c.top) for c in scores]
        return context

    def named(self, top: Sequence[tuple[int, float]]) -> tuple[tuple[str, float], ...]:
        """(id, log-probability) pairs as (word, log-probability)."""
        return tuple((self.tokenizer.word(i), lp) for i, lp in top)

    def restart(self, ids: list[int]) -> Context:
        """A fresh state that has read `ids` (the most recent ones if the graph has a limit)."""
        return self._restart(ids)[0]

    def _restart(self, ids: list[int]) -> tuple[Context, np.ndarray]:
        """The context after `ids`, and the logits (W, V) of the window of ids the graph read."""
        logits, state = self.model.run(
            np.array([self.window(ids)], dtype=np.int64), self.model.initial_state(1)
        )
        return Context(list(ids), state, logits[0, -1]), logits[0]

    def feed(self, context: Context, token_id: int) -> None:
        """Advance one token. A graph with a length limit is restarted on the last half of it."""
        context.ids.append(token_id)
        limit = self.model.max_length
        if limit is not None and self.past_length(context) + 1 > limit:
            fresh = self.restart(context.ids[-(limit // 2) :])
            context.state, context.logits = fresh.state, fresh.logits
            return
        logits, context.state = self.model.run(
            np.array([[token_id]], dtype=np.int64), context.state
        )
        context.logits = logits[0, -1]

    def past_length(self, context: Context) -> int:
        return self.model.past_length(context.state) if self.has_cache() else len(context.ids)

    # -- next word -------------------------------------------------------------------------------
    def next_word_distribution(self, text: str, k: int = 10) -> list[WordProbability]:
        """The k most likely next words after `text` (the paragraph break is spelled "\\n")."""
        return self.top_words(self.read(text).logits, k)

    def top_words(self, logits: np.ndarray, k: int) -> list[WordProbability]:
        """The k most likely words of one position's logits (V,), never <unk>; their
        probabilities are the model's, as completions report them (sampling.py's docstring)."""
        return [
            WordProbability(self.tokenizer.word(i), i, float(np.exp(logprob)), logprob)
            for i, logprob in top_logprobs(log_softmax(logits), k, self.banned)
        ]

    def window(self, ids: list[int]) -> list[int]:
        """The ids a fresh state reads of `ids`: the most recent `max_length` of them when the
        graph has a limit, else all."""
        limit = self.model.max_length
        return ids[-limit:] if limit is not None and len(ids) > limit else ids

    def prompt_window(self, text: str) -> list[int]:
        """The ids a prefill of `text` reads: the start token and the prompt, windowed."""
        return self.window([self.tokenizer.bos_id, *(t.id for t in self.tokenizer.tokenize(text))])

    def fresh_state_feeds(self, batch: int) -> dict[str, np.ndarray]:
        """The zero state of `batch` sequences, by input name."""
        state = zip(self.model.state, self.model.initial_state(batch), strict=True)
        return {spec.input: zeros for spec, zeros in state}

    def padded_prefill(self, ids: Sequence[int], width: int) -> dict[str, np.ndarray] | None:
        """Step-graph feeds (batch of one; the state is left out: `fresh_state_feeds` adds it
        for whatever batch they end up in) that read `ids` padded on the right to `width`
        tokens, or None when the graph cannot read them in one call. Every family here is
        causal, so the logits at position len(ids) - 1 do not see the padding; the state the
        call returns does, and must not be used."""
        limit = self.model.max_length
        chunk = self.model.max_new_tokens
        if not ids or width < len(ids) or (limit is not None and width > limit):
            return None
        if chunk is not None and width > chunk:
            return None
        row = np.zeros((1, width), dtype=np.int64)  # id 0 pads: never seen by the kept logits
        row[0, : len(ids)] = ids
        feeds = {self.model.input_ids: row}
        if self.model.attention_mask is not None:
            feeds[self.model.attention_mask] = np.ones((1, width), dtype=np.int64)
        return feeds

    def feed_many(self, contexts: Sequence[Context], token_ids: Sequence[int]) -> None:
        """`feed` for several contexts, batching those whose states can be joined: all of them
        for recurrent state or a cache graph with an attention mask, else equal cache lengths."""
        groups: dict[int, list[int]] = {}
        padded = self.model.attention_mask is not None
        for i, context in enumerate(contexts):
            needs_restart = self.model.max_length is not None and (
                self.past_length(context) + 1 > self.model.max_length
            )
            key = self.past_length(context) if self.has_cache() and not padded else 0
            groups.setdefault(-1 - i if needs_restart else key, []).append(i)
        for key, members in groups.items():
            joined = self.model.join([contexts[i].state for i in members])
            if key < 0 or joined is None:
                for i in members:
                    self.feed(contexts[i], token_ids[i])
                continue
            state, past_mask = joined
            mask = None
            if past_mask is not None:  # the new tokens are real
                mask = np.concatenate([past_mask, np.ones((len(members), 1), np.int64)], axis=1)
            ids = np.array([[token_ids[i]] for i in members], dtype=np.int64)
            logits, state = self.model.run(ids, state, mask)
            parts = self.model.split(state, mask)
            for row, (i, part) in enumerate(zip(members, parts, strict=True)):
                contexts[i].ids.append(token_ids[i])
                contexts[i].state, contexts[i].logits = part, logits[row, -1]

    def has_cache(self) -> bool:
        return any(s.length_axis is not None for s in self.model.state)


class Continuation:
    """One sequence being written: its context, sampler, text writer and token budget.

    `next_token` picks the next token and the text it releases; unless the sequence is then
    `done`, the caller feeds `chosen` to the model (alone or batched with other sequences)
    before asking again. The service's decode engine uses it (and the in-process reference loop,
    bench/decoding.py)."""

    def __init__(
        self,
        decoder: Decoder,
        context: Context,
        max_tokens: int,
        params: SamplingParams,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> None:
        self.context = context
        self.decoder = decoder
        self.tokenizer = decoder.tokenizer
        self.sampler = Sampler(params, decoder.banned, top_logprobs)
        self.writer = TextWriter(context.tokens, context.text, stop)
        self.left = max_tokens  # tokens still to write; 0 once a stop string appeared
        self.chosen = -1  # the last token written: the one to feed next

    @property
    def done(self) -> bool:
        return self.left <= 0

    def next_token(self) -> GeneratedToken:
        assert not self.done, "the sequence is finished"
        choice = self.sampler.choose(self.context.logits, self.context.ids[1:])
        word = self.tokenizer.word(choice.token_id)
        text, stopped = self.writer.push(word)
        offset = self.writer.word_start
        self.left = 0 if stopped else self.left - 1
        if self.done and not stopped:
            text += self.writer.flush()
        reason = "stop" if stopped else "length" if self.done else None
        top = self.decoder.named(choice.top)
        self.chosen = choice.token_id
        return GeneratedToken(choice.token_id, word, choice.logprob, text, reason, top, offset)


class TextWriter:
    """Turns generated words into text after the prompt, holding back a possible stop string."""

    def __init__(self, prompt_tokens: Sequence[Token], prompt: str, stop: Sequence[str]) -> None:
        self.detokenizer = Detokenizer()
        for token in prompt_tokens:  # continue the prompt's quotes and spacing
            self.detokenizer.push(token.text)
        self.glued = not prompt or prompt[-1].isspace()  # the user already typed the space
        self.stop = [s for s in stop if s]
        self.pending = ""  # written but not yet released (may be the start of a stop string)
        self.written = 0  # characters written so far, released or pending
        self.word_start = 0  # where the last word pushed starts in the text written

    def push(self, word: str) -> tuple[str, bool]:
        """Text to release now, and whether a stop string was reached."""
        piece = self.detokenizer.push(word)
        if self.glued and word != PARAGRAPH:
            piece = piece.lstrip(" ")
        self.glued = False
        # the piece is the word after a space or none; a paragraph break ("\n\n") starts at once
        self.word_start = self.written + (0 if word == PARAGRAPH else len(piece) - len(word))
        self.written += len(piece)
        self.pending += piece
        for s in self.stop:
            at = self.pending.find(s)
            if at >= 0:
                released, self.pending = self.pending[:at], ""
                return released, True
        hold = max(
            (n for s in self.stop for n in range(1, len(s)) if self.pending.endswith(s[:n])),
            default=0,
        )
        released = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return released, False

    def flush(self) -> str:
        released, self.pending = self.pending, ""
        return released
