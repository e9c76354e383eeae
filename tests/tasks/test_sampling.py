"""Every sampling option: reproducible by seed, and doing what it says."""

from __future__ import annotations

import numpy as np
import pytest

from service.tasks import sampling
from service.tasks.sampling import (
    Choice,
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    draw,
    filter_top_k,
    filter_top_p,
    kth_largest,
    log_softmax,
    top_logprobs,
)

LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1]))  # token 1 most likely, then 2, 3, 4, 0


def draws(params: SamplingParams, n: int = 200, previous: tuple[int, ...] = ()) -> list[int]:
    sampler = Sampler(params)
    return [sampler.choose(LOGITS, previous).token_id for _ in range(n)]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=1),
        SamplingParams(temperature=0.7, seed=2),
        SamplingParams(top_k=3, seed=3),
        SamplingParams(top_p=0.8, seed=4),
        SamplingParams(repetition_penalty=1.5, seed=5),
        SamplingParams(temperature=1.3, top_k=4, top_p=0.9, repetition_penalty=1.2, seed=6),
    ],
)
def test_same_seed_same_tokens_other_seed_other_tokens(params: SamplingParams) -> None:
    assert draws(params, previous=(1,)) == draws(params, previous=(1,))
    other = SamplingParams(**{**params.__dict__, "seed": (params.seed or 0) + 100})
    assert draws(params, previous=(1,)) != draws(other, previous=(1,))


def test_greedy_and_top_k_1_pick_the_argmax() -> None:
    assert set(draws(SamplingParams(temperature=0.0), 20)) == {1}
    assert set(draws(SamplingParams(top_k=1, temperature=5.0, seed=0), 50)) == {1}


def test_top_k_only_draws_from_the_k_best() -> None:
    assert set(draws(SamplingParams(top_k=2, seed=0), 300)) == {1, 2}
    assert filter_top_k(LOGITS, 3)[[0, 4]].tolist() == [-np.inf, -np.inf]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # 0.4 + 0.3 = 0.7 < 0.75, so 0.15 is needed too: tokens 1, 2, 3
    kept = np.isfinite(filter_top_p(LOGITS, 0.75))
    assert kept.tolist() == [False, True, True, True, False]
    assert np.isfinite(filter_top_p(LOGITS, 0.01)).sum() == 1  # the best token always stays
    assert set(draws(SamplingParams(top_p=0.75, seed=0), 300)) == {1, 2, 3}


def test_temperature_sharpens_and_flattens() -> None:
    cold = np.mean(np.array(draws(SamplingParams(temperature=0.3, seed=0), 2000)) == 1)
    normal = np.mean(np.array(draws(SamplingParams(temperature=1.0, seed=0), 2000)) == 1)
    hot = np.mean(np.array(draws(SamplingParams(temperature=3.0, seed=0), 2000)) == 1)
    assert cold > normal > hot
    assert abs(normal - 0.4) < 0.05  # temperature 1 samples the model's own distribution


def test_repetition_penalty_discourages_seen_tokens() -> None:
    penalised = apply_repetition_penalty(np.array([2.0, -2.0, 1.0]), [0, 1], 2.0)
    assert penalised.tolist() == [1.0, -4.0, 1.0]
    # greedy with a strong penalty on the favourite picks the runner-up
    assert set(draws(SamplingParams(temperature=0.0, repetition_penalty=10.0), 5, (1,))) == {2}


def test_banned_tokens_are_never_drawn_and_logprob_is_the_models() -> None:
    sampler = Sampler(SamplingParams(seed=0, top_p=0.9), banned=[1], top_logprobs=2)
    choices = [sampler.choose(LOGITS) for _ in range(300)]
    assert 1 not in {c.token_id for c in choices}
    # the model's own distribution, banned token included: not renormalised, not reshaped
    expected = log_softmax(LOGITS)
    assert all(abs(c.logprob - expected[c.token_id]) < 1e-12 for c in choices)
    assert choices[0].top == ((2, expected[2]), (3, expected[3]))  # banned 1 is not listed
    assert Choice.scored(expected, 1, 2, np.array([1])) == Choice(1, expected[1], choices[0].top)


def nucleus_by_sorting(logits: np.ndarray, p: float) -> np.ndarray:
    """top-p by definition: every token sorted (ties by id), kept while the mass before it < p."""
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(log_softmax(logits[order]))
    keep = np.zeros(logits.shape, dtype=bool)
    keep[order] = (np.cumsum(probs) - probs) < p
    return np.where(keep, logits, -np.inf)


