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
from typing import Any, NamedTuple, overload

import numpy as np
import onnxruntime as ort

from service.tasks.sampling import Choice, Sampler, SamplingParams, log_softmax, top_logprobs
from service.tasks.tokenizer import PARAGRAPH, Detokenizer, Token, WordTokenizer

MAX_PADDING = 4  # a reused batch's caches may be padded by a quarter of the longest one
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
        self._grows = any(s.length_axis is not None for s in self.state)  # a cache, by length
        # what the last split handed out (by row; None: a row nobody holds), and the batched
        # state and mask it was cut from
        self._last_split: tuple[list[SplitState | None], list[np.ndarray], np.ndarray | None]
        self._last_split = ([], [], None)

    def initial_state(self, batch: int = 1) -> list[np.ndarray]:
        return [s.zeros(batch) for s in self.state]

    def past_length(self, state: Sequence[np.ndarray]) -> int:
        """Tokens in a (joined) state's cache, padding included; 0 for a fixed-size state."""
        if isinstance(state, SplitState):
            return state.past
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

    def join(self, states: Sequence[Sequence[np.ndarray]]) -> Joined | None:
        """Several sequences' states as one batch, the mask of its past (B, past; None when no
        cache needed padding) and each sequence's row. Caches of different lengths are padded at
        the start when the graph takes an attention mask; without one they cannot be joined
        (None).

        The batch the last `split` came from is reused when the states are its parts (the next
        decode step, in any order, with or without some of them): no copy. Rows nobody asks for
        stay in the batch as spare ones (their outputs are dropped) while they are at most a
        quarter of it, and a sequence new to the batch takes a row that was spare in the last
        step already (written in place: nobody was handed a part of it), while the caches'
        padding stays under 1 / MAX_PADDING of the longest one. Otherwise the states are
        copied into a new batch (compact: the cost of the copy is about one step's, a spare row
        or column costs a little at every step)."""
        reused = self._reuse(states)
        if reused is not None:
            return reused
        rows = list(range(len(states)))
        lengths = [self.past_length(s) for s in states]
        longest = max(lengths, default=0)
        if longest == min(lengths, default=0):
            joined = [
                np.concatenate([s[k] for s in states], axis=spec.batch_axis)
                for k, spec in enumerate(self.state)
            ]
            return Joined(joined, None, rows)
        if self.attention_mask is None:
            return None
        mask = np.zeros((len(states), longest), dtype=np.int64)
        for row, length in enumerate(lengths):
            mask[row, longest - length :] = 1
        return Joined(
            [
                self._pad_and_join(k, [s[k] for s in states], longest)
                for k in range(len(self.state))
            ],
            mask,
            rows,
        )

    def _reuse(self, states: Sequence[Sequence[np.ndarray]]) -> Joined | None:
        """`join` from the last split's batch (see there), or None when it cannot be."""
        handed, batched, mask = self._last_split
        if not handed or not states:
            return None
        row_of = {id(h): r for r, h in enumerate(handed) if h is not None}
        rows: list[int | None] = []
        for state in states:
            # `handed` keeps its parts alive, so an id found is that part; popped: the same
            # part twice is not the same row
            rows.append(row_of.pop(id(state), None))
        taken = {r for r in rows if r is not None}
        free = [r for r in range(len(handed)) if r not in taken]
        newcomers = [j for j, r in enumerate(rows) if r is None]
        if len(free) - len(newcomers) > max(1, len(handed) // 4):
            return None  # mostly spare rows: a compact batch is cheaper to run
        longest = max(self.past_length(s) for s in states)
        if (self.past_length(batched) - longest) * MAX_PADDING > longest:
            return None  # the longest sequences left: trim the padding they leave behind
        if newcomers:
            # only rows that were spare already: a row freed just now may belong to a sequence
            # that sits this step out (held back for its reader) and comes back to its part
            writable = [r for r in free if handed[r] is None]
            if len(writable) < len(newcomers) or not all(t.flags.writeable for t in batched):
                return None
            arriving = [states[j] for j in newcomers]
            if not self._fit(batched, arriving):
                return None
            mask = self._place(batched, mask, arriving, writable)
            for j, row in zip(newcomers, writable, strict=False):
                rows[j] = row
        kept = [r for r in rows if r is not None]
        spare = sorted(set(range(len(handed))) - set(kept))
        if spare and self.attention_mask is not None:
            # a spare row sees no past: its positions never run past the graph's limit
            if mask is None:
                mask = np.ones((len(handed), self.past_length(batched)), np.int64)
            else:
                mask = mask.copy()
            mask[spare] = 0
        return Joined(list(batched), mask, kept)

    def _fit(self, batched: list[np.ndarray], states: Sequence[Sequence[np.ndarray]]) -> bool:
        """Whether the states fit rows of the batch: no longer cache than the batch's, and a
        shorter one only with an attention mask."""
        longest = self.past_length(batched)
        lengths = [self.past_length(s) for s in states]
        return all(n <= longest for n in lengths) and (
            self.attention_mask is not None or all(n == longest for n in lengths)
        )

    def _place(
        self,
        batched: list[np.ndarray],
        mask: np.ndarray | None,
        states: Sequence[Sequence[np.ndarray]],
        rows: Sequence[int],
    ) -> np.ndarray | None:
        """Write each state (`_fit`) into its spare row of `batched`, its cache right-aligned
        with zeros before it, and return the batch's past mask."""
        longest = self.past_length(batched)
        lengths = [self.past_length(s) for s in states]
        if any(n < longest for n in lengths) or mask is not None:
            mask = (
                np.ones((batched[0].shape[self.state[0].batch_axis], longest), np.int64)
                if mask is None
                else mask.copy()
            )
        for state, row, length in zip(states, rows, lengths, strict=False):
            for spec, tensor, part in zip(self.state, batched, state, strict=True):
                where: list[slice] = [slice(None)] * tensor.ndim
                where[spec.batch_axis] = slice(row, row + 1)
                if spec.length_axis is None:
                    tensor[tuple(where)] = part
                    continue
                where[spec.length_axis] = slice(0, longest - length)
                tensor[tuple(where)] = 0
                where[spec.length_axis] = slice(longest - length, longest)
                tensor[tuple(where)] = part
            if mask is not None:
                mask[row, : longest - length] = 0
                mask[row, longest - length :] = 1
        return mask

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
        self,
        state: Sequence[np.ndarray],
        attention_mask: np.ndarray | None = None,
        rows: Sequence[int] | None = None,
    ) -> list[SplitState]:
        """One batched state back into per-sequence states, those of `rows` (all by default), in
        that order; given the call's mask (B, past + new), each cache keeps only its own (real)
        entries. The parts are views of the batch, cut only when read (`SplitState`); the next
        `join` of them reuses the batch."""
        batch = state[0].shape[self.state[0].batch_axis] if state else 0
        parts = self.parts(state, attention_mask, rows)
        handed: list[SplitState | None] = [None] * batch
        for part in parts:
            handed[part.row] = part
        self._last_split = (handed, list(state), attention_mask)
        return parts

    def parts(
        self,
        state: Sequence[np.ndarray],
        attention_mask: np.ndarray | None = None,
        rows: Sequence[int] | None = None,
    ) -> list[SplitState]:
        """`split` without remembering the batch (a prefill's: the decode batch stays the one
        the next `join` reuses)."""
        batch = state[0].shape[self.state[0].batch_axis] if state else 0
        # each cache's own length, when the call's mask padded some (a fixed-size state: none)
        real = None
        if attention_mask is not None and self._grows:
            real = (attention_mask > 0).sum(axis=1)
        padded = self.past_length(state)
        return [
            SplitState(
                self, state, row, padded if real is None else int(real[row]), real is not None
            )
            for row in (range(batch) if rows is None else rows)
        ]

    def has_length(self) -> bool:
        return self._grows


