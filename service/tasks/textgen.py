"""Next-word prediction and text generation with any family's step graph (numpy + onnxruntime).

The step graph is `(input_ids, *state) -> (logits, *next_state)`; config.json's "step" section
lists every state tensor (input and output names, dims with "batch"/"past" axes, which axis is
the batch, which grows with the text). `StepModel` reads only that, so the RNN, LSTM, GRU,
Transformer (key/value cache) and Mamba (conv + SSM state) are driven by the same code:

    prefill: state = zeros (past axis 0), one call with the whole prompt -> logits of its last token
    decode:  one call per new token, feeding each output state back as the matching input

The session is created by the caller (the service's runtime layer owns that): pass an
onnxruntime.InferenceSession, or any `run(feeds, output_names) -> list of arrays` function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.tasks.sampling import Sampler, SamplingParams, log_softmax, top_logprobs
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

    def initial_state(self, batch: int = 1) -> list[np.ndarray]:
        return [s.zeros(batch) for s in self.state]

    def run(
        self, ids: np.ndarray, state: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids (B, T) int64 and the state -> logits (B, T, V) float32 and the next state."""
        chunk = self.max_new_tokens or ids.shape[1]
        all_logits = []
        for start in range(0, ids.shape[1], chunk):
            feeds = {
                self.input_ids: np.ascontiguousarray(ids[:, start : start + chunk], dtype=np.int64)
            }
            feeds.update({s.input: v for s, v in zip(self.state, state, strict=True)})
            logits, *state = self.run_graph(feeds, self.output_names)
            all_logits.append(logits)
        return np.concatenate(all_logits, axis=1), list(state)

    def join(self, states: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray] | None:
        """Several sequences' states as one batch, or None when caches differ in length."""
        joined = []
        for k, spec in enumerate(self.state):
            parts = [s[k] for s in states]
            if spec.length_axis is not None and len({p.shape[spec.length_axis] for p in parts}) > 1:
                return None
            joined.append(np.concatenate(parts, axis=spec.batch_axis))
        return joined

    def split(self, state: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """One batched state back into per-sequence states (each keeps a batch axis of 1)."""
        batch = state[0].shape[self.state[0].batch_axis] if state else 0
        return [
            [
                np.take(t, [i], axis=spec.batch_axis)
                for spec, t in zip(self.state, state, strict=True)
            ]
            for i in range(batch)
        ]


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

    def copy(self) -> Context:
        """An independent continuation of the same text (state arrays are never written in place)."""
        return Context(
            list(self.ids), list(self.state), self.logits, self.tokens, self.text,
            self.prompt_logprobs,
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
        self.banned = {tokenizer.unk_id}  # never write <unk>

    @classmethod
    def from_version(cls, model_dir: Path, version: int | None = None) -> Decoder:
        """Convenience for tests and scripts: sessions made here with default options."""
        config = json.loads((model_dir / "config.json").read_text())
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
        folder = model_dir / str(version or versions[-1])
        session = ort.InferenceSession(
            str(folder / config["graphs"]["step"]), providers=["CPUExecutionProvider"]
        )
        tokenizer = WordTokenizer.load(folder / config["tokenizer"]["vocab"])
        return cls(session, config, tokenizer)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, text: str, prompt_logprobs: bool = False) -> Context:
        """Prefill: the start token and the prompt's tokens in one step call."""
        tokens = self.tokenizer.tokenize(text)
        ids = [self.tokenizer.bos_id, *(t.id for t in tokens)]
        context, logits = self._restart(ids)
        context.tokens, context.text = tokens, text
        if prompt_logprobs:
            # logits[j] scores window token j + 1; the window is the last len(logits) ids
            logprobs = log_softmax(logits)
            skipped = len(ids) - len(logits)
            context.prompt_logprobs = [
                None if k < skipped else float(logprobs[k - skipped, ids[k + 1]])
                for k in range(len(tokens))
            ]
        return context

    def restart(self, ids: list[int]) -> Context:
        """A fresh state that has read `ids` (the most recent ones if the graph has a limit)."""
        return self._restart(ids)[0]

    def _restart(self, ids: list[int]) -> tuple[Context, np.ndarray]:
        """The context after `ids`, and the logits (W, V) of the window of ids the graph read."""
        window = ids
        limit = self.model.max_length
        if limit is not None and len(ids) > limit:
            window = ids[-limit:]
        logits, state = self.model.run(
            np.array([window], dtype=np.int64), self.model.initial_state(1)
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
        for spec, tensor in zip(self.model.state, context.state, strict=True):
            if spec.length_axis is not None:
                return int(tensor.shape[spec.length_axis])
        return len(context.ids)

    # -- next word -------------------------------------------------------------------------------
    def next_word_distribution(self, text: str, k: int = 10) -> list[WordProbability]:
        """The k most likely next words after `text` (the paragraph break is spelled "\\n")."""
        logits = self.read(text).logits.astype(np.float64)
        logits[list(self.banned)] = -np.inf
        return [
            WordProbability(self.tokenizer.word(i), i, float(np.exp(logprob)), logprob)
            for i, logprob in top_logprobs(log_softmax(logits), k)
        ]

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        max_tokens: int = 50,
        params: SamplingParams | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[GeneratedToken]:
        """Continue `prompt` token by token. Stop after max_tokens or when a stop string appears
        (it is not included). Closing the iterator stops the work (a client went away)."""
        for _, token in self.continue_many([self.read(prompt)], max_tokens, params, stop):
            yield token

    def generate_batch(
        self,
        prompts: Sequence[str],
        max_tokens: int = 50,
        params: Sequence[SamplingParams] | SamplingParams | None = None,
        stop: Sequence[str] = (),
    ) -> list[list[GeneratedToken]]:
        """Several prompts at once: each step runs the sequences whose states fit together
        (all, for recurrent state; equal cache lengths for a key/value cache) in one call."""
        results: list[list[GeneratedToken]] = [[] for _ in prompts]
        contexts = [self.read(p) for p in prompts]
        for i, token in self.continue_many(contexts, max_tokens, params, stop):
            results[i].append(token)
        return results

    def continue_many(
        self,
        contexts: Sequence[Context],
        max_tokens: int,
        params: Sequence[SamplingParams] | SamplingParams | None = None,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Generator[tuple[int, GeneratedToken], None, None]:
        """(sequence index, token) as each sequence gets its next token, one step for all at a
        time; the contexts are advanced in place. `top_logprobs` alternatives come with each."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(contexts)
        writers = [TextWriter(c.tokens, c.text, stop) for c in contexts]
        samplers = [Sampler(p, self.banned, top_logprobs) for p in params]
        active = list(range(len(contexts)))
        for n in range(max_tokens):
            chosen = {}
            for i in list(active):
                choice = samplers[i].choose(contexts[i].logits, contexts[i].ids[1:])
                word = self.tokenizer.word(choice.token_id)
                text, stopped = writers[i].push(word)
                last = stopped or n == max_tokens - 1
                if last and not stopped:
                    text += writers[i].flush()
                reason = "stop" if stopped else "length" if last else None
                top = tuple((self.tokenizer.word(t), lp) for t, lp in choice.top)
                yield i, GeneratedToken(choice.token_id, word, choice.logprob, text, reason, top)
                if last:
                    active.remove(i)
                else:
                    chosen[i] = choice.token_id
            if not chosen:
                return
            self.feed_many([contexts[i] for i in chosen], list(chosen.values()))

    def feed_many(self, contexts: Sequence[Context], token_ids: Sequence[int]) -> None:
        """`feed` for several contexts, batching those whose states can be joined."""
        groups: dict[int, list[int]] = {}
        for i, context in enumerate(contexts):
            needs_restart = self.model.max_length is not None and (
                self.past_length(context) + 1 > self.model.max_length
            )
            key = -1 - i if needs_restart else self.past_length(context) if self.has_cache() else 0
            groups.setdefault(key, []).append(i)
        for key, members in groups.items():
            joined = self.model.join([contexts[i].state for i in members])
            if key < 0 or joined is None:
                for i in members:
                    self.feed(contexts[i], token_ids[i])
                continue
            ids = np.array([[token_ids[i]] for i in members], dtype=np.int64)
            logits, state = self.model.run(ids, joined)
            for row, (i, part) in enumerate(zip(members, self.model.split(state), strict=True)):
                contexts[i].ids.append(token_ids[i])
                contexts[i].state, contexts[i].logits = part, logits[row, -1]

    def has_cache(self) -> bool:
        return any(s.length_axis is not None for s in self.model.state)


class TextWriter:
    """Turns generated words into text after the prompt, holding back a possible stop string."""

    def __init__(self, prompt_tokens: Sequence[Token], prompt: str, stop: Sequence[str]) -> None:
        self.detokenizer = Detokenizer()
        for token in prompt_tokens:  # continue the prompt's quotes and spacing
            self.detokenizer.push(token.text)
        self.glued = not prompt or prompt[-1].isspace()  # the user already typed the space
        self.stop = [s for s in stop if s]
        self.pending = ""  # written but not yet released (may be the start of a stop string)

    def push(self, word: str) -> tuple[str, bool]:
        """Text to release now, and whether a stop string was reached."""
        piece = self.detokenizer.push(word)
        if self.glued and word != PARAGRAPH:
            piece = piece.lstrip(" ")
        self.glued = False
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
