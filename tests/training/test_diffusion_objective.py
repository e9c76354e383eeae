"""Training targets of the diffusion denoisers, and the eps graph a v-trained net is exported as
(training/generators/diffusion_objective.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.tasks.diffusion import alphas_cumprod
from training.generators.diffusion_objective import (
    NoiseFromVelocity,
    noise_predictor,
    training_target,
)

ABAR = torch.tensor(
    alphas_cumprod({"type": "cosine", "timesteps": 1000, "s": 0.008, "max_beta": 0.999})
)


class OracleVelocity(nn.Module):
    """The exact v for data that is the single image `x0`: v = (sqrt(abar) x_t - x0) / sqrt(1 - abar)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        a = ABAR[t].view(-1, 1, 1, 1)  # float64, like x0: the oracle itself is exact
        return ((a.sqrt() * x.double() - self.x0) / (1 - a).sqrt()).float()


def noised(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 1, 28, 28, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    a = ABAR[t].view(-1, 1, 1, 1)
    return x0, noise, a, a.sqrt() * x0 + (1 - a).sqrt() * noise


def test_epsilon_target_is_the_noise() -> None:
    x0, noise, a, _ = noised(torch.tensor([0, 500, 999]))
    assert torch.equal(training_target("epsilon", x0, noise, a), noise)


def test_v_target_gives_back_the_image_and_the_noise() -> None:
    x0, noise, a, x_t = noised(torch.tensor([0, 250, 500, 999]))
    v = training_target("v", x0, noise, a)
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0)
    torch.testing.assert_close(a.sqrt() * v + (1 - a).sqrt() * x_t, noise)


def test_a_v_network_is_exported_as_a_noise_predictor() -> None:
    t = torch.tensor([0, 1, 300, 700, 998, 999])
    x0, noise, _, x_t = noised(t)
    graph = noise_predictor(OracleVelocity(x0), "v", ABAR)
    assert isinstance(graph, NoiseFromVelocity)
    eps = graph(x_t.float(), t, torch.zeros(len(t), dtype=torch.int64))
    torch.testing.assert_close(eps, noise.float(), atol=1e-3, rtol=1e-3)


def test_an_epsilon_network_is_exported_as_it_is() -> None:
    net = nn.Identity()
    assert noise_predictor(net, "epsilon", ABAR) is net


def test_an_unknown_prediction_is_refused() -> None:
    x0, noise, a, _ = noised(torch.tensor([3]))
    with pytest.raises(ValueError, match="unknown prediction"):
        training_target("x0", x0, noise, a)
