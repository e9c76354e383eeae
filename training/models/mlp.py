"""Multi-layer perceptron: flattened pixels through Linear + ReLU (+ dropout) hidden layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MLPConfig:
    image_size: int = 28  # input is (B, channels, image_size, image_size)
    channels: int = 1
    num_classes: int = 10
    hidden: tuple[int, ...] = (512, 256)  # width of each hidden layer
    dropout: float = 0.2  # after each hidden ReLU; 0 turns it off


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        assert config.hidden, "an MLP needs at least one hidden layer (use logreg for none)"
        assert 0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"
        self.config = config
        layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
        width = config.channels * config.image_size**2
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)  # (B, C, H, W) -> (B, classes) logits
