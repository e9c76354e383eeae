"""Vision transformer (Dosovitskiy et al. 2020): the image cut into patches, each patch a token,
a learned class token in front, pre-norm transformer encoder blocks, the class token's final state
through a linear head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class ViTConfig:
    image_size: int = 28  # input is (B, channels, image_size, image_size)
    channels: int = 1
    num_classes: int = 10
    patch: int = 7  # side of the square patches; 7 gives 4 x 4 = 16 tokens on 28 x 28
    dim: int = 64  # token width
    layers: int = 4  # encoder blocks
    heads: int = 4  # attention heads; the head size is dim // heads
    mlp_ratio: int = 2  # hidden width of each block's MLP, as a multiple of dim
    dropout: float = 0.1  # on attention weights, block outputs and before the head


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        assert config.dim % config.heads == 0, "dim must be a multiple of heads"
        self.heads, self.head_dim = config.heads, config.dim // config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.attention_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, T, head_dim)
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, heads, T, T)
        weights = self.attention_dropout(F.softmax(weights, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class EncoderBlock(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)): pre-norm, as in the ViT paper."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.dim)
        self.attention = SelfAttention(config)
        self.norm_2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, config.mlp_ratio * config.dim),
            nn.GELU(),
            nn.Linear(config.mlp_ratio * config.dim, config.dim),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_1(x)))
        return x + self.dropout(self.mlp(self.norm_2(x)))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        assert config.image_size % config.patch == 0, "the patch size must divide the image size"
        assert 0 <= config.dropout < 1, f"dropout must be in [0, 1), got {config.dropout}"
        self.config = config
        tokens = (config.image_size // config.patch) ** 2
        # A strided convolution is a linear map of each flattened patch: the patch embedding.
        self.patch_embedding = nn.Conv2d(
            config.channels, config.dim, kernel_size=config.patch, stride=config.patch
        )
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.positions = nn.Parameter(torch.randn(1, tokens + 1, config.dim) * 0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(*(EncoderBlock(config) for _ in range(config.layers)))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(image)  # (B, C, H, W) -> (B, dim, H/p, W/p)
        x = patches.flatten(2).transpose(1, 2)  # (B, T, dim), patches in row-major order
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = self.dropout(torch.cat([cls, x], dim=1) + self.positions)  # (B, T + 1, dim)
        x = self.norm(self.blocks(x))
        return self.head(self.dropout(x[:, 0]))  # the class token's state -> (B, classes) logits
