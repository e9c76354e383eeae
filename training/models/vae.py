"""A class-conditional convolutional VAE (Kingma & Welling 2014) for 28x28 grayscale images.

The encoder maps (image, label) to the mean and log-variance of q(z | x, y); the decoder maps
(z, label) to pixel probabilities. Both are exported: the decoder is the generator the service
samples from N(0, I), the encoder serves reconstructions and the latents of latent diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VAEConfig:
    latent_dim: int = 16  # size of z
    channels: tuple[int, int] = (32, 64)  # conv widths at 14x14 and 7x7
    hidden: int = 256  # width of the fully connected layer on each side
    label_dim: int = 16  # class embedding size, concatenated to features / latents
    num_classes: int = 10


class VAEEncoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),  # 28 -> 14
            nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
            nn.SiLU(),
            nn.Flatten(),
        )
        self.label_embedding = nn.Embedding(config.num_classes, config.label_dim)
        self.fc = nn.Sequential(
            nn.Linear(c2 * 7 * 7 + config.label_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),
        )

    def forward(
        self, image: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (B, 1, 28, 28) in [0, 1], label: (B,) -> mean, log_variance: (B, latent_dim) each."""
        features = torch.cat([self.convs(image), self.label_embedding(label)], dim=1)
        mean, log_variance = self.fc(features).chunk(2, dim=1)
        return mean, log_variance


class VAEDecoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        self.label_embedding = nn.Embedding(config.num_classes, config.label_dim)
        self.fc = nn.Sequential(
            nn.Linear(config.latent_dim + config.label_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, c2 * 7 * 7),
            nn.SiLU(),
            nn.Unflatten(1, (c2, 7, 7)),
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
            nn.SiLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # 14 -> 28
        )

    def logits(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim), (B,) -> per-pixel Bernoulli logits (B, 1, 28, 28)."""
        return self.deconvs(self.fc(torch.cat([latent, self.label_embedding(label)], dim=1)))

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The exported graph: pixel intensities in [0, 1], (B, 1, 28, 28)."""
        return torch.sigmoid(self.logits(latent, label))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = VAEDecoder(config)

    def loss(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative ELBO terms per image, in nats: (reconstruction, KL), each averaged over B."""
        mean, log_variance = self.encoder(image, label)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)  # reparameterisation
        logits = self.decoder.logits(z, label)
        # Bernoulli likelihood of the [0, 1] intensities, summed over the 784 pixels
        reconstruction = F.binary_cross_entropy_with_logits(logits, image, reduction="sum") / len(
            image
        )
        kl = -0.5 * torch.sum(1 + log_variance - mean.pow(2) - log_variance.exp()) / len(image)
        return reconstruction, kl
