"""Mamba-style selective state-space language model, in plain PyTorch.

Each block: RMSNorm -> in_proj -> causal depthwise conv (+SiLU) over (x, B, C) -> selective SSM
with input-dependent step Δ, input matrix B and output matrix C -> gate with SiLU(z) -> out_proj,
plus a residual. As in Mamba-2 (SSD), A is one negative scalar per head rather than per channel
and state entry. That makes the whole-sequence scan an exact masked matrix product,

    y_t = Σ_{s<=t} exp(Σ_{r=s+1..t} Δ_r A) (C_t · B_s) Δ_s x_s  +  exp(Σ_{r<=t} Δ_r A) C_t · h_0,

computed without a Python loop over time, so it exports with a dynamic length. The decays are
exponentials of (masked) segment sums, every exponent <= 0, so nothing overflows at any length
(the cumsum-ratio form, exp(cs_t) / exp(cs_s), overflowed at T >= 56: shared ONNX notes).

The same function takes a starting state h_0 and a convolution state (the last d_conv - 1
inputs), so the step graph reads a whole prompt in one call and then one token per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models.lm_common import BATCH, StateSpec, TiedHead


@dataclass
class MambaConfig:
    vocab_size: int = 10000  # set from the tokenizer
    n_embd: int = 128  # model width D
    n_layer: int = 4
    expand: int = 2  # inner width Di = expand * D
    head_dim: int = 32  # P: inner channels per head; heads H = Di / P
    d_state: int = 16  # N: SSM state size per channel
    d_conv: int = 4  # causal depthwise convolution width
    dropout: float = 0.1
    tie_embeddings: bool = True  # output layer reuses the embedding matrix
    adaptive_cutoffs: tuple[int, ...] = (2000, 5000)  # adaptive softmax clusters; () = full


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, T, H, P), dt (b, T, H), A (H,), B and C (b, T, N), h0 (b, H, P, N).

    Returns y (b, T, H, P) and the state after the last token, (b, H, P, N).
    """
    T = x.shape[1]
    log_decay = (dt * A).transpose(1, 2)  # (b, H, T), each <= 0
    cs = torch.cumsum(log_decay, dim=-1)  # (b, H, T)
    segment = cs.unsqueeze(-1) - cs.unsqueeze(-2)  # (b, H, T, S): Σ log_decay over (s, t]
    t_idx = torch.arange(T, device=x.device)
    causal = t_idx.unsqueeze(1) >= t_idx.unsqueeze(0)  # (T, S)
    decay = torch.exp(segment.masked_fill(~causal, float("-inf")))  # (b, H, T, S), in [0, 1]
    scores = C @ B.transpose(1, 2)  # (b, T, S): C_t · B_s
    xdt = (x * dt.unsqueeze(-1)).transpose(1, 2)  # (b, H, T, P)
    y = (decay * scores.unsqueeze(1)) @ xdt  # (b, H, T, P)
    # what the carried state contributes, decayed from the start of this call
    y = y + torch.exp(cs).unsqueeze(-1) * (C.unsqueeze(1) @ h0.transpose(-1, -2))  # (b, H, T, P)
    to_end = torch.exp(cs[..., -1:] - cs)  # (b, H, T): decay from each token to the last
    h = torch.exp(cs[..., -1]).unsqueeze(-1).unsqueeze(-1) * h0  # (b, H, P, N)
    h = h + (xdt * to_end.unsqueeze(-1)).transpose(-1, -2) @ B.unsqueeze(1)  # (b, H, P, N)
    return y.transpose(1, 2), h


