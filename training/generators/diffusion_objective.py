"""What a denoiser is trained to predict, and the noise-predicting graph every version exports.

- "epsilon" (Ho et al. 2020): the noise added, eps. Its x_0 estimate (x_t - sqrt(1 - abar) eps) /
  sqrt(abar) multiplies any error by 1 / sqrt(abar), ~20,000 at the cosine schedule's last step.
- "v" (Salimans & Ho 2022): v = sqrt(abar) eps - sqrt(1 - abar) x_0. Its MSE weighs the x_0 error
  by SNR + 1, so the high-noise steps, where an eps-trained net's x_0 is poorest, get a usable
  signal; x_0 = sqrt(abar) x_t - sqrt(1 - abar) v has no division.

Whatever the network was trained on, the exported graph outputs eps (config.json's
`"prediction": "epsilon"`): a v-network is wrapped in `NoiseFromVelocity`, which converts with the
schedule's abar inside the graph. The service's sampler, the config and the versions already
shipped stay as they are, whichever objective a version was trained with.
"""

from __future__ import annotations

import torch
from torch import nn

PREDICTIONS = ("epsilon", "v")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r} (known: {', '.join(PREDICTIONS)})")


def training_target(
    prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor
) -> torch.Tensor:
    """The regression target for x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; abar_t broadcasts."""
    check_prediction(prediction)
    if prediction == "epsilon":
        return noise
    return abar_t.sqrt() * noise - (1 - abar_t).sqrt() * x0


class NoiseFromVelocity(nn.Module):
    """A v-predicting denoiser as a noise predictor: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""

    sqrt_abar: torch.Tensor  # (T,) buffers, exported as constants of the graph
    sqrt_one_minus_abar: torch.Tensor

    def __init__(self, velocity: nn.Module, abar: torch.Tensor) -> None:
        super().__init__()
        self.velocity = velocity
        self.register_buffer("sqrt_abar", abar.float().sqrt())
        self.register_buffer("sqrt_one_minus_abar", (1 - abar).float().sqrt())

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        v = self.velocity(x, t, label)  # (B, ...) like x
        shape = (-1,) + (1,) * (x.dim() - 1)  # abar_t broadcast over each sample's axes
        a, b = self.sqrt_abar[t].view(shape), self.sqrt_one_minus_abar[t].view(shape)
        return a * v + b * x


def noise_predictor(model: nn.Module, prediction: str, abar: torch.Tensor) -> nn.Module:
    """The module to export: `model` itself for "epsilon", wrapped for "v"."""
    check_prediction(prediction)
    return model if prediction == "epsilon" else NoiseFromVelocity(model, abar).eval()
