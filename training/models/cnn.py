"""Convolutional network: [conv3x3 + batchnorm + ReLU] x n + maxpool blocks, then an MLP head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CNNConfig:
    image_size: int = 28  # input is (B, channels, image_size, image_size)
    channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # output channels of each block; each halves H and W
    convs_per_block: int = 1  # conv + batchnorm + ReLU layers before each pooling
    hidden: int = 128  # width of the head's hidden layer; 0 for a linear head
    dropout: float = 0.25  # before each linear layer of the head; 0 turns it off


def conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        conv_in = in_channels if i == 0 else out_channels
        # no conv bias: the batchnorm right after has its own shift
        layers.append(nn.Conv2d(conv_in, out_channels, 3, padding=1, bias=False))
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU()]
    layers.append(nn.MaxPool2d(2))  # floor: 28 -> 14 -> 7 -> 3
    return nn.Sequential(*layers)


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        assert config.widths, "a CNN needs at least one conv block"
        assert config.image_size >> len(config.widths) >= 1, "too many blocks for the image size"
        assert 0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"
        self.config = config
        blocks, in_channels = [], config.channels
        for width in config.widths:
            blocks.append(conv_block(in_channels, width, config.convs_per_block))
            in_channels = width
        self.features = nn.Sequential(*blocks)
        side = config.image_size >> len(config.widths)
        head: list[nn.Module] = [nn.Flatten(), nn.Dropout(config.dropout)]
        width = config.widths[-1] * side * side
        if config.hidden:
            head += [nn.Linear(width, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = config.hidden
        head.append(nn.Linear(width, config.num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(image)  # (B, C, H, W) -> (B, widths[-1], H >> blocks, W >> blocks)
        return self.head(features)  # (B, classes) logits
