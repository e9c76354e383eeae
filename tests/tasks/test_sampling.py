"""Every sampling option: reproducible by seed, and doing what it says."""

from __future__ import annotations

import numpy as np
import pytest

from service.tasks.sampling import (
    Choice,
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    draw,
    filter_top_k,
    filter_top_p,
    log_softmax,
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
