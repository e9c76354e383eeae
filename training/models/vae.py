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
    blocks: int = 0  # residual 3x3 conv blocks at each of the decoder's resolutions (7, 14)


class ResidualBlock(nn.Module):
    """x + conv(SiLU(conv(SiLU(x)))): detail the transposed convolutions alone blur away."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


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
            *[ResidualBlock(c2) for _ in range(config.blocks)],
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
            nn.SiLU(),
            *[ResidualBlock(c1) for _ in range(config.blocks)],
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


class ClassPrior(nn.Module):
    """A Gaussian per class over the latents: z = mean[label] + cholesky[label] @ noise, with
    noise ~ N(0, I). Fitted to the encoder's posterior means of the training images
    (`fit_class_prior`): ex-post density estimation (Ghosh et al. 2020, "From Variational to
    Deterministic Autoencoders"), which samples where the decoder was trained to decode when
    N(0, I) fits the aggregate posterior badly (a KL weight below 1)."""

    def __init__(self, means: torch.Tensor, cholesky: torch.Tensor) -> None:
        super().__init__()
        self.means: torch.Tensor
        self.cholesky: torch.Tensor
        self.register_buffer("means", means)  # (classes, latent_dim)
        self.register_buffer("cholesky", cholesky)  # (classes, latent_dim, latent_dim)

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim), (B,) -> latents (B, latent_dim) of the labels' classes."""
        spread = torch.matmul(self.cholesky[label], noise.unsqueeze(-1)).squeeze(-1)
        return self.means[label] + spread


@torch.no_grad()
def fit_class_prior(
    encoder: VAEEncoder, images: torch.Tensor, labels: torch.Tensor, classes: int
) -> ClassPrior:
    """Mean and full covariance (plus 1e-4 on the diagonal) of the posterior means per class;
    images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    means = torch.cat(
        [encoder(images[i : i + 1000], labels[i : i + 1000])[0] for i in range(0, len(images), 1000)]
    ).double()
    centres, factors = [], []
    for c in range(classes):
        z = means[labels == c]
        covariance = torch.cov(z.T) + 1e-4 * torch.eye(z.shape[1], dtype=z.dtype)
        centres.append(z.mean(0))
        factors.append(torch.linalg.cholesky(covariance))
    return ClassPrior(torch.stack(centres).float(), torch.stack(factors).float())