@pytest.mark.parametrize("candidates", [1, 4, sampling.TOP_P_CANDIDATES])
def test_top_p_among_candidates_is_the_sorted_definition(
    candidates: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nucleus found among the most likely tokens (growing the candidates while they hold
    too little) is the one sorting the whole vocabulary finds: flat and peaked distributions,
    ties (at the candidates' edge too) and tokens already filtered out (-inf)."""
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", candidates)
    source = np.random.default_rng(2)
    for _ in range(200):
        size = int(source.integers(2, 3000))
        logits = source.normal(size=size) * source.uniform(0.05, 8)
        if source.random() < 0.5:
            logits = np.round(logits, 1)  # many ties
        if source.random() < 0.3:
            logits[source.integers(0, size, size=size // 2)] = -np.inf
        p = float(source.choice([0.01, 0.3, 0.9, 0.95, 0.999, source.uniform(0.01, 1)]))
        got, want = filter_top_p(logits, p), nucleus_by_sorting(logits, p)
        assert (np.isfinite(got) == np.isfinite(want)).all()


def test_kth_largest_and_top_logprobs_are_their_definitions() -> None:
    """The k-th largest found among the blocks' maxima is np.partition's, and the k most likely
    tokens are the sorted definition's (best first, ties by id, never -inf): sizes around the
    block, many ties, mostly -inf, NaN, small and large k."""
    source = np.random.default_rng(4)
    for trial in range(3000):
        size = int(source.integers(1, 3 * sampling.KTH_BLOCK**2 // 8))
        values = source.normal(size=size).astype(source.choice([np.float32, np.float64]))
        if trial % 4 == 1:
            values = np.round(values * 2) / 2  # many ties
        if trial % 4 == 2:
            values[source.random(size) < source.choice([0.5, 0.97])] = -np.inf
        if trial % 50 == 3:
            values[source.integers(0, size)] = np.nan
        k = int(source.integers(1, min(size, 40) + 1 if trial % 3 else size + 1))
        want = np.partition(values, -k)[-k]
        got = kth_largest(values, k)
        assert got == want or (np.isnan(got) and np.isnan(want)), (trial, got, want)
        finite = [(-float(values[i]), i) for i in range(size) if np.isfinite(values[i])]
        expected = tuple((i, -v) for v, i in sorted(finite)[:k])
        assert top_logprobs(values, k) == expected, trial
    # a NaN inside a block: np.partition counts it among the largest
    values = np.arange(1000.0)
    values[5] = np.nan
    for k in (1, 2, 3):
        got, want = kth_largest(values, k), np.partition(values, -k)[-k]
        assert got == want or (np.isnan(got) and np.isnan(want)), (k, got, want)


def drawn_by_definition(
    logits: np.ndarray, params: SamplingParams, banned: list[int], rng: np.random.Generator
) -> int:
    """The token by the definition: every filter over the whole vocabulary, then numpy's
    choice with the probabilities that are left."""
    shaped = logits.astype(np.float64)
    shaped[banned] = -np.inf
    shaped = filter_top_p(filter_top_k(shaped / params.temperature, params.top_k), params.top_p)
    probs = np.exp(shaped - shaped.max())
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def test_a_draw_among_the_kept_tokens_is_the_draw_among_all() -> None:
    """The sampler draws among the tokens top-k and top-p keep only: the same tokens, for the
    same seed, as drawing from the whole vocabulary with the others at probability 0."""
    source = np.random.default_rng(3)
    settings = [
        {"top_k": 40}, {"top_p": 0.9}, {"top_p": 0.95, "temperature": 0.7},
        {"top_k": 50, "top_p": 0.8, "temperature": 1.3}, {"top_k": 1000, "top_p": 0.999},
        {"top_k": 3}, {"top_p": 0.001},
    ]  # fmt: skip
    for i, options in enumerate(settings):
        params = SamplingParams(seed=i, **options)  # type: ignore[arg-type]
        sampler, reference = Sampler(params, banned=[7]), np.random.default_rng(i)
        for _ in range(40):
            logits = (source.normal(size=8000) * source.uniform(1, 6)).astype(np.float32)
            logits[7] = logits.max() + 5  # banned: never drawn, however likely
            want = drawn_by_definition(logits, params, [7], reference)
            assert sampler.choose(logits).token_id == want != 7


def test_invalid_parameters_are_refused() -> None:
    for bad in ({"temperature": -1}, {"top_k": -1}, {"top_p": 0}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # type: ignore[arg-type]


def test_draw_is_numpys_choice_without_the_checks() -> None:
    """Same generator state, same index as rng.choice(p=...): seeds keep their texts."""
    source = np.random.default_rng(0)
    for seed in range(50):
        logits = source.normal(size=int(source.integers(2, 9000))) * source.uniform(0.1, 10)
        probs = np.exp(log_softmax(logits))
        ours, numpys = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(10):
            assert draw(ours, probs) == int(numpys.choice(probs.shape[-1], p=probs))
    with pytest.raises(ValueError, match="not finite"):
        draw(np.random.default_rng(0), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="not finite"):
        draw(np.random.default_rng(0), np.full(5000, np.nan))


@pytest.mark.parametrize("margin", [0.0, sampling.DRAW_MARGIN, 1.0])
def test_draw_by_blocks_is_numpys_choice(margin: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block-summed draw (unnormalised weights, zeros and all) finds numpy's index whether
    it never (margin 0), rarely or always (margin 1) falls back to numpy's own sum."""
    monkeypatch.setattr(sampling, "DRAW_MARGIN", margin)
    source = np.random.default_rng(1)
    for seed in range(60):
        size = int(source.integers(2, 20000))
        weights = np.exp(source.normal(size=size) * source.uniform(0.1, 12))
        weights[source.integers(0, size, size=size // 3)] = 0.0  # banned or filtered out
        if seed % 5 == 0:  # one token holds nearly everything
            weights[source.integers(0, size)] = 1e12
        ours, numpys = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(10):
            want = int(numpys.choice(size, p=weights / weights.sum()))
            assert draw(ours, weights) == want
            assert weights[want] > 0
