"""Choosing the next token from a language model's logits (numpy only).

Order of operations, as in Hugging Face's generate: banned tokens removed -> repetition penalty
-> greedy (temperature 0) or temperature -> top-k -> top-p -> draw from a seeded numpy Generator.
`top_k=1` is greedy whatever the temperature.

Reported log-probabilities come from ONE distribution, the model's own: the log-softmax of its raw
logits over the whole vocabulary, banned tokens included (`Choice.scored`). Banning, the penalty,
temperature, top-k and top-p change which token is drawn, never the number reported with it, so a
text scores the same whether it was written by the model or read as a prompt, whatever the
sampling settings, and its perplexity is the one the model card measured. The alternatives listed
with a token leave banned tokens out (they are never written), keeping their model log-probability.
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
    result: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return result


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
    return _only(logits, top_k_ids(logits, k))


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray | None:
    """The ids `filter_top_k` keeps, in id order; None when it keeps every one."""
    if k <= 0 or k >= logits.shape[-1]:
        return None
    return np.flatnonzero(logits >= kth_largest(logits, k))


KTH_BLOCK = 64  # `kth_largest` first takes the maximum of each block of this many values


def kth_largest(values: np.ndarray, k: int) -> float:
    """`np.partition(values, -k)[-k]` of a 1-D array (1 <= k <= its size), without
    partitioning all of it (over 8,000 logits that costs 70-100 us, most of a next-word
    answer's own work): the k-th largest of the blocks' maxima is k distinct values, so the k-th
    largest value is at least that large, and is looked for only among the values that are.
    Where blocks are few for k, or a maximum is NaN (which np.partition sorts last), the whole
    array is partitioned."""
    size = values.shape[-1]
    rows = size // KTH_BLOCK
    if 4 * k > rows:
        return float(np.partition(values, -k)[-k])
    maxima = values[: rows * KTH_BLOCK].reshape(rows, KTH_BLOCK).max(axis=1)
    if np.isnan(maxima).any() or np.isnan(values[rows * KTH_BLOCK :]).any():
        return float(np.partition(values, -k)[-k])  # a NaN somewhere: numpy's own order
    bound = np.partition(maxima, -k)[-k]
    return float(np.partition(values[values >= bound], -k)[-k])


def _only(logits: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """-inf everywhere but at `ids` (all of them when None)."""
    if ids is None:
        return logits
    out = np.full_like(logits, -np.inf)
    out[ids] = logits[ids]
    return out


TOP_P_CANDIDATES = 64  # `filter_top_p` first looks for the nucleus among this many tokens


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """-inf outside the smallest set of most likely tokens whose probability reaches p (ties
    in the order of their ids)."""
    return logits if p >= 1.0 else _only(logits, nucleus_ids(logits, p))


def nucleus_ids(logits: np.ndarray, p: float) -> np.ndarray:
    """The ids `filter_top_p` keeps, in id order. They are looked for among the
    TOP_P_CANDIDATES most likely tokens (every token tied with the last of them included), four
    times as many while those hold less than p, instead of sorting the whole vocabulary."""
    size = logits.shape[-1]
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    candidates = None
    k = TOP_P_CANDIDATES
    while k < size:
        candidates = np.flatnonzero(logits >= kth_largest(logits, k))
        if weights[candidates].sum() >= p:
            break  # every other token comes after these, past the mass p
        candidates, k = None, k * 4
    if candidates is None:
        candidates = np.arange(size)
    order = candidates[np.lexsort((candidates, -logits[candidates]))]
    probs = weights[order]
    # keep a token if the mass before it is still below p (so the most likely is always kept)
    return np.sort(order[(np.cumsum(probs) - probs) < p])


def top_logprobs(
    logprobs: np.ndarray, k: int, banned: np.ndarray | None = None
) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-probability) pairs, best first (ties by id), leaving out
    the `banned` ids; the values are `logprobs`' own (not renormalised)."""
    if k <= 0:
        return ()
    if banned is not None and banned.size:
        logprobs = logprobs.copy()
        logprobs[banned] = -np.inf
    k = min(k, int(np.isfinite(logprobs).sum()))
    if k <= 0:
        return ()
    best = np.flatnonzero(logprobs >= kth_largest(logprobs, k))  # ties with the k-th too
    if best.size < k:  # NaNs, which np.partition counts among the largest: left out
        logprobs = np.where(np.isnan(logprobs), -np.inf, logprobs)
        best = np.flatnonzero(logprobs >= kth_largest(logprobs, k))
    best = best[np.lexsort((best, -logprobs[best]))][:k]
    return tuple((int(i), float(logprobs[i])) for i in best)


@dataclass(frozen=True)
class Choice:
    """A token at one position, as reported: written by the sampler or read in a prompt."""

    token_id: int
    logprob: float  # the model's log-probability of the token (see module docstring)
    top: tuple[tuple[int, float], ...] = ()  # the most likely (id, log-probability), best first

    @classmethod
    def scored(
        cls, logprobs: np.ndarray, token_id: int, k: int = 0, banned: np.ndarray | None = None
    ) -> Choice:
        """`token_id` with its log-probability in `logprobs` (V,), the model's `log_softmax` at
        that position, and the k most likely tokens there, banned ones left out. Generated and
        prompt tokens are both reported through here."""
        return cls(token_id, float(logprobs[token_id]), top_logprobs(logprobs, k, banned))


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
        logits = np.asarray(logits, dtype=np.float64)
        # the model's log-softmax (what is reported, see the module docstring), kept in parts:
        # shifted - log_total, with exactly log_softmax's arithmetic, for the entries read
        shifted = logits - logits.max()
        weights = np.exp(shifted)  # the model's probabilities, unnormalised
        log_total = float(np.log(weights.sum()))
        params = self.params
        allowed = logits
        if self.banned.size:
            allowed = logits.copy()
            allowed[self.banned] = -np.inf
        shaped = apply_repetition_penalty(allowed, previous, params.repetition_penalty)
        if params.greedy:
            token = int(np.argmax(shaped))
        else:
            if params.temperature != 1.0:
                shaped = shaped / params.temperature
            ids = top_k_ids(shaped, params.top_k)
            if params.top_p < 1.0:  # the nucleus of the tokens top-k kept
                kept = nucleus_ids(shaped if ids is None else shaped[ids], params.top_p)
                ids = kept if ids is None else ids[kept]
            if ids is not None:
                # drawn among the tokens kept: the same index as among all of them with the
                # others' probability 0 (zeros leave a cumulative sum's values as they are)
                chosen = shaped[ids]
                token = int(ids[draw(self.rng, np.exp(chosen - chosen.max()))])
            elif shaped is allowed:  # nothing reshaped: the model's probabilities, banned 0
                probs = weights
                probs[self.banned] = 0.0  # `draw` normalises
                token = draw(self.rng, probs)
            else:
                token = draw(self.rng, np.exp(shaped - shaped.max()))
        if not self.top_logprobs:
            return Choice(token, float(shifted[token] - log_total))
        return Choice.scored(shifted - log_total, token, self.top_logprobs, self.banned)


DRAW_BLOCK = 64  # `draw` sums the probabilities in blocks of this many
# how close (relative to the total) the uniform may come to a block-summed boundary before the
# draw is redone with numpy's own sequential sum: far above the rounding of either sum (about
# V x 1.1e-16 of the total), far below anything a seed would ever meet (a few draws in 1e9)
DRAW_MARGIN = 1e-9


def draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    """One index drawn with probabilities `probs` (V,), which need not sum to 1: the same draw
    as `rng.choice(V, p=probs / probs.sum())` from the same generator state (numpy's algorithm:
    the cumulative sum, normalised, searched with one uniform double), without its validation
    passes and without its sequential cumulative sum over the whole vocabulary (a third of the
    cost of a token): the block of the uniform is found from block sums, then the index within
    it. Both sums differ from numpy's by rounding only, so wherever the uniform is further than
    DRAW_MARGIN of the total from the boundaries around the index found, numpy finds the same
    index; closer than that (a few draws in 1e9), numpy's own sum decides."""
    u = rng.random()
    size = probs.shape[-1]
    if size <= 4 * DRAW_BLOCK:
        return _draw_sequential(probs, u)
    ends = np.add.reduceat(probs, np.arange(0, size, DRAW_BLOCK)).cumsum()
    total = float(ends[-1])
    if not total > 0:  # NaN or nothing left: rng.choice would refuse these too
        raise ValueError("the probabilities to draw from are not finite and positive")
    target = u * total
    block = int(ends.searchsorted(target, side="right"))
    if block >= len(ends):
        return _draw_sequential(probs, u)
    base = float(ends[block - 1]) if block else 0.0
    start = block * DRAW_BLOCK
    within = probs[start : start + DRAW_BLOCK].cumsum()
    within += base
    index = int(within.searchsorted(target, side="right"))
    below = float(within[index - 1]) if index else base
    margin = DRAW_MARGIN * total
    if index == len(within) or target - below <= margin or within[index] - target <= margin:
        return _draw_sequential(probs, u)
    return start + index


def _draw_sequential(probs: np.ndarray, u: float) -> int:
    """numpy's own draw for the uniform `u`: its cumulative sum, normalised, searched."""
    cdf = probs.cumsum()
    if not cdf[-1] > 0:  # NaN or nothing left: rng.choice would refuse these too
        raise ValueError("the probabilities to draw from are not finite and positive")
    cdf /= cdf[-1]
    return int(cdf.searchsorted(u, side="right"))
