"""Multinomial logistic regression: one linear layer on the flattened pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LogRegConfig:
    image_size: int = 28  # input is (B, channels, image_size, image_size)
    channels: int = 1
    num_classes: int = 10


class LogisticRegression(nn.Module):
    def __init__(self, config: LogRegConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.channels * config.image_size**2, config.num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.linear(image.flatten(1))  # (B, C, H, W) -> (B, C*H*W) -> (B, classes) logits
