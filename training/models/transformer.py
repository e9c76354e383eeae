"""Decoder-only Transformer (GPT): pre-norm blocks of causal self-attention and an MLP.

Attention is written by hand (no nn.MultiheadAttention, no scaled_dot_product_attention) so the
same code serves training and a key/value-cache step graph: `step` takes per-layer past keys and
values (B, heads, past, head_dim) and returns them with the new tokens appended. Positions and
the causal mask are built from the past length, so one graph handles a prompt (past 0) and each
later token. Learned position embeddings cap the context at `block_size` tokens (config.json
says so as "max_length"; the service re-reads the last tokens when a text gets longer).

The exported step graph also takes an `attention_mask` (B, past + new), 1 for a real token and
0 for padding, so sequences whose caches differ in length share one call: each cache is padded
at the start, a token's position is the number of real tokens before it (cumsum - 1), and
padded keys are never attended. Training and the full graph pass no mask (all real).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.lm_common import BATCH, PAST, StateSpec, TiedHead


@dataclass
class TransformerConfig:
    vocab_size: int = 10000  # set from the tokenizer
    block_size: int = 128  # longest context (learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # model width; head size is n_embd // n_head
    dropout: float = 0.1
    tie_embeddings: bool = True  # output layer reuses the token embedding matrix
    adaptive_cutoffs: tuple[int, ...] = (2000, 5000)  # adaptive softmax clusters; () = full


def columns(new: int, total: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Query columns (T, 1) and key columns (1, P+T): query t sits at column total - new + t."""
    query_pos = torch.arange(new, device=device).unsqueeze(1) + (total - new)  # (T, 1)
    key_pos = torch.arange(total, device=device).unsqueeze(0)  # (1, P+T)
    return query_pos, key_pos


def padding_visibility(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(B, 1, T, P+T) bool from a (B, P+T) mask: causal, and padded keys hidden.

    A padded query (the start of a left-padded prompt) still sees itself, so no softmax row is
    all -inf (NaN); its output is never read and its key is hidden from every real query."""
    query_pos, key_pos = columns(new, attention_mask.shape[1], attention_mask.device)
    real = (attention_mask > 0).unsqueeze(1)  # (B, 1, P+T)
    visible = ((key_pos < query_pos) & real) | (key_pos == query_pos)  # (B, T, P+T)
    return visible.unsqueeze(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_drop = nn.Dropout(config.dropout)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        visible: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C), past (B, nh, P, hd) -> y (B, T, C), present k and v (B, nh, P+T, hd).

        `visible` (B, 1, T, P+T) says which keys each query may attend to (padding); without it
        every key up to the query's own column is visible (causal)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = torch.cat([past_k, k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)], dim=2)
        v = torch.cat([past_v, v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)], dim=2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, P+T)
        if visible is None:  # query t sees keys 0 .. its own column
            query_pos, key_pos = columns(T, k.shape[2], x.device)
            att = att.masked_fill(key_pos > query_pos, float("-inf"))
        else:
            att = att.masked_fill(~visible, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y)), k, v


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        visible: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln_1(x), past_k, past_v, visible)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


class TransformerLM(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.apply(self._init_weights)
        output = self.wte.weight
        if not config.tie_embeddings:
            output = nn.Parameter(torch.randn(config.vocab_size, config.n_embd) * 0.02)
        self.head = TiedHead(output, config.adaptive_cutoffs)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def head_dim(self) -> int:
        return self.config.n_embd // self.config.n_head

    def state_specs(self) -> list[StateSpec]:
        """past_key_i / past_value_i: (batch, heads, past, head_dim), empty at the start."""
        dims: list[int | str] = [BATCH, self.config.n_head, PAST, self.head_dim]
        return [
            StateSpec(f"past_{kind}_{i}", f"present_{kind}_{i}", dims, batch_axis=0, length_axis=2)
            for i in range(self.config.n_layer)
            for kind in ("key", "value")
        ]

    # the exported step graph takes an attention_mask after input_ids (training/language_models/lm_graphs.py)
    step_attention_mask = True

    def step(self, idx: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ids (B, T), past_key_0, past_value_0, ...) -> (logits (B, T, V), present_key_0, ...)."""
        x, present = self.features(idx, *cache)
        return (self.head.logits(x), *present)

    def step_masked(
        self, idx: torch.Tensor, attention_mask: torch.Tensor, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """`step` for caches padded at the start: attention_mask (B, P+T), 1 = real, 0 = pad."""
        x, present = self.features(idx, *cache, attention_mask=attention_mask)
        return (self.head.logits(x), *present)

    def features(
        self, idx: torch.Tensor, *cache: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, C) and the caches with the new tokens appended."""
        assert len(cache) == 2 * self.config.n_layer, "need a key and a value cache per layer"
        T = idx.shape[1]
        visible = None
        if attention_mask is None:
            pos = torch.arange(T, device=idx.device) + cache[0].shape[2]  # (T,)
        else:
            # a token's position is the number of real tokens before it; padding gets 0
            pos = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            visible = padding_visibility(attention_mask, T)  # (B, 1, T, P+T)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        present: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cache[2 * i], cache[2 * i + 1], visible)
            present += [k, v]
        return self.ln_f(x), present

    def empty_cache(self, idx: torch.Tensor) -> list[torch.Tensor]:
        shape = (idx.shape[0], self.config.n_head, 0, self.head_dim)
        return [self.wte.weight.new_zeros(shape) for _ in range(2 * self.config.n_layer)]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training: (None, loss) with targets. Evaluation: (logits (B, T, V), None)."""
        assert idx.shape[1] <= self.config.block_size, (
            f"sequence of {idx.shape[1]} tokens exceeds block_size {self.config.block_size}"
        )
        x, _ = self.features(idx, *self.empty_cache(idx))
        if targets is None:
            return self.head.logits(x), None
        return None, self.head.loss(x, targets)

    def full(self, idx: torch.Tensor) -> torch.Tensor:
        """Export path for model.onnx: logits (B, T, V)."""
        return self.step(idx, *self.empty_cache(idx))[0]
