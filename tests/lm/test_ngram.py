"""The Kneser-Ney baseline: proper distributions, and the behaviour that makes it Kneser-Ney."""

from __future__ import annotations

import numpy as np

from service.tasks.tokenizer import WordTokenizer
from training.language_models.ngram import KneserNey, evaluate_ngram

TEXT = (
    "the cat sat on the mat . the dog sat on the log . a cat saw a dog . "
    "san francisco is a city . i saw san francisco . the cat and the dog are friends ."
)


def fitted(order: int = 3) -> tuple[KneserNey, WordTokenizer, np.ndarray]:
    tokenizer = WordTokenizer.train([TEXT], vocab_size=100)
    ids = np.array(tokenizer.encode(TEXT, add_bos=True))
    return KneserNey(len(tokenizer), order).fit(ids), tokenizer, ids


def test_probabilities_sum_to_one_over_the_vocabulary() -> None:
    model, tokenizer, _ = fitted()
    contexts = [("the", "cat"), ("sat", "on"), ("cat", "zebra"), ("<unk>", "<unk>"), ("a",), ()]
    for words in contexts:
        history = tuple(tokenizer.token_id(w) for w in words)
        probs = model.distribution(history)
        assert probs.shape == (len(tokenizer),)
        assert abs(probs.sum() - 1.0) < 1e-9, f"{words}: {probs.sum()}"
        assert (probs > 0).all(), "every word, <unk> included, needs probability > 0"


def test_seen_continuations_win_and_continuation_counts_matter() -> None:
    model, tokenizer, _ = fitted()
    t = tokenizer.token_id
    assert model.probability((t("sat"), t("on")), t("the")) > 0.5
    # "francisco" is frequent but only ever follows "san": as a novel continuation (unigram
    # level, continuation counts) it is less likely than "dog", which follows several words
    unseen = (t("saw"), t("mat"))
    assert model.probability(unseen, t("dog")) > model.probability(unseen, t("francisco"))


def test_evaluation_counts_every_token_but_the_first() -> None:
    model, _, ids = fitted()
    metrics = evaluate_ngram(model, ids)
    assert metrics["tokens"] == len(ids) - 1
    assert 1.0 < metrics["perplexity"] < 10.0  # its own training text: low, but smoothed
    assert 0.0 < metrics["top1"] <= metrics["top5"] <= 1.0