class Joined(NamedTuple):
    state: list[np.ndarray]
    mask: np.ndarray | None  # (B, past), 1 = real; None when no cache needed padding
    rows: list[int]  # the batch row of each sequence, in the order given (others are spare)


class SplitState(Sequence[np.ndarray]):
    """One sequence's part of a batched state (batch axis of 1; a cache without the padding
    before it): views of the batch, cut when first read. The next step of the same batch joins
    it back without reading it."""

    def __init__(
        self, model: StepModel, batch: Sequence[np.ndarray], row: int, past: int, trim: bool
    ) -> None:
        self.model = model
        self.batch = batch
        self.row = row
        self.past = past  # tokens in its own cache (0 for a fixed-size state)
        self.trim = trim  # the cache has padding before it to cut off
        self._parts: list[np.ndarray] | None = None

    def parts(self) -> list[np.ndarray]:
        if self._parts is None:
            own = []
            for spec, tensor in zip(self.model.state, self.batch, strict=True):
                where = [slice(None)] * tensor.ndim
                where[spec.batch_axis] = slice(self.row, self.row + 1)
                if self.trim and spec.length_axis is not None:  # padding is at the start
                    where[spec.length_axis] = slice(
                        tensor.shape[spec.length_axis] - self.past, None
                    )
                own.append(tensor[tuple(where)])
            self._parts = own
        return self._parts

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        return self.parts()[index]

    def __len__(self) -> int:
        return len(self.batch)


