"""Interpolated Kneser-Ney n-gram language model (numpy/python): the baseline for the neural models.

Chen & Goodman's interpolated Kneser-Ney with one absolute discount per order, D = n1 / (n1 + 2 n2)
(n1, n2 = how many n-grams of that order occur once, twice). The highest order uses real counts;
lower orders use continuation counts (how many distinct words precede the n-gram), and the
unigram level is interpolated with the uniform distribution so every word of the vocabulary,
<unk> included, gets probability > 0:

    P(w | h) = max(c(h w) - D, 0) / c(h .) + D * N1+(h .) / c(h .) * P(w | h')    (h' = h minus its first word)

and P(w | h) = P(w | h') when the history h was never seen. It reads the same token ids as the
neural models (same vocabulary, same <unk>), so the perplexities compare like for like.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from service.tasks.tokenizer import WordTokenizer


@dataclass
class Level:
    """Statistics of one order for histories of length n-1: counts and how much mass is left over."""

    counts: dict[tuple[int, ...], dict[int, int]] = field(
        default_factory=dict
    )  # history -> word -> count
    totals: dict[tuple[int, ...], int] = field(default_factory=dict)  # history -> sum of counts
    discount: float = 0.75


def discount_for(counts: Counter[tuple[int, ...]]) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return n1 / (n1 + 2 * n2) if n1 + n2 else 0.5


class KneserNey:
    """Interpolated Kneser-Ney of order `order` over ids 0..vocab_size-1."""

    def __init__(self, vocab_size: int, order: int = 3) -> None:
        assert order >= 1, "order must be at least 1"
        self.vocab_size = vocab_size
        self.order = order
        self.levels: list[Level] = []  # levels[k] has histories of length k

    def fit(self, ids: np.ndarray) -> KneserNey:
        tokens = [int(t) for t in ids]
        top: Counter[tuple[int, ...]] = Counter(
            tuple(tokens[i : i + self.order]) for i in range(len(tokens) - self.order + 1)
        )
        # Continuation counts for each lower order: distinct left neighbours of every n-gram.
        by_order: dict[int, Counter[tuple[int, ...]]] = {self.order: top}
        for n in range(self.order - 1, 0, -1):
            by_order[n] = Counter(gram[1:] for gram in by_order[n + 1])
            if n == self.order - 1:
                # The first n-gram of the text has no left neighbour; count it once so it exists.
                by_order[n][tuple(tokens[:n])] += 1
        self.levels = []
        for n in range(1, self.order + 1):
            grams = by_order[n]
            counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(dict)
            totals: dict[tuple[int, ...], int] = defaultdict(int)
            for gram, c in grams.items():
                counts[gram[:-1]][gram[-1]] = c
                totals[gram[:-1]] += c
            self.levels.append(Level(dict(counts), dict(totals), discount_for(grams)))
        return self

    def distribution(self, history: tuple[int, ...]) -> np.ndarray:
        """P(. | history) over the whole vocabulary (uses the last order-1 ids of `history`)."""
        history = history[len(history) - (self.order - 1) :] if self.order > 1 else ()
        probs = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for n, level in enumerate(self.levels):
            h = history[len(history) - n :] if n else ()
            total = level.totals.get(h)
            if not total:
                continue  # unseen history: keep the lower-order distribution as it is
            successors = level.counts[h]
            words = np.fromiter(successors, dtype=np.int64, count=len(successors))
            counts = np.fromiter(successors.values(), dtype=np.float64, count=len(successors))
            backoff = level.discount * len(successors) / total
            probs *= backoff
            probs[words] += np.maximum(counts - level.discount, 0.0) / total
        return probs

    def probability(self, history: tuple[int, ...], word: int) -> float:
        return float(self.distribution(history)[word])


def evaluate_ngram(model: KneserNey, ids: np.ndarray) -> dict[str, float]:
    """Perplexity and top-1/top-5 accuracy predicting ids[1:] each from its preceding ids."""
    tokens = [int(t) for t in ids]
    nll, top1, top5 = 0.0, 0, 0
    n = len(tokens) - 1
    cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for i in range(1, len(tokens)):
        history = tuple(tokens[max(0, i - model.order + 1) : i])
        if history not in cache:
            probs = model.distribution(history)
            best = np.argpartition(-probs, 5)[:5]
            cache[history] = (np.log(probs), best[np.argsort(-probs[best])])
        log_probs, best = cache[history]
        target = tokens[i]
        nll -= float(log_probs[target])
        top1 += int(best[0] == target)
        top5 += int(target in best)
    return {"perplexity": float(np.exp(nll / n)), "top1": top1 / n, "top5": top5 / n, "tokens": n}


def ngram_baseline(
    tokenizer: WordTokenizer, ids: dict[str, np.ndarray], order: int = 3
) -> dict[str, float]:
    """Interpolated Kneser-Ney on the same vocabulary and test tokens as the neural models."""
    model = KneserNey(len(tokenizer), order).fit(ids["train"])
    metrics = evaluate_ngram(model, ids["test"])
    return {
        **metrics,
        "order": order,
        "validation_perplexity": evaluate_ngram(model, ids["validation"])["perplexity"],
    }
