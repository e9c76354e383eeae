"""Choosing the next token from a language model's logits (numpy only).

Order of operations, as in Hugging Face's generate: banned tokens removed -> repetition penalty
-> greedy (temperature 0) or temperature -> top-k -> top-p -> draw from a seeded numpy Generator.
`top_k=1` is greedy whatever the temperature. The log-probability reported with each token is the
model's own (log-softmax of the raw logits with banned tokens removed), not that of the reshaped
distribution, so it is comparable across sampling settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy; <1 sharper, >1 flatter
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set with this much probability (nucleus); 1 = off
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the text; 1 = off
    seed: int | None = None  # same seed, same model, same prompt -> same text

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Along the last axis, in float64 so tiny probabilities keep their digits."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def apply_repetition_penalty(
    logits: np.ndarray, previous: Iterable[int], penalty: float
) -> np.ndarray:
    """CTRL's penalty: logits of tokens already seen are divided by it (multiplied if negative)."""
    if penalty == 1.0:
        return logits
    seen = np.unique(np.fromiter(previous, dtype=np.int64))
    if seen.size == 0:
        return logits
    out = logits.copy()
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """-inf everywhere but the k largest logits (ties at the boundary are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """-inf outside the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(log_softmax(logits[order]))
    # keep a token if the mass before it is still below p (so the most likely is always kept)
    keep_sorted = (np.cumsum(probs) - probs) < p
    keep = np.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return np.where(keep, logits, -np.inf)


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float  # the model's log-probability of the token (see module docstring)
    top: tuple[tuple[int, float], ...] = ()  # the most likely (id, log-probability), best first


def top_logprobs(logprobs: np.ndarray, k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-probability) pairs, best first (ties by id)."""
    k = min(k, int(np.isfinite(logprobs).sum()))
    if k <= 0:
        return ()
    best = np.argpartition(-logprobs, k - 1)[:k]
    best = best[np.lexsort((best, -logprobs[best]))]
    return tuple((int(i), float(logprobs[i])) for i in best)


class Sampler:
    """Picks tokens for one sequence with fixed parameters and its own random generator."""

    def __init__(
        self, params: SamplingParams, banned: Iterable[int] = (), top_logprobs: int = 0
    ) -> None:
        self.params = params
        self.banned = np.array(sorted(set(banned)), dtype=np.int64)
        self.rng = np.random.default_rng(params.seed)
        self.top_logprobs = top_logprobs  # alternatives to report with each choice

    def choose(self, logits: np.ndarray, previous: Iterable[int] = ()) -> Choice:
        """The next token from logits (V,) given the ids so far (for the repetition penalty)."""
        logits = np.asarray(logits, dtype=np.float64).copy()
        if self.banned.size:
            logits[self.banned] = -np.inf
        model_logprobs = log_softmax(logits)
        shaped = apply_repetition_penalty(logits, previous, self.params.repetition_penalty)
        if self.params.greedy:
            token = int(np.argmax(shaped))
        else:
            if self.params.temperature != 1.0:
                shaped = shaped / self.params.temperature
            shaped = filter_top_k(shaped, self.params.top_k)
            shaped = filter_top_p(shaped, self.params.top_p)
            # nothing reshaped the logits: their log-softmax is the model's, already computed
            shaped_logprobs = model_logprobs if shaped is logits else log_softmax(shaped)
            token = draw(self.rng, np.exp(shaped_logprobs))
        top = top_logprobs(model_logprobs, self.top_logprobs)
        return Choice(token, float(model_logprobs[token]), top)


def draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    """One index drawn with probabilities `probs` (V,): the same draw as
    `rng.choice(V, p=probs)` from the same generator state (numpy's algorithm: the normalised
    cumulative sum searched with one uniform double), without its validation passes."""
    cdf = probs.cumsum()
    if not cdf[-1] > 0:  # NaN or nothing left: rng.choice would refuse these too
        raise ValueError("the probabilities to draw from are not finite and positive")
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))