@dataclass
class Context:
    """One sequence being read or written: every id fed so far, the state after them."""

    ids: list[int]
    state: Sequence[np.ndarray]  # a list, or the decoder's SplitState
    logits: np.ndarray  # (V,) for the token after the last id
    tokens: list[Token] = field(default_factory=list)  # the prompt as the user typed it
    text: str = ""  # the prompt
    # log P(prompt token i | the tokens before it), when asked for; None beyond the graph's window
    prompt_logprobs: list[float | None] = field(default_factory=list)
    # the most likely words at each prompt token's position, as `GeneratedToken.top`
    prompt_top: list[tuple[tuple[str, float], ...] | None] = field(default_factory=list)

    def copy(self) -> Context:
        """An independent continuation of the same text. The state arrays are shared: only
        rows of a batch that nobody was handed a part of are written in place (`StepModel.join`)."""
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
        return self.read_many([text], [prompt_logprobs])[0]

    def read_many(
        self,
        texts: Sequence[str],
        prompt_logprobs: Sequence[int | None] | None = None,
        tokens: Sequence[list[Token]] | None = None,
    ) -> list[Context]:
        """`read` for several prompts, in as few step calls as their states allow: one for all
        of them when the graph takes an attention mask (the shorter prompts padded at the
        start, which such a graph reads exactly as alone), else one per prompt length. Each
        context's state is its own part of its call's batch. `tokens`: the texts' tokens, when
        the caller has them already."""
        if tokens is None:
            tokens = [self.tokenizer.tokenize(text) for text in texts]
        ids = [self.prompt_ids(prompt) for prompt in tokens]
        windows = [self.window(row) for row in ids]
        groups: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            groups.setdefault(0 if self.model.attention_mask else len(window), []).append(i)
        contexts: list[Context | None] = [None] * len(texts)
        for members in groups.values():
            read = self._prefill([windows[i] for i in members])
            for i, (state, logits) in zip(members, read, strict=True):
                context = contexts[i] = Context(ids[i], state, logits[-1], tokens[i], texts[i])
                k = None if prompt_logprobs is None else prompt_logprobs[i]
                if k is not None:
                    self._score_prompt(context, logits, k)
        return [c for c in contexts if c is not None]

    def _prefill(self, windows: Sequence[list[int]]) -> list[tuple[SplitState, np.ndarray]]:
        """Fresh states that read each window (one call; windows of different lengths only for
        a graph with an attention mask, padded at the start): each one's state and the logits
        (W, V) of its own window's positions."""
        longest = max(len(w) for w in windows)
        ids = np.zeros((len(windows), longest), dtype=np.int64)
        mask = None
        if any(len(w) < longest for w in windows):
            mask = np.zeros((len(windows), longest), dtype=np.int64)
        for row, window in enumerate(windows):
            ids[row, longest - len(window) :] = window
            if mask is not None:
                mask[row, longest - len(window) :] = 1
        logits, state = self.model.run(ids, self.model.initial_state(len(windows)), mask)
        parts = self.model.parts(state, mask)
        return [
            (part, logits[row, longest - len(window) :])
            for row, (part, window) in enumerate(zip(parts, windows, strict=True))
        ]

    def _score_prompt(self, context: Context, logits: np.ndarray, k: int) -> None:
        """Each prompt token's log-probability and the k most likely words at its position, as
        a generated token's are reported (`Choice.scored`); logits (W, V) of the window read."""
        ids, tokens = context.ids, context.tokens
        # logits[j] scores window token j + 1; the window is the last len(logits) ids
        logprobs = log_softmax(logits)
        skipped = len(ids) - len(logits)
        scores = [
            None
            if j < skipped
            else Choice.scored(logprobs[j - skipped], ids[j + 1], k, self.banned)
            for j in range(len(tokens))
        ]
        context.prompt_logprobs = [None if c is None else c.logprob for c in scores]
        context.prompt_top = [None if c is None else self.named(c.top) for c in scores]

    def named(self, top: Sequence[tuple[int, float]]) -> tuple[tuple[str, float], ...]:
        """(id, log-probability) pairs as (word, log-probability)."""
        return tuple((self.tokenizer.word(i), lp) for i, lp in top)

    def restart(self, ids: list[int]) -> Context:
        """A fresh state that has read `ids` (the most recent ones if the graph has a limit)."""
        ((state, logits),) = self._prefill([self.window(ids)])
        return Context(list(ids), state, logits[-1])

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
        return self.window(self.prompt_ids(self.tokenizer.tokenize(text)))

    def prompt_ids(self, tokens: Sequence[Token]) -> list[int]:
        """The ids a prompt of these tokens is read as: the start token, then theirs."""
        return [self.tokenizer.bos_id, *(t.id for t in tokens)]

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
            joined = None if key < 0 else self.model.join([contexts[i].state for i in members])
            if joined is None:
                for i in members:
                    self.feed(contexts[i], token_ids[i])
                continue
            state, past_mask, rows = joined
            batch = state[0].shape[self.model.state[0].batch_axis] if state else len(members)
            mask = None
            if past_mask is not None:  # the new tokens are real
                mask = np.concatenate([past_mask, np.ones((batch, 1), np.int64)], axis=1)
            ids = np.zeros((batch, 1), dtype=np.int64)  # spare rows read id 0, never used
            ids[rows, 0] = [token_ids[i] for i in members]
            logits, state = self.model.run(ids, state, mask)
            parts = self.model.split(state, mask, rows)
            for row, i, part in zip(rows, members, parts, strict=True):
                contexts[i].ids.append(token_ids[i])
                contexts[i].state, contexts[i].logits = part, logits[row, -1]

    def has_cache(self) -> bool:
        return self.model.has_length()


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
