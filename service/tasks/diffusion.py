"""DDPM noise schedules and the DDIM / DDPM sampling loop, in numpy (no torch).

Training (torch) and the service (onnxruntime) both build the schedule with `alphas_cumprod`
from the parameters stored in config.json, so the two can never disagree.

Notation (Ho et al. 2020; Song et al. 2021): timesteps are indices 0..T-1, `abar[t]` is the
product of (1 - beta) up to and including t, and x_t = sqrt(abar[t]) x_0 + sqrt(1 - abar[t]) eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

SAMPLERS = ("ddim", "ddpm")

# predicts the noise in `x` at timesteps `t` (one per row); labels are one per row too
NoisePredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def alphas_cumprod(schedule: Mapping[str, Any]) -> np.ndarray:
    """abar[t] for t = 0..T-1 (float64) from config.json's `schedule` section.

    linear: betas evenly spaced from beta_start to beta_end (Ho et al. 2020).
    cosine: abar follows cos^2 of (t/T + s) / (1 + s), betas capped at max_beta (Nichol &
    Dhariwal 2021); it destroys less information early on, which matters for 28x28 images.
    """
    kind, steps = schedule["type"], int(schedule["timesteps"])
    assert steps >= 1, f"timesteps must be >= 1, got {steps}"
    if kind == "linear":
        betas = np.linspace(float(schedule["beta_start"]), float(schedule["beta_end"]), steps)
    elif kind == "cosine":
        s, max_beta = float(schedule.get("s", 0.008)), float(schedule.get("max_beta", 0.999))
        f = (
            np.cos((np.arange(steps + 1, dtype=np.float64) / steps + s) / (1 + s) * math.pi / 2)
            ** 2
        )
        betas = np.minimum(1 - f[1:] / f[:-1], max_beta)
    else:
        raise ValueError(f"unknown noise schedule {kind!r} (known: linear, cosine)")
    return np.cumprod(1.0 - betas)


def sampling_timesteps(total: int, steps: int) -> np.ndarray:
    """`steps` timesteps from T-1 down to 0, evenly spaced; steps == T gives every timestep.

    Always starts at T-1 (the chain starts from pure noise) and, from two steps on, ends at 0.
    """
    assert 1 <= steps <= total, f"steps must be in [1, {total}], got {steps}"
    return np.linspace(total - 1, 0, steps).round().astype(np.int64)


def guided_noise(
    predict: NoisePredictor,
    x: np.ndarray,
    t: int,
    labels: np.ndarray,
    null_label: int,
    guidance: float,
) -> np.ndarray:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one model call.

    w = 1 is the plain conditional model and w = 0 the unconditional one: each needs one half only.
    """
    n = len(x)
    if guidance == 1.0:
        return predict(x, np.full(n, t, dtype=np.int64), labels)
    null = np.full(n, null_label, dtype=np.int64)
    if guidance == 0.0:
        return predict(x, np.full(n, t, dtype=np.int64), null)
    both = predict(
        np.concatenate([x, x]), np.full(2 * n, t, dtype=np.int64), np.concatenate([labels, null])
    )
    conditional, unconditional = both[:n], both[n:]
    return unconditional + guidance * (conditional - unconditional)


def denoise(
    predict: NoisePredictor,
    noise: np.ndarray,
    labels: np.ndarray,
    abar: np.ndarray,
    steps: int,
    sampler: str,
    guidance: float,
    null_label: int,
    rng: np.random.Generator,
    clip: float | None,
) -> Iterator[np.ndarray]:
    """Run the reverse process from `noise` (= x_T); yield x after every step (the last is x_0).

    DDIM with eta = 0 is deterministic given x_T. "ddpm" is the same update with eta = 1, which is
    exactly ancestral DDPM sampling with the posterior variance (beta tilde) over the chosen
    timesteps; with steps == T it is the sampler of Ho et al. `clip` bounds the predicted x_0 (the
    data range), after which the noise is re-derived from it so the two stay consistent.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    eta = 1.0 if sampler == "ddpm" else 0.0
    timesteps = sampling_timesteps(len(abar), steps)
    x: np.ndarray = noise.astype(np.float32)
    for i, t in enumerate(timesteps):
        a = float(abar[t])
        a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        eps = guided_noise(predict, x, int(t), labels, null_label, guidance)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip is not None:
            x0 = np.clip(x0, -clip, clip)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
        x = x.astype(np.float32)
        yield x
