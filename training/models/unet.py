"""A small class-conditional U-Net that predicts the noise added to a 28x28 image (DDPM).

28x28 -> 14x14 -> 7x7 and back, one residual block per level on the way down and up. The
timestep (sinusoidal) and class embeddings are added together and injected into every block.
Optionally, self-attention over the 49 positions at 7x7 lets the middle see the whole digit
(cheap there; it would cost 256x more at 28x28). Class index `num_classes` is the null label used
for classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    image_channels: int = 1
    # width at 28x28, 14x14 and 7x7: narrow at full resolution, where convolutions cost most
    # (0.15 s per training step at batch 64 on one core; (32, 64, 128) took 0.38 s)
    channels: tuple[int, int, int] = (16, 32, 64)
    embedding_dim: int = 64  # timestep + class embedding width
    num_classes: int = 10  # the null label is index num_classes
    groups: int = 8  # GroupNorm groups
    attention_heads: int = 0  # self-attention heads between the two 7x7 blocks (0 = none)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim), as in the Transformer/DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]  # the same shift at every pixel
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        assert channels % heads == 0, f"{channels} channels do not split into {heads} heads"
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, height * width)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, d, HW) each
        weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(c // self.heads), dim=-1)
        h = (v @ weights.transpose(-1, -2)).reshape(b, c, height, width)  # (B, C, H, W)
        return x + self.proj(h)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        e, g = config.embedding_dim, config.groups
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.label_embedding = nn.Embedding(config.num_classes + 1, e)
        self.conv_in = nn.Conv2d(config.image_channels, c1, 3, padding=1)
        self.down1 = ResBlock(c1, c1, e, g)  # 28x28
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)  # -> 14x14
        self.down2 = ResBlock(c1, c2, e, g)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)  # -> 7x7
        self.mid1 = ResBlock(c2, c3, e, g)
        heads = config.attention_heads
        self.attention = SelfAttention(c3, heads, g) if heads > 0 else nn.Identity()
        self.mid2 = ResBlock(c3, c3, e, g)
        self.up2 = ResBlock(c3 + c2, c2, e, g)  # 14x14, after upsampling and the skip
        self.up1 = ResBlock(c2 + c1, c1, e, g)  # 28x28
        self.norm_out = nn.GroupNorm(g, c1)
        self.conv_out = nn.Conv2d(c1, config.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start by predicting zero noise: a stable first step
        assert self.conv_out.bias is not None
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x: (B, C, 28, 28) noisy image, t: (B,) int64 timestep, label: (B,) int64 -> (B, C, 28, 28)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.embedding_dim))
        emb = emb + self.label_embedding(label)  # (B, E)
        h1 = self.down1(self.conv_in(x), emb)  # (B, c1, 28, 28)
        h2 = self.down2(self.pool1(h1), emb)  # (B, c2, 14, 14)
        h = self.attention(self.mid1(self.pool2(h2), emb))  # (B, c3, 7, 7)
        h = self.mid2(h, emb)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, c3, 14, 14)
        h = self.up2(torch.cat([h, h2], dim=1), emb)  # (B, c2, 14, 14)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, c2, 28, 28)
        h = self.up1(torch.cat([h, h1], dim=1), emb)  # (B, c1, 28, 28)
        return self.conv_out(F.silu(self.norm_out(h)))
