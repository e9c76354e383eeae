"""The numpy diffusion schedule and sampling loop the service runs (service/tasks/diffusion.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.tasks.diffusion import alphas_cumprod, denoise, guided_noise, sampling_timesteps

LINEAR = {"type": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
COSINE = {"type": "cosine", "timesteps": 1000, "s": 0.008, "max_beta": 0.999}


@pytest.mark.parametrize("schedule", [LINEAR, COSINE])
def test_alphas_cumprod_fall_monotonically_from_one_to_almost_zero(schedule) -> None:
    abar = alphas_cumprod(schedule)
    assert abar.shape == (1000,)
    assert np.all(np.diff(abar) < 0), "abar must strictly decrease"
    assert 0.99 < abar[0] < 1.0 and 0.0 < abar[-1] < 1e-3


def test_linear_schedule_matches_its_definition() -> None:
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(alphas_cumprod(LINEAR), np.cumprod(1 - betas), rtol=1e-12)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown noise schedule"):
        alphas_cumprod({"type": "sigmoid", "timesteps": 10})


@pytest.mark.parametrize("steps", [1, 2, 10, 50, 999, 1000])
def test_sampling_timesteps_descend_from_the_last_timestep(steps: int) -> None:
    t = sampling_timesteps(1000, steps)
    assert len(t) == steps and t[0] == 999 and np.all(np.diff(t) < 0)
    if steps > 1:
        assert t[-1] == 0
    if steps == 1000:
        np.testing.assert_array_equal(t, np.arange(999, -1, -1))


def oracle(target: np.ndarray, abar: np.ndarray):
    """The exact noise predictor when the data distribution is the single point `target`."""

    def predict(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        a = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        return ((x - np.sqrt(a) * target) / np.sqrt(1 - a)).astype(np.float32)

    return predict


@pytest.mark.parametrize("steps", [1, 5, 100])
def test_ddim_with_a_perfect_denoiser_lands_on_the_data(steps: int) -> None:
    abar = alphas_cumprod(COSINE)
    target = np.linspace(-0.9, 0.9, 12, dtype=np.float32).reshape(3, 4)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 4), dtype=np.float32)
    *_, x0 = denoise(
        oracle(target, abar), noise, np.zeros(3, np.int64), abar, steps, "ddim", 1.0, 10, rng, 1.0
    )
    np.testing.assert_allclose(x0, target, atol=2e-3)  # float32 cancellation at t = T-1


def test_ddpm_with_a_perfect_denoiser_lands_on_the_data_too() -> None:
    abar = alphas_cumprod(LINEAR)
    target = np.full((2, 3), 0.25, dtype=np.float32)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((2, 3), dtype=np.float32)
    *_, x0 = denoise(
        oracle(target, abar), noise, np.zeros(2, np.int64), abar, 1000, "ddpm", 1.0, 10, rng, None
    )
    np.testing.assert_allclose(x0, target, atol=1e-3)


def test_ddim_is_deterministic_and_ddpm_draws_noise() -> None:
    abar = alphas_cumprod(COSINE)
    noise = np.random.default_rng(0).standard_normal((4, 3), dtype=np.float32)

    def model(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return 0.3 * x + 0.01 * labels[:, None]

    def run(sampler: str, seed: int) -> np.ndarray:
        labels = np.arange(4, dtype=np.int64)
        rng = np.random.default_rng(seed)
        return list(denoise(model, noise, labels, abar, 20, sampler, 2.0, 10, rng, 1.0))[-1]

    np.testing.assert_array_equal(run("ddim", 0), run("ddim", 99))  # eta = 0: no noise drawn
    np.testing.assert_array_equal(run("ddpm", 0), run("ddpm", 0))
    assert not np.array_equal(run("ddpm", 0), run("ddpm", 1))


def test_guidance_batches_both_halves_into_one_call() -> None:
    calls: list[np.ndarray] = []

    def model(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        calls.append(labels)
        return np.where(labels[:, None] == 10, 1.0, 3.0).astype(np.float32) * np.ones_like(x)

    x = np.zeros((2, 5), dtype=np.float32)
    labels = np.array([4, 7], dtype=np.int64)
    eps = guided_noise(model, x, 500, labels, 10, guidance=2.5)
    assert len(calls) == 1 and list(calls[0]) == [4, 7, 10, 10]
    np.testing.assert_allclose(eps, 1.0 + 2.5 * (3.0 - 1.0))
    calls.clear()
    np.testing.assert_allclose(guided_noise(model, x, 500, labels, 10, guidance=1.0), 3.0)
    assert list(calls[0]) == [4, 7], "guidance 1 is the conditional model alone"
    assert math.isclose(float(guided_noise(model, x, 500, labels, 10, guidance=0.0)[0, 0]), 1.0)