class MambaBlock(nn.Module):
    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        inner = config.expand * config.n_embd
        assert inner % config.head_dim == 0, "expand * n_embd must be a multiple of head_dim"
        self.inner, self.n_state, self.d_conv = inner, config.d_state, config.d_conv
        self.n_head, self.head_dim = inner // config.head_dim, config.head_dim
        self.conv_dim = inner + 2 * config.d_state  # x, B and C go through the convolution
        self.norm = RMSNorm(config.n_embd)
        self.in_proj = nn.Linear(config.n_embd, inner + self.conv_dim + self.n_head, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, config.d_conv, groups=self.conv_dim)
        # Δ starts log-uniform in [0.001, 0.1] (Mamba's init); dt_bias is softplus⁻¹ of it.
        dt = torch.exp(
            torch.rand(self.n_head) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
        )
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_head).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.n_head))
        self.out_norm = RMSNorm(inner)
        self.out_proj = nn.Linear(inner, config.n_embd, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u (b, T, D), conv_state (b, conv_dim, d_conv-1), ssm_state (b, H, P, N) -> same + new."""
        b, T, _ = u.shape
        z, xbc, dt = self.in_proj(self.norm(u)).split(
            [self.inner, self.conv_dim, self.n_head], dim=-1
        )
        window = torch.cat([conv_state, xbc.transpose(1, 2)], dim=2)  # (b, conv_dim, K-1+T)
        new_conv_state = window[:, :, window.shape[2] - (self.d_conv - 1) :]
        xbc = F.silu(self.conv(window)).transpose(1, 2)  # (b, T, conv_dim)
        x, B, C = xbc.split([self.inner, self.n_state, self.n_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (b, T, H)
        A = -torch.exp(self.A_log)  # (H,)
        x = x.reshape(b, T, self.n_head, self.head_dim)  # (b, T, H, P)
        y, new_ssm_state = selective_scan(x, dt, A, B, C, ssm_state)
        y = y + x * self.D.unsqueeze(-1)  # skip connection through the SSM
        y = self.out_norm(y.reshape(b, T, self.inner) * F.silu(z))
        return u + self.drop(self.out_proj(y)), new_conv_state, new_ssm_state


class MambaLM(nn.Module):
    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([MambaBlock(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd)
        nn.init.normal_(self.embedding.weight, std=0.02)
        output = self.embedding.weight
        if not config.tie_embeddings:
            output = nn.Parameter(torch.randn(config.vocab_size, config.n_embd) * 0.02)
        self.head = TiedHead(output, config.adaptive_cutoffs)
        for block in self.blocks:
            assert isinstance(block, MambaBlock)
            nn.init.normal_(block.out_proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))

    def state_specs(self) -> list[StateSpec]:
        """Per layer: conv_i (batch, conv_dim, d_conv-1) and ssm_i (batch, H, P, N), zeros first."""
        block = self.blocks[0]
        assert isinstance(block, MambaBlock)
        conv: list[int | str] = [BATCH, block.conv_dim, block.d_conv - 1]
        ssm: list[int | str] = [BATCH, block.n_head, block.head_dim, block.n_state]
        specs = []
        for i in range(self.config.n_layer):
            specs.append(StateSpec(f"conv_state_{i}", f"conv_state_out_{i}", conv, batch_axis=0))
            specs.append(StateSpec(f"ssm_state_{i}", f"ssm_state_out_{i}", ssm, batch_axis=0))
        return specs

    def zero_state(self, idx: torch.Tensor) -> list[torch.Tensor]:
        # shapes from idx's batch size so model.onnx keeps a dynamic batch
        state = []
        for spec in self.state_specs():
            dims = [idx.shape[0] if d == BATCH else int(d) for d in spec.dims]
            state.append(self.embedding.weight.new_zeros(dims))
        return state

    def step(self, idx: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ids (B, T), conv_state_0, ssm_state_0, ...) -> (logits (B, T, V), new states...)."""
        x, new_state = self.features(idx, *state)
        return (self.head.logits(x), *new_state)

    def features(
        self, idx: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, D) and the state after the last token."""
        assert len(state) == 2 * self.config.n_layer, "need a conv and an ssm state per layer"
        x = self.drop(self.embedding(idx))  # (B, T, D)
        new_state: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, conv_state, ssm_state = block(x, state[2 * i], state[2 * i + 1])
            new_state += [conv_state, ssm_state]
        return self.norm_f(x), new_state

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training: (None, loss) with targets. Evaluation: (logits (B, T, V), None)."""
        x, _ = self.features(idx, *self.zero_state(idx))
        if targets is None:
            return self.head.logits(x), None
        return None, self.head.loss(x, targets)

    def full(self, idx: torch.Tensor) -> torch.Tensor:
        """Export path for model.onnx: logits (B, T, V) from zero state."""
        return self.step(idx, *self.zero_state(idx))[0]
